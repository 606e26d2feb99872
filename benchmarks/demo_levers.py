"""What makes a demo cell (one fine-tune + its measurement) fast on this CPU: each lever timed.

    python benchmarks/demo_levers.py [--steps 4] [--batch-size 8] [--n-test 100]

On the embedded SmolLM2-135M-Instruct, one run, side by side:

- training seconds per optimizer step (batch of word-problem rows, the trainer built by
  ``infosft.training.build_trainer``): float32 against bf16 autocast (float32 master weights),
  full fine-tuning against LoRA (rank 16, all linear layers), a shorter ``max_length``, the
  fused AdamW kernel, and twice the batch (fewer, larger steps);
- greedy generation of the 100 held-out word problems (the base model's long answers) with
  several batch sizes, in float32 and under bf16 autocast, and whether bf16 changes answers;
- the built-in probes: all of them against only those the base answers correctly (all that
  retention needs once the base is measured).

Every row prints its time and its ratio to the float32 / default row of its group.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time


def train_seconds_per_step(base_model, tokenizer, rows, values, steps):
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from infosft.training import RunSpec, build_trainer

    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory(prefix="infosft-levers-") as scratch:
        spec = RunSpec.from_dict(
            {
                **values,
                "max_steps": steps + 1,
                "output_dir": scratch,
                "data": Dataset.from_list(rows),
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
                "logging_steps": 1,
            }
        )
        trainer = build_trainer(
            spec, model=copy.deepcopy(base_model), tokenizer=tokenizer, callbacks=[Clock()]
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    # The first step pays for allocations and autocast caches: left out.
    return sum(times[1:]) / len(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--training-only", action="store_true", help="skip generation and probes")
    args = parser.parse_args()

    import datasets
    import torch

    from infosft.evaluation import evaluate
    from infosft.evaluation.runner import with_overrides
    from infosft.experiments import GENERATED_TASKS, probes
    from infosft.models import DEFAULT_MODEL, load_model_and_tokenizer

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL, dtype="float32")
    model.eval()
    task = GENERATED_TASKS["word_problems"]
    train, test = task.split(2 * args.batch_size * (args.steps + 1), args.n_test, seed=0)
    rows = [task.sft_example(p) for p in train]
    base = {
        "method": "infosft",
        "learning_rate": 1e-4,
        "per_device_train_batch_size": args.batch_size,
        "max_length": 256,
        "bf16": False,
    }
    lora = {"rank": 16, "alpha": 32, "dropout": 0.0}
    variants = [
        ("float32, full fine-tuning", {}),
        ("bf16 autocast, full", {"bf16": True}),
        ("float32, LoRA r16", {"lora": lora}),
        ("bf16 autocast, LoRA r16", {"bf16": True, "lora": lora}),
        ("bf16 autocast, full, max_length 128", {"bf16": True, "max_length": 128}),
        ("float32, full, fused AdamW", {"optim": "adamw_torch_fused"}),
        (
            "float32, full, batch 16 (per row: /2)",
            {"per_device_train_batch_size": 2 * args.batch_size},
        ),
    ]
    print(f"training: {args.steps} timed steps of batch {args.batch_size} (word problems)")
    reference = None
    for label, change in variants:
        seconds = train_seconds_per_step(model, tokenizer, rows, {**base, **change}, args.steps)
        reference = reference or seconds
        print(f"  {label:40} {seconds:6.2f} s/step   x{seconds / reference:.2f}", flush=True)

    if args.training_only:
        return
    evaluation = task.evaluation_task(test)
    print(f"generation: {len(test)} held-out word problems, greedy, base model")
    reference, answers = None, None
    for batch_size in (16, 50, 100):
        for dtype in ("float32", "bf16"):
            settings = with_overrides(evaluation.generation, batch_size=batch_size)
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if dtype == "bf16"
                else contextlib.nullcontext()
            )
            start = time.perf_counter()
            with autocast:
                result = evaluate(model, tokenizer, evaluation, settings, progress=False)
            seconds = time.perf_counter() - start
            reference = reference or seconds
            passed = [r["passed"] for r in result["samples"]]
            completions = [r["completion"] for r in result["samples"]]
            answers = answers or completions
            same = sum(a == b for a, b in zip(answers, completions, strict=True))
            print(
                f"  batch {batch_size:3} {dtype:8} {seconds:6.1f} s   x{seconds / reference:.2f}"
                f"   accuracy {sum(passed) / len(passed):.3f}, {same}/{len(passed)} answers "
                "identical to batch 16 float32",
                flush=True,
            )

    start = time.perf_counter()
    records = probes.probe_records(model, tokenizer, probes.PROBES)
    all_seconds = time.perf_counter() - start
    known = [p for p, r in zip(probes.PROBES, records, strict=True) if r["passed"]]
    start = time.perf_counter()
    again = probes.probe_records(model, tokenizer, known)
    known_seconds = time.perf_counter() - start
    print(
        f"probes: all {len(records)} in {all_seconds:.1f} s; the {len(known)} the base answers "
        f"right in {known_seconds:.1f} s (x{known_seconds / all_seconds:.2f}); "
        f"{sum(r['passed'] for r in again)}/{len(known)} still right when asked alone"
    )


if __name__ == "__main__":
    main()
