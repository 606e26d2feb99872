"""``infosft demo``: the packaged grid spec (two regimes, a learning-rate sweep) on SmolLM2."""

from __future__ import annotations

import argparse

# `demo --full --plan`'s estimate: the embedded model on a 2-core CPU (float32, batch 8,
# max_length 192), seconds per optimizer step and seconds to measure one tuned cell (200
# held-out problems, the 259 retention probes, KL), averaged over a pilot of the full protocol's
# cells (seed 0, lr 1e-4, nll and infosft on every regime).
FULL_CPU_SECONDS = (3.2, 57.0)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="when does InfoSFT learn more and forget less? two built-in regimes, fronts, verdicts",
        description=(
            "Run the grid spec shipped with infosft: the embedded SmolLM2-135M-Instruct "
            "fine-tuned with nll and infosft at three learning rates on two built-in tasks (a "
            "new skill the base model cannot do, and word problems it partly can), every cell "
            "measured on held-out accuracy, retention and KL(base || tuned); then each task's "
            "fronts and a verdict. --full runs the paper's protocol on five regimes (also "
            "near-policy data, few examples over 1-16 epochs, 25% noisy answers), 3 seeds, 200 "
            "held-out problems each (hours on a CPU; --plan says how many). "
            "Rerunning resumes. The same runs on your own data: infosft compare."
        ),
    )
    parser.add_argument("--full", action="store_true", help="the complete protocol (hours)")
    parser.add_argument("--output-dir", default=None, help="default runs/demo or runs/demo-full")
    parser.add_argument("--model", default=None, help="another base model (name or directory)")
    parser.add_argument(
        "--print-spec", action="store_true", help="print the grid YAML (to edit for compare)"
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the cells and their optimizer steps (as compare --plan; with --full, how "
        "long they take on a 2-core CPU), then stop",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from infosft.experiments.grid import demo_spec_path, read_grid

    path = demo_spec_path(args.full)
    if args.print_spec:
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    output_dir = args.output_dir or ("runs/demo-full" if args.full else "runs/demo")
    spec = read_grid(path)
    if args.plan:
        from infosft.experiments.grid_runner import check_output_dir
        from infosft.experiments.plan import plan_text

        seconds = FULL_CPU_SECONDS if args.full else (None, None)
        print(plan_text(spec, check_output_dir(output_dir), *seconds))
        return 0
    import dataclasses

    import datasets

    from infosft.experiments.grid_runner import run_grid
    from infosft.experiments.report import text_summary

    if args.model is not None:
        spec = dataclasses.replace(spec, model=args.model)
    datasets.disable_progress_bars()
    title = "InfoSFT demo (full protocol)" if args.full else "InfoSFT demo"
    results = run_grid(spec, output_dir, title=title)
    print(text_summary(results))
    timing = results["timing"]
    minutes, compute = timing["total_seconds"] / 60, timing["compute_seconds"] / 60
    print(
        f"took {minutes:.1f} min ({compute:.1f} min of training and measuring over all "
        f"{len(results['cells'])} cells, those of earlier runs included); report: "
        f"{output_dir}/report.md (and report.html, results.json)"
    )
    return 0
