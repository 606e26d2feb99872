"""``infosft demo``: nll, dft and infosft fine-tunes of the same model, measured side by side."""

from __future__ import annotations

import argparse

from infosft.models import DEFAULT_MODEL


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="fine-tune one model with each weighting on a built-in task and compare them",
        description=(
            "Fine-tune the same base model with nll, dft and infosft on the built-in "
            "arithmetic-chain task (same data, seed and learning rate), then measure held-out "
            "accuracy, retention of prior capabilities, KL(base || tuned), general-text NLL and "
            "training time. Writes report.md, report.html, results.json and PNG plots."
        ),
    )
    parser.add_argument("--output-dir", default="runs/demo", help="where results go")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model (name or directory)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewer steps and problems, same code path"
    )
    parser.add_argument("--seeds", type=int, default=None, help="repeat over N seeds (mean ± std)")
    parser.add_argument("--methods", nargs="+", default=None, help="weightings to compare")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of every method")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per fine-tune")
    parser.add_argument("--p-bar", type=float, default=None, help="InfoSFT's clip point")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import datasets

    from infosft.experiments.demo import (
        DemoConfig,
        plain_text_table,
        quick_config,
        results_table,
        run_demo,
    )
    from infosft.objectives import check_p_bar, get_weighting

    overrides = {
        "model": args.model,
        "seeds": args.seeds,
        "methods": tuple(args.methods) if args.methods else None,
        "learning_rate": args.lr,
        "steps": args.steps,
        "p_bar": None if args.p_bar is None else check_p_bar(args.p_bar),
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    for method in overrides.get("methods", ()):
        get_weighting(method)
    # Progress is printed by the demo itself, one line per stage.
    datasets.disable_progress_bars()
    config = quick_config(**overrides) if args.quick else DemoConfig(**overrides)
    results = run_demo(config, args.output_dir)
    headers, rows = results_table(results)
    print(plain_text_table(headers, rows))
    print(f"\nreport: {args.output_dir}/report.md (and report.html, results.json, plots)")
    return 0
