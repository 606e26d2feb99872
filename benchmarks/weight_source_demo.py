"""weight_source "current" (the paper's) vs "base" (static weights) on the demo's arithmetic task.

    python benchmarks/weight_source_demo.py [--steps 30] [--batch-size 8] [--n-test 30]

Both runs fine-tune the same base model (default: the embedded SmolLM2-135M-Instruct) with
InfoSFT on the same problems, seed and schedule; only where q in w(q) comes from differs. The
"base" run first computes log q of every target token with the frozen base model (one forward
pass over the training set, cached), in the trainer's dataset preparation as ``infosft train``
does. Printed: the time to build each trainer (for "base" it includes that pass), the training
time, the logged mean weight and loss, and held-out exact-answer accuracy (greedy).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path


def run_one(base_model, tokenizer, dataset, values, weight_source, work_dir, task):
    from infosft.evaluation.runner import evaluate
    from infosft.training import RunSpec, build_trainer
    from infosft.training.outputs import metrics_logger

    run_dir = work_dir / weight_source
    run_dir.mkdir(parents=True)
    model = copy.deepcopy(base_model).train()
    spec = RunSpec.from_dict(
        {**values, "weight_source": weight_source, "output_dir": str(run_dir), "data": dataset}
    )
    start = time.perf_counter()
    logger = metrics_logger(run_dir / "metrics.jsonl", None)
    trainer = build_trainer(spec, model=model, tokenizer=tokenizer, callbacks=[logger])
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logs if "loss" in row]
    result = evaluate(model.eval(), tokenizer, task, progress=False)
    return {
        "weight_source": weight_source,
        "build_s": build_seconds,
        "train_s": train_seconds,
        "first_loss": steps[0]["loss"],
        "last_loss": steps[-1]["loss"],
        "last_nll": steps[-1]["nll"],
        "mean_weight_last": steps[-1]["mean_weight"],
        "accuracy": result["metrics"]["acc@1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    args = parser.parse_args()

    from datasets import Dataset

    from infosft.experiments import arith_task
    from infosft.models import DEFAULT_MODEL, load_model_and_tokenizer

    train, test = arith_task.train_test_split(args.steps * args.batch_size, args.n_test, seed=0)
    dataset = Dataset.from_list([arith_task.to_sft_example(p) for p in train])
    task = arith_task.evaluation_task(test)
    base_model, tokenizer = load_model_and_tokenizer(args.model or DEFAULT_MODEL)
    values = {
        "method": "infosft",
        "seed": 0,
        "learning_rate": args.learning_rate,
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch_size,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "weight_decay": 0.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "max_length": 256,
        "disable_tqdm": True,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="weight-source-") as tmp:
        for source in ("current", "base"):
            rows.append(run_one(base_model, tokenizer, dataset, values, source, Path(tmp), task))
    print(
        f"InfoSFT, {args.steps} steps x batch {args.batch_size}, lr {args.learning_rate}, "
        f"{len(test)} held-out problems, model {args.model or DEFAULT_MODEL}"
    )
    header = ("weight_source", "build s", "train s", "loss first", "loss last", "nll last")
    header += ("mean w last", "accuracy")
    print(" | ".join(header))
    for row in rows:
        print(
            f"{row['weight_source']:<13} | {row['build_s']:7.1f} | {row['train_s']:7.1f} | "
            f"{row['first_loss']:10.4f} | {row['last_loss']:9.4f} | {row['last_nll']:8.4f} | "
            f"{row['mean_weight_last']:11.4f} | {row['accuracy']:.3f}"
        )


if __name__ == "__main__":
    main()
