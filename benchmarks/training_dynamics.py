"""What actually happens when each weighting trains: step sizes, gradient sources, the outcome.

    python benchmarks/training_dynamics.py [--tasks arith_chain word_problems]
        [--methods nll dft infosft] [--learning-rates 1e-4] [--steps 30] [--batch-size 8]
        [--n-test 100] [--bf16] [--no-measure]

Every run fine-tunes a copy of the embedded SmolLM2-135M-Instruct on the same problems of a
built-in task (one epoch of ``steps`` batches, cosine schedule, AdamW, clipping at 1.0, the
trainer built by ``infosft.training.build_trainer`` as ``infosft train`` builds it); only the
method (and the learning rate, when several are given) differs. A
``infosft.experiments.diagnostics.TrainingDiagnostics`` callback records per optimizer step the
gradient norm after clipping (what AdamW sees), the update norm ||theta_t - theta_{t-1}|| and the
distance from the base weights, and scores 16 training rows every few steps to split each
method's logit-gradient mass 2 w (1 - q) over q bins. Unless ``--no-measure``, each tuned model
is then measured: held-out accuracy (greedy, the task's scorer) and retention (share of the
built-in probes the base answers correctly that the tuned model still gets).

Printed: one row per run (seconds per step, gradient and update norms, distance, accuracy,
retention), then the gradient-mass shares per q bin at the first and the last scoring.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def train_one(base_model, tokenizer, rows, values, methods, score_every, work_dir):
    from datasets import Dataset
    from transformers import PrinterCallback

    from infosft.experiments.diagnostics import TrainingDiagnostics, probe_batch
    from infosft.training import RunSpec, build_trainer

    model = copy.deepcopy(base_model).train()
    spec = RunSpec.from_dict(
        {**values, "output_dir": str(work_dir), "data": Dataset.from_list(rows)}
    )
    diagnostics = TrainingDiagnostics(methods=methods, p_bar=0.93, score_every=score_every)
    trainer = build_trainer(spec, model=model, tokenizer=tokenizer, callbacks=[diagnostics])
    trainer.remove_callback(PrinterCallback)
    diagnostics.probe_batch = probe_batch(trainer.train_dataset, 16)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    # The callback's own copies, norms and scoring are not training time (its CPU time is
    # about its wall time: single-threaded copies and norms).
    seconds = time.perf_counter() - start - diagnostics.overhead_seconds
    cpu_seconds = time.process_time() - cpu_start - diagnostics.overhead_seconds
    return model.eval(), (seconds, cpu_seconds), diagnostics, trainer.state.log_history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["arith_chain", "word_problems"])
    parser.add_argument("--methods", nargs="+", default=["nll", "dft", "infosft"])
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[1e-4])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--score-every", type=int, default=10)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, float32 weights")
    parser.add_argument("--no-measure", action="store_true", help="skip accuracy and retention")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON file for the per-cell records (fronts)"
    )
    args = parser.parse_args()

    import torch

    from infosft.evaluation import evaluate
    from infosft.evaluation.forgetting import first_samples, retention
    from infosft.experiments import GENERATED_TASKS, probes
    from infosft.models import DEFAULT_MODEL, load_model_and_tokenizer

    torch.manual_seed(0)
    base_model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL, dtype="float32")
    base_model.eval()
    base_probes = None
    if not args.no_measure:
        start = time.perf_counter()
        base_probes = probes.probe_records(base_model, tokenizer, probes.PROBES)
        print(
            f"base answers {sum(r['passed'] for r in base_probes)} of {len(base_probes)} probes "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    results = []
    for task_name in args.tasks:
        task = GENERATED_TASKS[task_name]
        train, test = task.split(args.steps * args.batch_size, args.n_test, seed=0, test_seed=0)
        rows = [task.sft_example(p) for p in train]
        evaluation = task.evaluation_task(test, batch_size=50)
        base_accuracy = None
        if not args.no_measure:
            start = time.perf_counter()
            base_accuracy = evaluate(base_model, tokenizer, evaluation, progress=False)
            base_accuracy = base_accuracy["metrics"]["acc@1"]
            print(
                f"{task_name}: base accuracy {base_accuracy:.3f} "
                f"({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
        for lr in args.learning_rates:
            for method in args.methods:
                values = {
                    "method": method,
                    "learning_rate": lr,
                    "max_steps": args.steps,
                    "per_device_train_batch_size": args.batch_size,
                    "lr_scheduler_type": "cosine",
                    "warmup_steps": 0.1,
                    "weight_decay": 0.0,
                    "logging_steps": 1,
                    "save_strategy": "no",
                    "report_to": [],
                    "max_length": 256,
                    "disable_tqdm": True,
                    "seed": 0,
                    "bf16": args.bf16,
                }
                with tempfile.TemporaryDirectory(prefix="infosft-dynamics-") as scratch:
                    model, (seconds, cpu_seconds), diag, logs = train_one(
                        base_model,
                        tokenizer,
                        rows,
                        values,
                        args.methods,
                        args.score_every,
                        Path(scratch),
                    )
                steps = diag.records
                row = {
                    "task": task_name,
                    "method": method,
                    "lr": lr,
                    "s_per_step": seconds / len(steps),
                    "cpu_s_per_step": cpu_seconds / len(steps),
                    "grad_norm_pre_clip": statistics.mean(
                        r["grad_norm"] for r in logs if "grad_norm" in r
                    ),
                    "grad_norm": statistics.mean(r["grad_norm"] for r in steps),
                    "update_norm": statistics.mean(r["update_norm"] for r in steps),
                    "update_first": steps[0]["update_norm"],
                    "distance": steps[-1]["distance_from_start"],
                    "groups": {
                        k.split("/")[1]: statistics.mean(r[k] for r in steps)
                        for k in steps[0]
                        if k.startswith("update_norm/")
                    },
                    "mass_first": diag.mass_records[0],
                    "mass_last": diag.mass_records[-1],
                    "base_accuracy": base_accuracy,
                }
                if not args.no_measure:
                    start = time.perf_counter()
                    tuned = evaluate(model, tokenizer, evaluation, progress=False)
                    row["accuracy"] = tuned["metrics"]["acc@1"]
                    probe_records = probes.probe_records(model, tokenizer, probes.PROBES)
                    kept = retention(first_samples(base_probes), first_samples(probe_records))
                    row["retention"] = kept["retention"]
                    # The per-item record the experiment engine stores (experiments.fronts).
                    row["task_correct"] = {r["task_id"]: r["passed"] for r in tuned["samples"]}
                    row["probe_correct"] = {r["task_id"]: r["passed"] for r in probe_records}
                    row["example"] = tuned["samples"][0]["completion"]
                    row["measure_s"] = time.perf_counter() - start
                del model, diag, logs
                gc.collect()  # TRL's patched forward keeps a cycle: free each copy before the next
                results.append(row)
                print(
                    f"done {task_name} {method} lr={lr:g}: {seconds:.0f} s, "
                    f"acc {row.get('accuracy', float('nan')):.3f}, "
                    f"retention {row.get('retention', float('nan')):.3f}, "
                    f"measured in {row.get('measure_s', float('nan')):.0f} s",
                    flush=True,
                )
    print_tables(results, args)
    if args.output is not None:
        from infosft.files import write_json_atomic

        base = {r["task_id"]: r["passed"] for r in base_probes or []}
        write_json_atomic(args.output, {"base_probe_correct": base, "cells": results})
    if not args.no_measure and len(args.learning_rates) > 1:
        print_verdicts(results, {r["task_id"]: r["passed"] for r in base_probes})


def print_verdicts(results: list[dict[str, Any]], base_probe_correct: dict[str, bool]) -> None:
    """Fronts over the learning rates run, and each method's verdict against nll, per task."""
    from infosft.experiments import fronts

    for task in dict.fromkeys(r["task"] for r in results):
        records = [{**r, "learning_rate": r["lr"], "seed": 0} for r in results if r["task"] == task]
        cells = fronts.cells_from_records(records, base_probe_correct)
        if "nll" not in {c.curve for c in cells}:
            continue
        print(f"\n{task}: fronts over learning rates (1 seed)")
        for point in fronts.points(cells):
            print(
                f"  {point.curve:8} {point.setting:24} retention {point.retention:.3f} "
                f"accuracy {point.accuracy:.3f}"
            )
        for comparison in fronts.compare_all(cells):
            print(f"  verdict: {comparison.sentence}")


