"""``infosft compare``: a resumable grid of fine-tunes, scored on a new task and on prior ones."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="run a grid (methods x learning rates x epochs) and plot the learn/forget trade-off",
        description=(
            "Fine-tune your model on your data for every cell of a grid, measure each cell on a "
            "new task and on prior-capability tasks, and write results.json, tradeoff.png and "
            "report.md/.html. Rerunning resumes: finished cells are not re-run. The YAML format "
            "is documented in infosft.experiments.compare."
        ),
    )
    parser.add_argument("--config", required=True, metavar="GRID.yaml", help="grid description")
    parser.add_argument("--output-dir", default="runs/compare", help="where results go")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from infosft.experiments.compare import read_grid_config, run_compare

    config = read_grid_config(args.config)
    summary = run_compare(config, args.output_dir)
    for row in summary["grid"]:
        print(
            f"{row['method']:>10}  lr={row['learning_rate']:<8g} epochs={row['epochs']:<4g} "
            f"new task {row['new_task_score']['mean']:.3f}  "
            f"prior retention {row['prior_score']['mean']:.3f}"
        )
    print(f"report: {args.output_dir}/report.md")
    return 0
