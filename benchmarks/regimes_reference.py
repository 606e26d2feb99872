"""Write the regime reference that ``infosft inspect`` prints beside a user's own data.

    python benchmarks/regimes_reference.py [--results runs/demo-full/results.json] [--full]
        [--output src/infosft/experiments/specs/regimes_reference.json]

For each built-in task of the demo's grid spec (``infosft demo``; ``--full``: its full-mode
spec, whose five regimes include the base model's own answers, reused from the run's
``demonstrations/`` beside ``--results``), the training demonstrations the demo trains on (its
first seed) are prepared as the demo's training prepares them and scored with the demo's base
model; the numbers are those ``infosft inspect`` prints for the user's data
(``infosft.experiments.inspect``): median q, the share of target tokens with q >= p_bar and with
q < 0.05, and each registered scheme's mean weight. With ``--results`` (a demo's
results.json), each task also gets the demo's measured base accuracy and its verdict sentences;
without it they are null and inspect prints "not measured yet". Prints the table it wrote. The
reference is written anew, without a ``when_to_use`` test: run benchmarks/when_to_use.py on the
same results.json next.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

SCHEME_KEYS = ("method", "p_bar", "method_args", "kl_to_base", "loss_schedule")


def demo_findings(results: dict[str, Any], task: str) -> dict[str, Any]:
    """A task's base accuracy and verdict sentences from a demo's results.json."""
    accuracy = results.get("base", {}).get("new_tasks", {}).get(task, {}).get("accuracy")
    fronts = results.get("fronts", {}).get(task)
    if fronts is None:
        verdicts = None
    elif "error" in fronts:
        verdicts = [f"no fronts: {fronts['error']}"]
    else:
        verdicts = [v["sentence"] for v in fronts.get("verdicts", [])] or None
    return {"base_accuracy": accuracy, "verdicts": verdicts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", help="a demo's results.json: its verdicts and base accuracy")
    parser.add_argument("--full", action="store_true", help="read the full-mode demo spec")
    parser.add_argument("--output", help="default: the packaged regimes_reference.json")
    args = parser.parse_args()

    from infosft.experiments.grid import demo_spec_path, read_grid
    from infosft.experiments.grid_runner import Plan
    from infosft.experiments.inspect import (
        LOW_Q,
        REGIMES_REFERENCE,
        format_regimes,
        regime_numbers,
        resolve_schemes,
        scheme_weights,
        score_prepared,
        scored_log_probs,
    )
    from infosft.files import write_json_atomic
    from infosft.models import load_model_and_tokenizer
    from infosft.objectives import DEFAULT_P_BAR, available_schemes
    from infosft.training.data import load_data
    from infosft.training.preparation import prepare_rows
    from infosft.training.spec import training_config

    results = json.loads(Path(args.results).read_text(encoding="utf-8")) if args.results else {}
    grid = read_grid(demo_spec_path(args.full))
    plan = Plan(grid)
    model, tokenizer = load_model_and_tokenizer(
        grid.model, **(grid.model_init_kwargs or {"dtype": "float32"})
    )
    # Near-policy tasks train on the base's own answers: those the run sampled (kept beside its
    # results.json), else sampled now.
    own = Path(args.results).parent if args.results else Path(tempfile.mkdtemp())
    plan.make_own_answers(model, tokenizer, own / "demonstrations", print)
    tasks = {}
    for task in grid.tasks:
        if not task.builtin:
            continue
        cell = next(c for c in grid.cells() if c.task == task.name)
        values = {k: v for k, v in grid.training_values(cell).items() if k not in SCHEME_KEYS}
        training = training_config(values)
        schemes = resolve_schemes(training, available_schemes())
        prepared = prepare_rows(load_data(plan.data(cell.task, cell.seed)), tokenizer, training)
        batch_size = training.per_device_train_batch_size
        examples = score_prepared(model, prepared, batch_size, schemes)
        numbers = regime_numbers(
            scored_log_probs(examples), scheme_weights(examples, schemes), DEFAULT_P_BAR
        )
        tasks[task.name] = {
            "regime": task.about,
            "num_examples": len(examples),
            **numbers,
            **demo_findings(results, task.name),
        }
        print(f"{task.name}: {len(examples)} demonstrations scored", file=sys.stderr)

    reference = {
        "about": (
            "q of the target tokens of the demo's training demonstrations under its base model, "
            "as infosft inspect measures the user's data; base_accuracy and verdicts come from "
            "the demo's results.json (null: not measured yet)"
        ),
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "model": grid.model,
        "grid": Path(grid.source).name,
        "p_bar": DEFAULT_P_BAR,
        "low_q": LOW_Q,
        "demo_results": args.results,
        "tasks": tasks,
    }
    output = Path(args.output) if args.output else REGIMES_REFERENCE
    write_json_atomic(output, reference)
    print("\n".join(format_regimes(reference, DEFAULT_P_BAR)))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
