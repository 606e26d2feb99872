"""Summaries of a grid's cells: mean ± std over seeds, each task's fronts and verdicts, and
what a run of this size can resolve.

Pure functions over the cell records the engine writes (no models): the report and the CLI
print from them, and they can be recomputed from ``results.json`` alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from infosft.evaluation.metrics import wilson_interval
from infosft.experiments import fronts

# Per-setting metrics: (key, header, digits).
METRICS = (
    ("accuracy", "new-task accuracy", 3),
    ("retention", "retention", 3),
    ("kl_base_tuned", "KL(base ‖ tuned)", 4),
    ("general_nll_delta", "general NLL change", 3),
    ("train_seconds", "training s", 0),
)
REFERENCE_CURVE = "nll"


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (std 0 for one; NaN for none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), std


def format_mean_std(values: Sequence[float | None], digits: int = 3) -> str:
    """``"m ± s"`` over seeds, or just ``"m"`` for one value; ``"–"`` when there is none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    if sum(v is not None and math.isfinite(v) for v in values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def run_length(record: Mapping[str, Any]) -> str:
    """A cell's run length: ``"3 steps"`` or ``"4 ep"``."""
    if record.get("epochs") is None:
        return f"{record['max_steps']} steps"
    return f"{fronts.exact_number(record['epochs'])} ep"


def setting_label(record: Mapping[str, Any]) -> str:
    """A point of a front: its learning rate and run length (everything but the seed)."""
    return f"lr {fronts.exact_number(record['learning_rate'])}, {run_length(record)}"


def setting_rows(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, curve, learning rate, length), seeds pooled into mean, std and values,
    in the cells' order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for cell in cells:
        key = (
            cell["task"],
            cell["curve"],
            cell["learning_rate"],
            cell.get("epochs"),
            cell.get("max_steps"),
        )
        groups.setdefault(key, []).append(cell)
    rows = []
    for (task, curve, lr, epochs, max_steps), members in groups.items():
        row: dict[str, Any] = {
            "task": task,
            "curve": curve,
            "method": members[0]["method"],
            "learning_rate": lr,
            "epochs": epochs,
            "max_steps": max_steps,
            "seeds": sorted(m["seed"] for m in members),
        }
        for key, *_ in METRICS:
            values = [m.get(key) for m in members]
            mean, std = mean_std(values)
            row[key] = {"mean": mean, "std": std, "values": values}
        rows.append(row)
    return rows


def task_fronts(
    cells: Sequence[Mapping[str, Any]], base_probe_correct: Mapping[str, bool], spec: Any
) -> dict[str, dict[str, Any]]:
    """Per task: :func:`infosft.experiments.fronts.fronts_summary` (points, fronts, bootstrap
    bands, verdicts against the reference curve), or ``{"error": why}`` when fronts are
    undefined (no retention item, no finished cell)."""
    result = {}
    for task in spec.tasks:
        mine = [c for c in cells if c["task"] == task.name]
        if not mine:
            result[task.name] = {"error": "no finished cell"}
            continue
        try:
            built = fronts.cells_from_records(
                mine,
                base_probe_correct,
                curve=lambda r: r["curve"],
                setting=setting_label,
            )
        except ValueError as err:
            result[task.name] = {"error": str(err)}
            continue
        # Every curve is compared with plain SFT (nll) when the grid has it.
        curves = [c.curve for c in built]
        reference = REFERENCE_CURVE if REFERENCE_CURVE in curves else curves[0]
        result[task.name] = {**fronts.fronts_summary(built, reference), "reference": reference}
    return result


def _half_width(n: int, share: float) -> str:
    """Half the width of the 95% Wilson interval of ``share`` measured on ``n`` items."""
    if n <= 0:
        return "undefined (no items)"
    low, high = wilson_interval(round(share * n), n)
    return f"±{(high - low) / 2:.2f}"


def resolution(results: Mapping[str, Any]) -> list[str]:
    """Sentences saying what this run can and cannot resolve, from its own sizes."""
    spec, base = results["spec"], results["base"]
    seeds = len(spec["seeds"])
    n_ret = base["retention_items"]
    lines = []
    for task, measured in base["new_tasks"].items():
        n_items = len(measured["correct"])
        lines.append(
            f"{task}: {n_items} held-out items, so one accuracy is known to about "
            f"{_half_width(n_items, 0.5)} (95%, at 50%); retention is measured on the "
            f"{n_ret} prior items the base answers correctly ({_half_width(n_ret, 0.9)} "
            "at 90%)."
        )
    per_curve = len(spec["learning_rates"]) * len(spec["epochs"])
    lines.append(
        f"Each method's front is a staircase through {per_curve} setting(s) "
        f"({len(spec['learning_rates'])} learning rate(s)); nothing is interpolated between them."
    )
    if seeds == 1:
        lines.append(
            "One seed: the intervals resample the held-out and retention items, not training "
            "runs, so run-to-run variation is not in them; a verdict here describes these runs. "
            "The full mode (`infosft demo --full`, 3 seeds) puts seeds into the intervals."
        )
    else:
        lines.append(f"{seeds} seeds per setting: the intervals resample items and seeds together.")
    return lines
