"""Evaluate a model on a task, or score pre-generated samples: generation -> scoring -> metrics.

Results are a dict ``{"task", "settings", "metrics", "samples"}``; ``samples`` holds one record
per completion (``task_id``, ``sample_index``, ``completion``, ``passed``, and ``status`` for
code) in input order. Progress is appended to a JSON-lines file as completions are generated,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from infosft.evaluation.generation import SamplingSettings, generate
from infosft.evaluation.metrics import summarize
from infosft.evaluation.sandbox import DEFAULT_TIMEOUT_S
from infosft.evaluation.scorers import SCORERS, run_programs
from infosft.evaluation.tasks import Task

# The project's one atomic JSON writer, under the name cli/eval.py and infosft.evaluation use.
from infosft.files import write_json_atomic as write_json  # noqa: F401


def default_ks(n: int) -> list[int]:
    """pass@k reported for k = 1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2**i for i in range(12)) if k <= n]
    return ks if n in ks else [*ks, n]


def score_samples(
    task: Task,
    samples: Sequence[dict[str, Any]],
    workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT_S,
    sandbox: str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score ``{"task_id", "completion"}`` records; returns them, in order, with ``passed``."""
    items = task.by_id()
    missing = sorted({s["task_id"] for s in samples} - set(items))
    if missing:
        raise ValueError(f"samples name task ids not in task {task.name!r}: {missing[:5]}")
    completions = [s["completion"] for s in samples]
    records = [dict(s) for s in samples]
    if task.program is not None:
        from tqdm.auto import tqdm

        programs = [task.program(items[s["task_id"]], s["completion"]) for s in samples]
        bar = tqdm(total=len(programs), desc="running tests", disable=not progress)
        lock = threading.Lock()

        def advance(_index: int, _result: Any) -> None:
            with lock:
                bar.update()

        results = run_programs(programs, workers, timeout, sandbox, on_result=advance)
        bar.close()
        for record, result in zip(records, results, strict=True):
            record.update(passed=result.passed, status=result.status)
    else:
        references = [task.reference(items[s["task_id"]]) for s in samples]
        for record, ok in zip(records, SCORERS[task.scorer](completions, references), strict=True):
            record["passed"] = bool(ok)
    return records


def summarize_records(
    records: Sequence[dict[str, Any]], greedy: bool, seed: int = 0
) -> dict[str, float]:
    """Group records by ``task_id`` (first-seen order) and compute acc@1 / pass@k with CIs."""
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(r["task_id"], []).append(bool(r["passed"]))
    n = min(len(g) for g in groups.values())
    return summarize(list(groups.values()), default_ks(n), greedy=greedy, seed=seed)


def load_progress(path: Path, settings: SamplingSettings) -> dict[str, list[str]]:
    """Completions already generated with the same settings (item id -> completions)."""
    if not path.is_file():
        return {}
    done = {}
    key = asdict(settings)
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the interruption
            continue
        if row.get("settings") == key:
            done[row["task_id"]] = row["completions"]
    return done


def generate_for_task(
    model: Any,
    tokenizer: Any,
    task: Task,
    settings: SamplingSettings,
    items: Sequence[dict[str, Any]],
    progress_path: Path | None = None,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Completions for each item (id -> list of ``settings.n``), resuming from progress_path."""
    done = load_progress(progress_path, settings) if progress_path else {}
    todo = [item for item in items if item["id"] not in done]
    if todo:

        def save(indices: list[int], completions: list[list[str]]) -> None:
            if progress_path is None:
                return
            with progress_path.open("a") as f:
                for i, c in zip(indices, completions, strict=True):
                    row = {"task_id": todo[i]["id"], "settings": asdict(settings), "completions": c}
                    f.write(json.dumps(row) + "\n")

        if progress_path is not None:
            progress_path.parent.mkdir(parents=True, exist_ok=True)
        outputs = generate(
            model, tokenizer, [task.prompt(i) for i in todo], settings, progress, on_batch=save
        )
        done.update({item["id"]: out for item, out in zip(todo, outputs, strict=True)})
    return {item["id"]: done[item["id"]] for item in items}


def evaluate(
    model: Any,
    tokenizer: Any,
    task: Task,
    settings: SamplingSettings | None = None,
    limit: int | None = None,
    workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT_S,
    sandbox: str = "auto",
    progress_path: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate completions for the task's items (the first ``limit``), score them, summarise.

    Returns ``{"task", "settings", "metrics", "samples"}`` (see the module docstring).
    """
    settings = settings or task.generation
    items = task.items[:limit] if limit else task.items
    path = Path(progress_path) if progress_path else None
    completions = generate_for_task(model, tokenizer, task, settings, items, path, progress)
    samples = [
        {"task_id": item["id"], "sample_index": j, "completion": c}
        for item in items
        for j, c in enumerate(completions[item["id"]])
    ]
    records = score_samples(task, samples, workers, timeout, sandbox, progress)
    return {
        "task": task.name,
        "settings": asdict(settings),
        "metrics": summarize_records(records, greedy=settings.greedy, seed=settings.seed),
        "samples": records,
    }


def with_overrides(settings: SamplingSettings, **overrides: Any) -> SamplingSettings:
    """``settings`` with the given fields replaced (``None`` values are ignored)."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
