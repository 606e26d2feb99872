"""lm-evaluation-harness tasks as prior capabilities: scores, change from base, per-item records.

Tasks run through lm-eval's Python API on a model that is already loaded (``HFLM`` wraps the
model object and its tokenizer: nothing is loaded twice, no subprocess). Built-in tasks
(ifeval, mmlu, arc_easy, hellaswag, gsm8k, ...) download their data sets from the Hugging Face
Hub on first use; task YAMLs over local files (``include_path``) run offline.

:func:`run_lm_eval` returns, for one model::

    {"scores": {task: {"acc": 0.61, "acc_stderr": 0.02, ...}},  # every metric lm-eval reports
     "higher_is_better": {task: {"acc": True, ...}},
     "items": {task: n},                   # items evaluated, per leaf task
     "groups": {group: [child, ...]},      # lm-eval groups (their scores are aggregates)
     "item_metric": {task: "acc"},         # the 0/1 score per item behind "records"
     "records": {task: [{"task_id": "arc_easy/0", "passed": True}, ...]},
     "settings": {...}}

Metric keys are lm-eval's ``metric,filter`` with its default filter ``,none`` dropped (``acc``,
``acc_stderr``, but ``exact_match,strict-match``); a stderr lm-eval could not compute is None.
``records`` are what :func:`infosft.evaluation.forgetting.first_samples` takes, so retention
on base-correct items is computed the same way for lm-eval tasks as for our own tasks; a
group's records pool its leaf tasks' records.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infosft.evaluation.forgetting import first_samples, retention
from infosft.extras import require_extra

# A grid's ``prior_tasks: [lm_eval:NAME, ...]`` entry names an lm-eval task this way.
LM_EVAL_PREFIX = "lm_eval:"


def require_lm_eval() -> None:
    """Raise :class:`~infosft.extras.MissingExtraError` naming the extra when lm-eval is
    missing."""
    require_extra("lm-eval")


def lm_eval_task_name(entry: str) -> str | None:
    """``NAME`` for a ``lm_eval:NAME`` prior-task entry, None for any other entry."""
    if not entry.startswith(LM_EVAL_PREFIX):
        return None
    name = entry[len(LM_EVAL_PREFIX) :].strip()
    if not name:
        raise ValueError(f"{entry!r}: name an lm-eval task after 'lm_eval:', e.g. lm_eval:arc_easy")
    return name


def _include_paths(include_path: str | Path | Sequence[str | Path] | None) -> tuple[str, ...]:
    if include_path is None:
        return ()
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    for path in paths:
        if not Path(path).is_dir():
            state = "is a file, not a directory" if Path(path).exists() else "does not exist"
            raise FileNotFoundError(f"lm-eval task directory {path} {state}")
    return tuple(str(Path(p).resolve()) for p in paths)


def check_lm_eval_tasks(
    tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None
) -> None:
    """Before any model loads: lm-eval is installed, every ``include_path`` directory exists
    and every task name is a task, group or tag lm-eval knows (the index built here is the one
    :func:`run_lm_eval` uses)."""
    require_lm_eval()
    _task_manager(tuple(dict.fromkeys(tasks)), _include_paths(include_path))


@functools.cache
def _task_manager(tasks: tuple[str, ...], include_path: tuple[str, ...]) -> Any:
    """lm-eval's task index, built once per process for base and tuned models alike.

    Indexing all of lm-eval's built-in tasks is slow (thousands of YAML files), so tasks that
    are all defined under ``include_path`` are looked up there alone.
    """
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=list(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=list(include_path) or None)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        where = f" nor under {', '.join(include_path)}" if include_path else ""
        raise ValueError(
            f"unknown lm-eval task(s) {unknown}: not a task, group or tag of lm-eval{where}; "
            "list them with `lm-eval ls tasks`, or pass a directory of task YAMLs"
        )
    return manager


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    batch_size: int = 8,
    seed: int | None = None,
    bootstrap_iters: int = 100_000,
) -> dict[str, Any]:
    """Evaluate an already-loaded Hugging Face causal LM on lm-eval tasks (see module docstring).

    ``tasks`` are lm-eval task, group or tag names (or task YAML paths); ``include_path`` adds
    directories of task YAMLs. ``limit`` caps the items per task (a float below 1 is a
    fraction). ``seed=None`` keeps lm-eval's own seeds, so scores match its CLI; an int seeds
    python, numpy, torch and the few-shot sampler with it. lm-eval seeds the global RNGs and
    puts the model in eval mode.
    """
    require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    names = tuple(dict.fromkeys(tasks))
    if not names:
        raise ValueError("name at least one lm-eval task, e.g. arc_easy")
    paths = _include_paths(include_path)
    manager = _task_manager(names, paths)
    seed_keys = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    seeds = dict.fromkeys(seed_keys, seed) if seed is not None else {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(names),
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
            **seeds,
        )
    except ConnectionError as err:
        raise ValueError(
            f"lm-eval tasks {list(names)} could not fetch their data ({err}): built-in tasks "
            "download data sets from the Hugging Face Hub; run where it is reachable (with "
            "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset) or define the task over local files"
        ) from err
    result = summarize_lm_eval(output)
    result["settings"] = {
        "tasks": list(names),
        "include_path": list(paths),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "apply_chat_template": apply_chat_template,
        "batch_size": batch_size,
        "seed": seed,
        "n_shot": output.get("n-shot", {}),
        "lm_eval_version": output.get("lm_eval_version"),
    }
    return result


def _number(value: Any) -> float | None:
    """A finite float, or None for lm-eval's "N/A" stderr and non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _metric_keys(scores: dict[str, Any]) -> list[str]:
    return [k for k in scores if "_stderr" not in k]


