"""The demo experiment: the same base model fine-tuned with each weighting, side by side.

Read top to bottom, :func:`run_demo`

1. loads the base model once;
2. measures it: held-out accuracy on the built-in arithmetic-chain task, answers to the
   prior-capability probes, NLL of general text, and samples on general prompts (the points
   where KL(base || tuned) is measured);
3. for every seed and method, fine-tunes a copy of the base model on the same problems with the
   same seed and learning rate (only ``method`` differs) and measures it the same way;
4. writes ``results.json`` (every figure and the run config), PNG plots, ``report.md`` and a
   standalone ``report.html``.

Held-out problems are fixed across seeds (drawn from their own seed and excluded from every
training set), so seeds vary the training problems and the training order only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infosft.experiments import arith_task, plots, probes
from infosft.experiments.report import (
    format_mean_std,
    markdown_table,
    mean_std,
    write_report,
)
from infosft.files import environment, write_json_atomic
from infosft.models import DEFAULT_MODEL
from infosft.objectives import DEFAULT_P_BAR

DEFAULT_METHODS = ("nll", "dft", "infosft")
TEST_SEED = 0
# Training examples scored under the base model for the q histogram: ~1,300 target tokens
# are enough for its shape, and scoring all of them would cost a third of a training run.
Q_HISTOGRAM_EXAMPLES = 32
# Metrics of each run, in table order: (key, column header, digits shown).
TABLE_COLUMNS = (
    ("accuracy", "new-task accuracy (held-out)", 3),
    ("retention", "retention (probes base got right)", 3),
    ("kl_base_tuned", "KL(base ‖ tuned) per token", 4),
    ("general_nll", "general-text NLL", 3),
    ("train_seconds", "training time (s)", 0),
)


@dataclasses.dataclass
class DemoConfig:
    """Everything that defines a demo run; stored in results.json as ``config``."""

    model: str = DEFAULT_MODEL
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = 1
    learning_rate: float = 1e-4
    steps: int = 16
    batch_size: int = 8
    n_test: int = 40
    n_probes: int = len(probes.PROBES)
    n_general_prompts: int = 8
    p_bar: float = DEFAULT_P_BAR
    max_new_tokens: int = 48
    quick: bool = False

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        for name in ("seeds", "steps", "batch_size", "n_test", "n_probes", "n_general_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        if not self.methods:
            raise ValueError("give at least one method")
        self.n_probes = min(self.n_probes, len(probes.PROBES))
        self.n_general_prompts = min(self.n_general_prompts, len(probes.GENERAL_PROMPTS))

    @property
    def n_train(self) -> int:
        """Training problems: one epoch of ``steps`` batches, each problem seen once."""
        return self.steps * self.batch_size


def quick_config(**overrides: Any) -> DemoConfig:
    """The ``--quick`` smoke run: the same code path with fewer steps and problems."""
    values = {
        "steps": 6,
        "batch_size": 4,
        "n_test": 16,
        "n_probes": 16,
        "n_general_prompts": 4,
        "quick": True,
    }
    return DemoConfig(**{**values, **overrides})


@dataclasses.dataclass
class Baseline:
    """What the base model does, computed once and compared against by every tuned model."""

    model: Any
    task: Any
    probe_task: list[probes.Probe]
    general_prompts: list[list[dict[str, str]]]
    general_samples: list[str]
    task_result: dict[str, Any]
    probe_records: list[dict[str, Any]]
    general_nll: float


def measure_baseline(model: Any, tokenizer: Any, config: DemoConfig, seed: int) -> Baseline:
    """Evaluate the base model and draw its samples on the general prompts (for the KL)."""
    from infosft.evaluation import SamplingSettings, evaluate, generate
    from infosft.evaluation.forgetting import heldout_nll

    _, test = arith_task.train_test_split(0, config.n_test, seed=TEST_SEED)
    task = arith_task.evaluation_task(test, config.max_new_tokens, batch_size=config.n_test)
    items = list(probes.PROBES[: config.n_probes])
    prompts = [
        [{"role": "user", "content": p}] for p in probes.GENERAL_PROMPTS[: config.n_general_prompts]
    ]
    sampling = SamplingSettings(
        max_new_tokens=config.max_new_tokens, temperature=1.0, batch_size=len(prompts), seed=seed
    )
    samples = [c[0] for c in generate(model, tokenizer, prompts, sampling, progress=False)]
    return Baseline(
        model=model,
        task=task,
        probe_task=items,
        general_prompts=prompts,
        general_samples=samples,
        task_result=evaluate(model, tokenizer, task, progress=False),
        probe_records=probes.probe_records(model, tokenizer, items),
        general_nll=heldout_nll(model, tokenizer, list(probes.GENERAL_TEXT))["nll"],
    )


def measure_tuned(model: Any, tokenizer: Any, baseline: Baseline) -> dict[str, Any]:
    """New-task accuracy and the forgetting metrics of a tuned model against the base."""
    from infosft.evaluation import evaluate
    from infosft.evaluation.forgetting import heldout_nll, kl_on_texts, retention

    task_result = evaluate(model, tokenizer, baseline.task, progress=False)
    records = probes.probe_records(model, tokenizer, baseline.probe_task)
    kept = retention(baseline.probe_records, records)
    kl = kl_on_texts(
        baseline.model, model, tokenizer, baseline.general_prompts, baseline.general_samples
    )
    return {
        "accuracy": task_result["metrics"]["acc@1"],
        "accuracy_ci": [
            task_result["metrics"]["acc@1_ci_low"],
            task_result["metrics"]["acc@1_ci_high"],
        ],
        "retention": kept["retention"],
        "retention_ci": [kept["retention_ci_low"], kept["retention_ci_high"]],
        "probe_accuracy": kept["accuracy_tuned"],
        "kl_base_tuned": kl["kl_base_tuned"],
        "general_nll": heldout_nll(model, tokenizer, list(probes.GENERAL_TEXT))["nll"],
        "example_completions": [s["completion"] for s in task_result["samples"][:3]],
    }


def training_values(config: DemoConfig, method: str, seed: int) -> dict[str, Any]:
    """InfoSFTConfig fields of one run; only ``method`` differs between methods."""
    return {
        "method": method,
        "p_bar": config.p_bar,
        "seed": seed,
        "learning_rate": config.learning_rate,
        "max_steps": config.steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "weight_decay": 0.0,
        "logging_steps": max(1, config.steps // 10),
        "save_strategy": "no",
        "report_to": "none",
        "max_length": 256,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def read_curves(path: Path) -> list[dict[str, Any]]:
    """The per-step training logs of a metrics.jsonl (the final summary line left out)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row for row in rows if "loss" in row and "train_runtime" not in row]


