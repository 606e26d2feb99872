"""``infosft compare``: a resumable grid of fine-tunes, each measured against its base model."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="run a grid (tasks x methods x learning rates x seeds) and compare the fronts",
        description=(
            "Fine-tune your model on your data for every cell of a grid, measure each cell on "
            "new-task accuracy, retention of prior capabilities and KL(base || tuned), and write "
            "each task's fronts with a verdict, results.json and report.md/.html. The whole grid "
            "is checked before anything runs; rerunning resumes (finished cells are kept). The "
            "YAML format is documented in infosft.experiments.grid; `infosft demo --print-spec` "
            "prints a complete example."
        ),
    )
    parser.add_argument("--config", required=True, metavar="GRID.yaml", help="grid description")
    parser.add_argument("--output-dir", default="runs/compare", help="where results go")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the cells, what they load, their optimizer steps and the cells finished in "
        "--output-dir, then stop: no model or data set is loaded",
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        metavar="S",
        help="with --plan: seconds per optimizer step measured on your GPU, for the GPU-hours",
    )
    parser.add_argument(
        "--measure-seconds",
        type=float,
        metavar="M",
        help="with --plan and --step-seconds: seconds to measure one tuned cell (a compare "
        "progress line's 'measuring'), for the whole run's time",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="with --plan: the GPUs that train each cell (accelerate launch --num_processes N)",
    )
    # Several jobs sharing one grid (infosft.experiments.claims).
    parser.add_argument(
        "--job-id",
        default=None,
        help="this job's name in claims and cell files (default <host>-<pid>; e.g. "
        "$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID)",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="take over a cell whose job sent no heartbeat for this long (a killed job's; "
        "default 600, infosft.experiments.claims.STALE_AFTER_SECONDS)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write results.json and the report now from the cells finished so far",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from infosft.experiments.grid import read_grid

    if args.plan:
        from infosft.experiments.grid_runner import check_output_dir
        from infosft.experiments.plan import plan_text

        # The grid checked and described; local data files may be missing still.
        spec = read_grid(args.config, require_data=False)
        output_dir = check_output_dir(args.output_dir)
        seconds = (args.step_seconds, args.measure_seconds)
        print(plan_text(spec, output_dir, *seconds, processes=args.num_processes))
        return 0
    if args.step_seconds is not None or args.measure_seconds is not None:
        raise ValueError("--step-seconds and --measure-seconds estimate time; use them with --plan")
    if args.num_processes != 1:
        raise ValueError(
            "--num-processes describes the launch for --plan; to run on N GPUs start "
            "`accelerate launch --num_processes N -m infosft compare ...`"
        )
    import datasets

    from infosft.experiments.claims import STALE_AFTER_SECONDS
    from infosft.experiments.grid_runner import run_grid
    from infosft.experiments.report import text_summary

    spec = read_grid(args.config)
    datasets.disable_progress_bars()
    results = run_grid(
        spec,
        args.output_dir,
        title="InfoSFT compare",
        job_id=args.job_id,
        stale_after=STALE_AFTER_SECONDS if args.stale_after is None else args.stale_after,
        report_only=args.report_only,
    )
    print(text_summary(results))
    print(f"report: {args.output_dir}/report.md (and report.html, results.json)")
    return 0
