"""``infosft compare``: a grid of fine-tunes (methods x learning rates x epochs x seeds) of your
own model on your own data, each measured on a new task and on prior capabilities.

A grid YAML (paths relative to the YAML file)::

    model: smollm2-135m-instruct       # name, checkpoint directory or hub id
    data: train.jsonl                  # training data in a TRL format (as for infosft train)
    data_format: null                  # optional formatter for raw public datasets
    new_task: my_task.yaml             # evaluation task YAML or registered name: the new skill
    prior_tasks: [probes]              # tasks the base model could already do ("probes" is the
                                       # built-in short-answer set); retention is measured on them
    general_prompts: prompts.txt       # optional: KL(base || tuned) on base samples for these
    heldout_text: text.txt             # optional: general-text NLL
    grid:
      methods: [nll, dft, infosft]
      learning_rates: [1.0e-5, 5.0e-5]
      epochs: [1, 2]
      seeds: [0]
    p_bar: 0.93
    training: {per_device_train_batch_size: 8, max_length: 1024}   # other InfoSFTConfig fields
    lora: null                         # or {rank: 32, alpha: 64, dropout: 0.05}
    eval_limit: null                   # evaluate only the first N items of each task
    keep_checkpoints: false            # delete each cell's model after measuring it

Each cell's result is written atomically to ``cells/<cell>.json`` as soon as it is measured,
and the base model's to ``base.json``; a rerun skips every cell whose file exists (and was made
with the same settings), so an interrupted grid resumes where it stopped. A cell whose training
finished but whose measurement did not is measured from its saved model without retraining.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infosft.experiments import plots, probes
from infosft.experiments.report import (
    format_mean_std,
    markdown_table,
    mean_std,
    write_report,
)
from infosft.files import read_yaml, write_json_atomic
from infosft.models import DEFAULT_MODEL
from infosft.objectives import DEFAULT_P_BAR, check_p_bar, get_weighting

BUILTIN_PROBES = "probes"
GRID_KEYS = {"methods", "learning_rates", "epochs", "seeds"}
CONFIG_KEYS = {
    "model",
    "data",
    "data_format",
    "new_task",
    "prior_tasks",
    "general_prompts",
    "heldout_text",
    "grid",
    "p_bar",
    "training",
    "lora",
    "eval_limit",
    "keep_checkpoints",
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    method: str
    learning_rate: float
    epochs: float
    seed: int

    @property
    def name(self) -> str:
        """File-name-safe identifier, e.g. ``infosft-lr5e-05-ep1-seed0``."""
        return f"{self.method}-lr{self.learning_rate:g}-ep{self.epochs:g}-seed{self.seed}"


@dataclasses.dataclass
class GridConfig:
    """A parsed grid YAML; paths are resolved against the YAML's directory."""

    data: str
    new_task: str
    model: str = DEFAULT_MODEL
    data_format: str | None = None
    prior_tasks: list[str] = dataclasses.field(default_factory=lambda: [BUILTIN_PROBES])
    general_prompts: str | None = None
    heldout_text: str | None = None
    methods: list[str] = dataclasses.field(default_factory=lambda: ["nll", "dft", "infosft"])
    learning_rates: list[float] = dataclasses.field(default_factory=lambda: [5e-5])
    epochs: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    p_bar: float = DEFAULT_P_BAR
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    lora: dict[str, Any] | None = None
    eval_limit: int | None = None
    keep_checkpoints: bool = False

    def cells(self) -> list[Cell]:
        """Every cell, seeds innermost, then epochs, learning rates, methods."""
        return [
            Cell(method, float(lr), float(epochs), int(seed))
            for method in self.methods
            for lr in self.learning_rates
            for epochs in self.epochs
            for seed in self.seeds
        ]

    def fingerprint(self) -> str:
        """Hash of everything but the grid axes and bookkeeping: cells of runs with a different
        model, data, tasks or training options must not be reused."""
        shared = dataclasses.asdict(self)
        for key in ("methods", "learning_rates", "epochs", "seeds", "keep_checkpoints"):
            shared.pop(key)
        return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def _as_list(value: Any, key: str) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"grid.{key} must not be empty")
    return values