def train_copy(
    base_model: Any, tokenizer: Any, dataset: Any, values: dict[str, Any], run_dir: Path
) -> tuple[Any, float]:
    """Fine-tune a deep copy of ``base_model``; returns it and the training time in seconds.

    Logs go to ``run_dir/metrics.jsonl``; no checkpoint is written (the model is measured in
    memory and discarded).
    """
    from transformers import PrinterCallback

    from infosft.training import RunSpec, build_trainer
    from infosft.training.outputs import metrics_logger

    run_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(base_model)
    model.train()
    spec = RunSpec.from_dict({**values, "output_dir": str(run_dir), "data": dataset})
    logger = metrics_logger(run_dir / "metrics.jsonl", None)
    trainer = build_trainer(spec, model=model, tokenizer=tokenizer, callbacks=[logger])
    # The demo prints its own progress; the Trainer would print every log dict as well.
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    return model, seconds


def summarize_runs(runs: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every table metric, per method."""
    summary = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        summary[method] = {}
        for key, *_ in TABLE_COLUMNS:
            mean, std = mean_std([r[key] for r in mine])
            summary[method][key] = {"mean": mean, "std": std, "n": len(mine)}
    return summary


def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the side-by-side table (base first, then each method)."""
    base = results["base"]
    headers = ["model", *[header for _, header, _ in TABLE_COLUMNS]]
    rows = [
        [
            "base (no fine-tuning)",
            f"{base['accuracy']:.3f}",
            "1 (by definition)",
            "0",
            f"{base['general_nll']:.3f}",
            "–",
        ]
    ]
    for method in results["config"]["methods"]:
        mine = [r for r in results["runs"] if r["method"] == method]
        rows.append(
            [
                method,
                *[
                    format_mean_std([r[key] for r in mine], digits)
                    for key, _, digits in TABLE_COLUMNS
                ],
            ]
        )
    return headers, rows


def plain_text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table aligned in columns, for the terminal."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def write_plots(results: dict[str, Any], q_values: Sequence[float], output_dir: Path) -> list[Path]:
    """The demo's three plots; returns their paths."""
    config = results["config"]
    summary = results["summary"]
    base = results["base"]
    points = [plots.TradeoffPoint("base", 1.0, base["accuracy"])]
    for method in config["methods"]:
        acc, kept = summary[method]["accuracy"], summary[method]["retention"]
        points.append(
            plots.TradeoffPoint(method, kept["mean"], acc["mean"], kept["std"], acc["std"])
        )
    seeds = config["seeds"]
    curves = {
        method: next(r["curves"] for r in results["runs"] if r["method"] == method)
        for method in config["methods"]
    }
    return [
        plots.plot_tradeoff(
            points,
            output_dir / "tradeoff.png",
            title=f"Learn vs forget ({seeds} seed{'s' if seeds > 1 else ''}, mean ± std)",
            x_label="retention: share of base-correct probes still correct",
            y_label="new-task accuracy (held-out problems)",
        ),
        plots.plot_q_histogram(
            q_values,
            output_dir / "q_histogram.png",
            methods=config["methods"],
            p_bar=config["p_bar"],
            title="Training targets' q under the base model, and each method's w(q)",
        ),
        plots.plot_training_curves(
            curves,
            output_dir / "training_curves.png",
            title=f"Training curves (seed {results['runs'][0]['seed']})",
        ),
    ]


def findings(results: dict[str, Any]) -> list[str]:
    """Plain sentences stating which method led on each metric (computed, not written by hand)."""
    summary, methods = results["summary"], results["config"]["methods"]
    base = results["base"]

    def best(key: str, higher: bool) -> str:
        ranked = sorted(methods, key=lambda m: summary[m][key]["mean"], reverse=higher)
        return ", ".join(f"{m} {summary[m][key]['mean']:.3f}" for m in ranked)

    lines = [
        f"New-task accuracy (base {base['accuracy']:.3f}), best first: {best('accuracy', True)}.",
        f"Retention of probes the base got right, best first: {best('retention', True)}.",
        f"KL(base ‖ tuned), least drift first: {best('kl_base_tuned', False)}.",
        f"General-text NLL (base {base['general_nll']:.3f}), lowest first: "
        f"{best('general_nll', False)}.",
    ]
    if results["config"]["seeds"] > 1:
        lines.append(
            "Differences smaller than the ± (standard deviation over seeds) are not resolved by "
            "this run."
        )
    else:
        lines.append("One seed: differences of a few points are within seed-to-seed noise.")
    return lines


def report_markdown(results: dict[str, Any], figures: Sequence[Path], output_dir: Path) -> str:
    """The demo report as markdown (images linked relative to ``output_dir``)."""
    config = results["config"]
    headers, rows = results_table(results)
    examples = "\n".join(
        f"- **{r['method']}** (seed {r['seed']}): `{r['example_completions'][0]!r}`"
        for r in results["runs"]
        if r["seed"] == results["runs"][0]["seed"]
    )
    base_example = results["base"]["example_completions"][0]
    images = "\n\n".join(f"![{f.stem}]({f.relative_to(output_dir).as_posix()})" for f in figures)
    return f"""# InfoSFT demo

Model `{config["model"]}` fine-tuned with {", ".join(f"`{m}`" for m in config["methods"])} on
the same {config["n_train"]} arithmetic-chain problems, seed and learning rate
({config["learning_rate"]:g}, {config["steps"]} steps of batch {config["batch_size"]}, cosine
schedule); only the token weighting differs. {config["seeds"]} seed(s){
        " (quick smoke run)" if config["quick"] else ""
    }. Total time {results["total_seconds"]:.0f} s wall ({results["total_cpu_seconds"]:.0f} s CPU).

## Results

{markdown_table(headers, rows)}

- **new-task accuracy**: greedy answers to {config["n_test"]} held-out problems never seen in
  training (final number checked).
- **retention**: of the {results["base"]["probe_correct"]} of {config["n_probes"]}
  short-answer probes the base model answers correctly, the share the tuned model still gets.
- **KL(base ‖ tuned)**: mean per-token KL over the full vocabulary on the base model's own
  samples for {config["n_general_prompts"]} general prompts (0 = unchanged).
- **general-text NLL**: nats per token on {len(probes.GENERAL_TEXT)} plain-English paragraphs.

{"mean ± standard deviation over seeds." if config["seeds"] > 1 else ""}

## What it shows

{chr(10).join(f"- {line}" for line in findings(results))}

## Plots

{images}

## Example answers to the first held-out problem

Question: {results["held_out_example"]["question"]} (answer {results["held_out_example"]["answer"]})

- **base**: `{base_example!r}`
{examples}

## Run configuration

```json
{json.dumps({**config, "environment": results["environment"]}, indent=2)}
```
"""


def run_demo(
    config: DemoConfig,
    output_dir: str | Path,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run the demo experiment and write its results, plots and report into ``output_dir``.

    Returns the results dict that is also written as ``results.json``.
    """
    from datasets import Dataset

    from infosft.experiments.q_profile import score_rows, target_log_probs
    from infosft.models import load_model_and_tokenizer

    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    cpu_start = time.process_time()

    def step(message: str) -> None:
        # CPU time next to wall time: on a shared machine it shows what the run itself cost.
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        log(f"[{wall:6.0f} s wall, {cpu:6.0f} s cpu] {message}")

    step(f"loading {config.model}")
    base_model, tokenizer = load_model_and_tokenizer(config.model, dtype="float32")
    base_model.eval()
    step("measuring the base model")
    baseline = measure_baseline(base_model, tokenizer, config, seed=0)
    base_task = baseline.task_result
    base = {
        "accuracy": base_task["metrics"]["acc@1"],
        "accuracy_ci": [
            base_task["metrics"]["acc@1_ci_low"],
            base_task["metrics"]["acc@1_ci_high"],
        ],
        "probe_accuracy": sum(r["passed"] for r in baseline.probe_records) / config.n_probes,
        "probe_correct": sum(r["passed"] for r in baseline.probe_records),
        "general_nll": baseline.general_nll,
        "example_completions": [s["completion"] for s in base_task["samples"][:3]],
    }
    step(
        f"base: accuracy {base['accuracy']:.3f}, probes {base['probe_correct']}/"
        f"{config.n_probes}, general NLL {base['general_nll']:.3f}"
    )

    runs, q_values = [], []
    for seed in range(config.seeds):
        train, _ = arith_task.train_test_split(config.n_train, config.n_test, seed=seed)
        rows = [arith_task.to_sft_example(p) for p in train]
        if seed == 0:
            scored = score_rows(base_model, tokenizer, rows[:Q_HISTOGRAM_EXAMPLES])
            q_values = target_log_probs(scored).exp().tolist()
        dataset = Dataset.from_list(rows)
        for method in config.methods:
            step(f"seed {seed}: training {method}")
            run_dir = output_dir / "runs" / f"seed{seed}-{method}"
            values = training_values(config, method, seed)
            model, seconds = train_copy(base_model, tokenizer, dataset, values, run_dir)
            step(f"seed {seed}: measuring {method} (trained in {seconds:.0f} s)")
            measured = measure_tuned(model, tokenizer, baseline)
            del model
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "train_seconds": seconds,
                    **measured,
                    "curves": read_curves(run_dir / "metrics.jsonl"),
                }
            )
            step(
                f"seed {seed}: {method} "
                + ", ".join(f"{key} {_number(measured[key])}" for key, *_ in TABLE_COLUMNS[:4])
            )

    problem = baseline.task.items[0]
    results = {
        "config": {
            **dataclasses.asdict(config),
            "methods": list(config.methods),
            "n_train": config.n_train,
        },
        "environment": environment(),
        "base": base,
        "runs": runs,
        "summary": summarize_runs(runs, config.methods),
        "held_out_example": {"question": problem["question"], "answer": problem["answer"]},
        "q_under_base": {
            "quantiles": _quantiles(q_values),
            "num_target_tokens": len(q_values),
        },
    }
    figures = write_plots(results, q_values, output_dir)
    results["total_seconds"] = time.perf_counter() - start
    results["total_cpu_seconds"] = time.process_time() - cpu_start
    results["figures"] = [f.name for f in figures]
    write_json_atomic(output_dir / "results.json", results)
    write_report(report_markdown(results, figures, output_dir), output_dir, "InfoSFT demo")
    step(f"wrote {output_dir / 'report.md'}, report.html, results.json and {len(figures)} plots")
    return results


def _quantiles(q_values: Sequence[float]) -> dict[str, float]:
    import torch

    from infosft.experiments.q_profile import quantiles

    return quantiles(torch.tensor(list(q_values), dtype=torch.float64).log())


def _number(value: float | None) -> str:
    """A metric for a progress line; "n/a" where it is undefined (e.g. no probe to retain)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.4g}"