def print_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    dtype = "bf16 autocast" if args.bf16 else "float32"
    print(
        f"\n{args.steps} steps x batch {args.batch_size}, {dtype}; norms are means over steps "
        "(grad after clipping at 1.0, the pre-clip one as the trainer logs it)\n"
    )
    print(
        f"{'task':14} {'method':8} {'lr':>7} {'s/step':>6} {'cpu s':>6} {'|g| pre':>8} "
        f"{'|g| seen':>8} "
        f"{'|dθ|':>7} {'|dθ| 1st':>8} {'|θ-θ0|':>7} {'base acc':>8} {'acc':>6} {'retain':>6}"
    )
    for r in results:
        base = r["base_accuracy"]
        print(
            f"{r['task']:14} {r['method']:8} {r['lr']:7.0e} {r['s_per_step']:6.2f} "
            f"{r['cpu_s_per_step']:6.2f} {r['grad_norm_pre_clip']:8.3f} {r['grad_norm']:8.3f} "
            f"{r['update_norm']:7.4f} "
            f"{r['update_first']:8.4f} {r['distance']:7.3f} "
            f"{'n/a' if base is None else f'{base:.3f}':>8} "
            f"{r.get('accuracy', float('nan')):6.3f} {r.get('retention', float('nan')):6.3f}"
        )
    print("\nmean update norm per parameter group")
    groups = sorted(results[0]["groups"])
    print(f"{'task':14} {'method':8} {'lr':>7} " + " ".join(f"{g:>10}" for g in groups))
    for r in results:
        print(
            f"{r['task']:14} {r['method']:8} {r['lr']:7.0e} "
            + " ".join(f"{r['groups'][g]:10.4f}" for g in groups)
        )
    print(
        "\nshare of the training method's logit-gradient mass 2w(1-q) per q bin on 16 training "
        "rows, at step 0 -> at the last scoring; token shares and mean w alongside"
    )
    for r in results:
        first, last = r["mass_first"], r["mass_last"]
        labels = list(first["shares"]["tokens"])
        cells = " ".join(
            f"{first['shares'][r['method']][b]:.2f}->{last['shares'][r['method']][b]:.2f}"
            for b in labels
        )
        tokens = " ".join(
            f"{first['shares']['tokens'][b]:.2f}->{last['shares']['tokens'][b]:.2f}" for b in labels
        )
        print(
            f"{r['task']:14} {r['method']:8} {r['lr']:7.0e} mass [{' | '.join(labels)}]: {cells}"
            f"\n{'':31} tokens: {tokens}; mean w "
            f"{first['shares']['mean_weight'][r['method']]:.3f}->"
            f"{last['shares']['mean_weight'][r['method']]:.3f}; mass/token "
            f"{first['shares']['total_mass'][r['method']]:.3f}->"
            f"{last['shares']['total_mass'][r['method']]:.3f} (step {last['step']})"
        )
    if "example" in results[0]:
        print("\nfirst held-out answer of each tuned model")
        for r in results:
            print(f"{r['task']:14} {r['method']:8} {r['lr']:7.0e} {r['example']!r}")


if __name__ == "__main__":
    main()
