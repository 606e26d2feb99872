"""``infosft inspect``: what each weighting would do to your data, before training."""

from __future__ import annotations

import argparse

from infosft.models import DEFAULT_MODEL
from infosft.objectives import DEFAULT_P_BAR


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show the q distribution of your data's target tokens and where each weighting "
        "puts its weight",
        description=(
            "One forward pass of the model over the data: the distribution of target-token q, "
            "each method's share of total weight per q bin, the lowest-q tokens in context, and "
            "how InfoSFT's weight moves with p_bar. Prints tables and writes inspect.json and "
            "PNG plots to --output-dir."
        ),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model (name or directory)")
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="SOURCE",
        help="SFT data as for infosft train (.jsonl/.json/.parquet or hub name)",
    )
    parser.add_argument("--data-format", metavar="NAME", help="formatter for raw public datasets")
    parser.add_argument("--limit", type=int, default=256, help="examples to read (default 256)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens kept per example")
    parser.add_argument("--methods", nargs="+", default=None, help="schemes (default: all)")
    parser.add_argument("--p-bar", type=float, default=DEFAULT_P_BAR, help="InfoSFT's clip point")
    parser.add_argument("--lowest", type=int, default=10, help="lowest-q tokens to show")
    parser.add_argument("--output-dir", default="runs/inspect", help="where json and plots go")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from infosft.experiments.inspect import run_inspect
    from infosft.objectives import available_weightings, check_p_bar, get_weighting

    if args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    methods = args.methods or available_weightings()
    for method in methods:
        get_weighting(method)
    summary, text = run_inspect(
        args.model,
        args.data,
        Path(args.output_dir),
        methods=methods,
        p_bar=check_p_bar(args.p_bar),
        data_format=args.data_format,
        limit=args.limit,
        max_length=args.max_length,
        k_lowest=args.lowest,
    )
    print(text)
    print(f"\nwrote {args.output_dir}/inspect.json and {len(summary['figures'])} plots")
    return 0