def _item_records(
    task: str, samples: Sequence[dict[str, Any]], metric_keys: Sequence[str]
) -> tuple[str, list[dict[str, Any]]] | None:
    """Per-item pass/fail from the first metric (in lm-eval's order) that is 0/1 on every item."""
    for key in metric_keys:
        metric, _, filter_name = key.partition(",")
        rows = [s for s in samples if s.get("filter", "none") == (filter_name or "none")]
        values = [s.get(metric) for s in rows]
        if rows and all(isinstance(v, (bool, int, float)) and v in (0, 1) for v in values):
            records = [
                {"task_id": f"{task}/{s['doc_id']}", "passed": bool(v)}
                for s, v in zip(rows, values, strict=True)
            ]
            return key, records
    return None


def summarize_lm_eval(output: dict[str, Any]) -> dict[str, Any]:
    """Scores, per-item records and groups from ``lm_eval.simple_evaluate``'s output (which
    must have been made with ``log_samples=True`` for the records)."""
    scores = {
        task: {k.removesuffix(",none"): _number(v) for k, v in row.items() if "," in k}
        for task, row in output["results"].items()
    }
    groups = {g: list(c) for g, c in output.get("group_subtasks", {}).items() if c}
    records, item_metric = {}, {}
    for task, samples in output.get("samples", {}).items():
        picked = _item_records(task, samples, _metric_keys(scores[task]))
        if picked is not None:
            item_metric[task], records[task] = picked

    def pooled(name: str) -> tuple[str, list[dict[str, Any]]] | None:
        if name not in groups:
            return (item_metric[name], records[name]) if name in records else None
        parts = [pooled(child) for child in groups[name]]
        if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
            return None
        return parts[0][0], [r for _, part in parts for r in part]

    for group in groups:
        picked = pooled(group)
        if picked is not None:
            item_metric[group], records[group] = picked
    return {
        "scores": scores,
        "higher_is_better": output.get("higher_is_better", {}),
        "items": {t: n["effective"] for t, n in output.get("n-samples", {}).items()},
        "groups": groups,
        "item_metric": item_metric,
        "records": records,
    }


def score_deltas(
    base_scores: dict[str, dict[str, float | None]],
    tuned_scores: dict[str, dict[str, float | None]],
) -> dict[str, dict[str, float | None]]:
    """Tuned minus base for every metric of every task both have (stderr entries left out)."""
    return {
        task: {
            key: None if tuned[key] is None or base.get(key) is None else tuned[key] - base[key]
            for key in _metric_keys(tuned)
        }
        for task, tuned in tuned_scores.items()
        if (base := base_scores.get(task)) is not None
    }


def compare_to_base(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """Change from base of two :func:`run_lm_eval` results on the same tasks and items.

    Returns ``{"delta": {task: {metric: tuned - base}}, "retention": {task: retention(...)}}``,
    retention being the share of base-correct items (on the task's ``item_metric``) that the
    tuned model still gets right, as :func:`infosft.evaluation.forgetting.retention` reports it.
    """
    return {
        "delta": score_deltas(base["scores"], tuned["scores"]),
        "retention": {
            task: retention(first_samples(base["records"][task]), first_samples(records))
            for task, records in tuned["records"].items()
            if task in base["records"]
        },
    }


def lm_eval_report(tuned: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """One results section: the tuned model's :func:`run_lm_eval` result and, given the base
    model's, ``base_scores``, ``base_records`` and :func:`compare_to_base`'s delta and retention."""
    report = dict(tuned)
    if base is not None:
        report.update(
            base_scores=base["scores"], base_records=base["records"], **compare_to_base(base, tuned)
        )
    return report


def top_level_tasks(report: dict[str, Any]) -> list[str]:
    """The tasks and groups of a result that are not part of a group, in lm-eval's order."""
    children = {c for members in report["groups"].values() for c in members}
    return [t for t in report["scores"] if t not in children]


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """Plain text, one row per (top-level task, metric): the score and its stderr; with a base
    model also its score, the delta, and retention (of how many base-correct items) on the row
    of the task's item metric."""
    with_base = "base_scores" in report
    header = f"{'lm-eval task':<24}{'metric':<26}{'model':>9}{'stderr':>9}"
    if with_base:
        header += f"{'base':>9}{'delta':>9}  retention"
    lines = [header]
    for task in top_level_tasks(report):
        scores = report["scores"][task]
        for key in _metric_keys(scores):
            metric, comma, filter_name = key.partition(",")
            stderr = scores.get(f"{metric}_stderr{comma}{filter_name}")
            line = f"{task:<24}{key:<26}{_fmt(scores[key]):>9}{_fmt(stderr):>9}"
            if with_base:
                kept = report["retention"].get(task)
                base_score = report["base_scores"].get(task, {}).get(key)
                delta = report["delta"].get(task, {}).get(key)
                line += f"{_fmt(base_score):>9}{_fmt(delta, signed=True):>9}"
                if kept is not None and report["item_metric"].get(task) == key:
                    line += f"  {_fmt(kept['retention'])} of {kept['base_correct']}"
            lines.append(line)
    return "\n".join(lines)