def _resolve(path: str | None, base_dir: Path, what: str) -> str | None:
    """A path relative to the YAML's directory, kept as is when it names a registered thing."""
    if path is None:
        return None
    candidate = base_dir / path
    if candidate.exists():
        return str(candidate)
    if Path(path).exists():
        return str(Path(path))
    if what == "data" and ("/" in path and not path.startswith((".", "/"))):
        return path  # a hub dataset name
    if what == "task":
        return path  # a registered task name; load_task reports it if unknown
    raise FileNotFoundError(f"{what} file {path} does not exist (looked in {base_dir})")


def read_grid_config(path: str | Path) -> GridConfig:
    """Parse and check a grid YAML (format in this module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid config {path} does not exist")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path} must hold a mapping of keys to values")
    unknown = set(spec) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(CONFIG_KEYS)}")
    for key in ("data", "new_task"):
        if key not in spec:
            raise ValueError(f"{path}: missing required key {key!r}")
    grid = spec.pop("grid", None) or {}
    if not isinstance(grid, dict) or set(grid) - GRID_KEYS:
        raise ValueError(f"{path}: grid must be a mapping with keys among {sorted(GRID_KEYS)}")
    base_dir = path.parent
    values = dict(spec)
    values["data"] = _resolve(spec["data"], base_dir, "data")
    values["new_task"] = _resolve(spec["new_task"], base_dir, "task")
    prior = spec.get("prior_tasks", [BUILTIN_PROBES])
    values["prior_tasks"] = [_resolve(t, base_dir, "task") for t in _as_list(prior, "prior")]
    for key in ("general_prompts", "heldout_text"):
        values[key] = _resolve(spec.get(key), base_dir, key.replace("_", " "))
    if "p_bar" in spec:
        values["p_bar"] = check_p_bar(spec["p_bar"])
    for key in GRID_KEYS:
        if key in grid:
            values[key] = _as_list(grid[key], key)
    config = GridConfig(**values)
    for method in config.methods:
        get_weighting(method)
    for lr in config.learning_rates:
        if not isinstance(lr, (int, float)) or lr <= 0:
            raise ValueError(f"{path}: learning rates must be positive numbers, got {lr!r}")
    for epochs in config.epochs:
        if not isinstance(epochs, (int, float)) or epochs <= 0:
            raise ValueError(f"{path}: epochs must be positive numbers, got {epochs!r}")
    return config


@dataclasses.dataclass
class Measures:
    """What is measured on every model: tasks, general prompts and general text."""

    new_task: Any
    prior_tasks: list[Any]
    general_prompts: list[list[dict[str, str]]]
    heldout_text: list[str]
    limit: int | None


def load_measures(config: GridConfig) -> Measures:
    """The evaluation tasks and texts named by the config (built-in ones where none given)."""
    from infosft.evaluation import load_task
    from infosft.evaluation.forgetting import read_texts

    prompts = (
        read_texts(config.general_prompts) if config.general_prompts else probes.GENERAL_PROMPTS
    )
    return Measures(
        new_task=load_task(config.new_task),
        prior_tasks=[None if t == BUILTIN_PROBES else load_task(t) for t in config.prior_tasks],
        general_prompts=[[{"role": "user", "content": p}] for p in prompts],
        heldout_text=list(
            read_texts(config.heldout_text) if config.heldout_text else probes.GENERAL_TEXT
        ),
        limit=config.eval_limit,
    )


def evaluate_model(model: Any, tokenizer: Any, measures: Measures) -> dict[str, Any]:
    """New-task metrics, per-prior-task records, and general-text NLL of one model."""
    from infosft.evaluation import evaluate
    from infosft.evaluation.forgetting import heldout_nll

    new = evaluate(model, tokenizer, measures.new_task, limit=measures.limit, progress=False)
    prior = {}
    for name, task in zip(_prior_names(measures), measures.prior_tasks, strict=True):
        if task is None:
            items = probes.PROBES[: measures.limit] if measures.limit else probes.PROBES
            prior[name] = probes.probe_records(model, tokenizer, items)
        else:
            prior[name] = evaluate(model, tokenizer, task, limit=measures.limit, progress=False)[
                "samples"
            ]
    return {
        "new_task": new["metrics"],
        "new_task_samples": new["samples"],
        "prior_records": prior,
        "general_nll": heldout_nll(model, tokenizer, measures.heldout_text)["nll"],
    }


def _prior_names(measures: Measures) -> list[str]:
    return [BUILTIN_PROBES if t is None else t.name for t in measures.prior_tasks]


def new_task_score(metrics: dict[str, Any]) -> float:
    """The headline score of a task's metrics: acc@1 for greedy tasks, else pass@1."""
    return metrics.get("acc@1", metrics.get("pass@1", float("nan")))


