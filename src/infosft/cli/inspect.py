"""``infosft inspect``: what each weighting would do to your data, before training."""

from __future__ import annotations

import argparse
from pathlib import Path

from infosft.cli.train import add_run_spec_arguments


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show the q distribution of your data's target tokens and where each weighting "
        "puts its weight",
        description=(
            "One forward pass of the model over the data, prepared exactly as infosft train "
            "prepares it with the same options (chat template, assistant-only or completion-only "
            "masking, max_length): the distribution of target-token q, each method's share of "
            "total weight per q bin (every registered scheme, eaft and talr with their real "
            "per-token weights), where the data sits next to the demo's weak- and strong-prior "
            "tasks, the lowest-q tokens in context, and how InfoSFT's weight moves with p_bar. "
            "Prints tables and writes inspect.json and PNG plots to --output-dir."
        ),
    )
    add_run_spec_arguments(parser)
    parser.add_argument(
        "--limit", type=positive_int, default=256, help="examples to read (default 256)"
    )
    parser.add_argument(
        "--max-length", type=positive_int, help="tokens kept per example (default 1024)"
    )
    parser.add_argument(
        "--methods", nargs="+", help="schemes to show (default: every registered scheme)"
    )
    parser.add_argument("--lowest", type=positive_int, default=10, help="lowest-q tokens to show")
    parser.add_argument("--output-dir", default="runs/inspect", help="where json and plots go")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from infosft.experiments.inspect import run_inspect
    from infosft.objectives import available_schemes
    from infosft.training import resolve_spec

    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise ValueError(f"--output-dir {args.output_dir} is a file; give a directory")
    flags = {
        "model": args.model,
        "data": args.data,
        "data_format": args.data_format,
        "max_length": args.max_length,
        "p_bar": args.p_bar,
        "output_dir": args.output_dir,
    }
    spec = resolve_spec(args.config, args.set, flags)
    methods = args.methods or available_schemes()
    summary, text = run_inspect(
        spec, args.output_dir, methods=methods, limit=args.limit, k_lowest=args.lowest
    )
    print(text)
    print(f"\nwrote {args.output_dir}/inspect.json and {len(summary['figures'])} plots")
    return 0