def cell_measures(
    cell_eval: dict[str, Any],
    base_eval: dict[str, Any],
    base_model: Any,
    model: Any,
    tokenizer: Any,
    measures: Measures,
    base_samples: list[str],
) -> dict[str, Any]:
    """A tuned model's scores relative to the base: retention per prior task, KL, NLL delta."""
    from infosft.evaluation.forgetting import kl_on_texts, retention

    prior = {
        name: retention(base_eval["prior_records"][name], records)
        for name, records in cell_eval["prior_records"].items()
    }
    retentions = [r["retention"] for r in prior.values()]
    kl = kl_on_texts(base_model, model, tokenizer, measures.general_prompts, base_samples)
    return {
        "new_task_score": new_task_score(cell_eval["new_task"]),
        "new_task": cell_eval["new_task"],
        "prior": prior,
        "prior_score": mean_std(retentions)[0],
        "prior_accuracy": mean_std([r["accuracy_tuned"] for r in prior.values()])[0],
        "kl_base_tuned": kl["kl_base_tuned"],
        "general_nll": cell_eval["general_nll"],
        "general_nll_delta": cell_eval["general_nll"] - base_eval["general_nll"],
    }


def _model_finished(model_dir: Path) -> bool:
    """Whether ``train`` wrote its final model (written last, after training ended)."""
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def _has_checkpoint(model_dir: Path) -> bool:
    return any(model_dir.glob("checkpoint-*"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def finished_cell(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The stored result of a cell if it exists and was made with the same settings."""
    stored = _read_json(path)
    if stored is None:
        return None
    if stored.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{path} was made with different settings (model, data, tasks or training options); "
            "use another --output-dir, or delete the cells directory to start over"
        )
    return stored


def run_cell(
    cell: Cell, config: GridConfig, cell_dir: Path, log: Callable[[str], None]
) -> tuple[Path, float | None]:
    """Train a cell's model (resuming an interrupted run); returns its directory and the
    training time, None when the model had been trained before."""
    from infosft.training import RunSpec, train

    model_dir = cell_dir / "model"
    if _model_finished(model_dir):
        log(f"{cell.name}: model already trained, measuring it")
        return model_dir, None
    values = {
        **config.training,
        "learning_rate": cell.learning_rate,
        "num_train_epochs": cell.epochs,
        "report_to": "none",
        "model": config.model,
        "data": config.data,
        "data_format": config.data_format,
        "method": cell.method,
        "p_bar": config.p_bar,
        "seed": cell.seed,
        "lora": config.lora,
        "output_dir": str(model_dir),
    }
    spec = RunSpec.from_dict(values, f"cell {cell.name}")
    result = train(spec, resume=_has_checkpoint(model_dir))
    return model_dir, result.train_seconds


def run_compare(
    config: GridConfig,
    output_dir: str | Path,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run (or resume) the grid and write cells/*.json, results.json, plots and the report."""
    from infosft.evaluation import SamplingSettings, generate
    from infosft.models import load_model_and_tokenizer

    output_dir = Path(output_dir)
    cells_dir = output_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = config.fingerprint()
    measures = load_measures(config)
    base_model, tokenizer = load_model_and_tokenizer(config.model)
    base_model.eval()

    base_path = output_dir / "base.json"
    base = finished_cell(base_path, fingerprint)
    if base is None:
        log("measuring the base model")
        base_eval = evaluate_model(base_model, tokenizer, measures)
        sampling = SamplingSettings(
            max_new_tokens=64, temperature=1.0, batch_size=len(measures.general_prompts)
        )
        base = {
            "fingerprint": fingerprint,
            "eval": base_eval,
            "general_samples": [
                c[0]
                for c in generate(
                    base_model, tokenizer, measures.general_prompts, sampling, progress=False
                )
            ],
        }
        write_json_atomic(base_path, base)

    results = []
    for index, cell in enumerate(config.cells(), start=1):
        path = cells_dir / f"{cell.name}.json"
        stored = finished_cell(path, fingerprint)
        if stored is not None:
            log(f"[{index}/{len(config.cells())}] {cell.name}: done before, skipped")
            results.append(stored)
            continue
        log(f"[{index}/{len(config.cells())}] {cell.name}: training")
        cell_dir = output_dir / "runs" / cell.name
        model_dir, seconds = run_cell(cell, config, cell_dir, log)
        model, _ = load_model_and_tokenizer(str(model_dir))
        model.eval()
        cell_eval = evaluate_model(model, tokenizer, measures)
        scores = cell_measures(
            cell_eval, base["eval"], base_model, model, tokenizer, measures, base["general_samples"]
        )
        del model
        stored = {
            "fingerprint": fingerprint,
            "cell": dataclasses.asdict(cell),
            "train_seconds": seconds,
            **scores,
        }
        write_json_atomic(path, stored)
        if not config.keep_checkpoints:
            shutil.rmtree(model_dir, ignore_errors=True)
        log(
            f"{cell.name}: new task {scores['new_task_score']:.3f}, prior "
            f"{scores['prior_score']:.3f}"
        )
        results.append(stored)

    summary = write_compare_outputs(config, base, results, output_dir)
    return summary


def summarize_cells(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seeds of each (method, learning rate, epochs) pooled into mean and std."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        c = r["cell"]
        groups.setdefault((c["method"], c["learning_rate"], c["epochs"]), []).append(r)
    rows = []
    for (method, lr, epochs), members in groups.items():
        row = {"method": method, "learning_rate": lr, "epochs": epochs, "seeds": len(members)}
        for key in ("new_task_score", "prior_score", "kl_base_tuned", "general_nll_delta"):
            mean, std = mean_std([m[key] for m in members])
            row[key] = {"mean": mean, "std": std, "values": [m[key] for m in members]}
        rows.append(row)
    return rows


def write_compare_outputs(
    config: GridConfig,
    base: dict[str, Any],
    results: Sequence[dict[str, Any]],
    output_dir: Path,
) -> dict[str, Any]:
    """results.json, the trade-off plot and report.md/.html of a (possibly partial) grid."""
    rows = summarize_cells(results)
    base_score = new_task_score(base["eval"]["new_task"])
    points = [plots.TradeoffPoint("base", 1.0, base_score, label="base")]
    points += [
        plots.TradeoffPoint(
            r["method"],
            r["prior_score"]["mean"],
            r["new_task_score"]["mean"],
            r["prior_score"]["std"],
            r["new_task_score"]["std"],
            label=f"lr={r['learning_rate']:g}, {r['epochs']:g} ep",
        )
        for r in rows
    ]
    figure = plots.plot_tradeoff(
        points,
        output_dir / "tradeoff.png",
        connect=True,
        title="New-task score vs prior capabilities across the grid",
        x_label="prior-capability retention (mean over prior tasks)",
        y_label="new-task score",
    )
    summary = {
        "config": dataclasses.asdict(config),
        "base": {"new_task_score": base_score, "general_nll": base["eval"]["general_nll"]},
        "grid": rows,
        "cells": [{k: v for k, v in r.items() if k != "fingerprint"} for r in results],
    }
    write_json_atomic(output_dir / "results.json", summary)
    table_rows = [["base", "–", "–", f"{base_score:.3f}", "1", "0", "0"]] + [
        [
            r["method"],
            f"{r['learning_rate']:g}",
            f"{r['epochs']:g}",
            format_mean_std(r["new_task_score"]["values"]),
            format_mean_std(r["prior_score"]["values"]),
            format_mean_std(r["kl_base_tuned"]["values"], 4),
            format_mean_std(r["general_nll_delta"]["values"]),
        ]
        for r in rows
    ]
    headers = [
        "method",
        "lr",
        "epochs",
        "new-task score",
        "prior retention",
        "KL(base ‖ tuned)",
        "general NLL change",
    ]
    markdown = f"""# InfoSFT compare

Model `{config.model}`, data `{config.data}`, new task `{config.new_task}`, prior tasks
{", ".join(f"`{t}`" for t in config.prior_tasks)}; seeds {config.seeds}.
Values are mean ± std over seeds where there are several.

{markdown_table(headers, table_rows)}

![tradeoff]({figure.name})

Up and right is better: more of the new task learned, more of what the base model could do kept.
"""
    write_report(markdown, output_dir, "InfoSFT compare")
    return summary
