"""The evaluation section of a model card: ``infosft eval`` merges its results into it.

A card written by :mod:`infosft.training.model_card` holds an evaluation section between
:data:`EVAL_BEGIN` and :data:`EVAL_END`. :func:`add_evaluation` gives each evaluated task (its
``--task`` and every lm-eval task) a subsection there, marked with the task's key so that a
later evaluation of the same task replaces it, and its scores in the ``model-index``
metadata, which the Hub shows beside the model. :func:`keep_evaluation` carries the section
over when the card is written again (``push_to_hub`` rewrites it).
"""

from __future__ import annotations

import datetime
import math
import os
import re
from pathlib import Path
from typing import Any

from infosft.files import write_text_atomic
from infosft.training.outputs import CARD_FILE

# The evaluation results live between these lines; `infosft eval` rewrites what is between them.
EVAL_BEGIN = "<!-- infosft:evaluation -->"
EVAL_END = "<!-- /infosft:evaluation -->"
NOT_EVALUATED = (
    "Not evaluated yet. `infosft eval --model <this directory> --task TASK` (and/or "
    "`--lm-eval TASKS`, `--base-model BASE` for forgetting) adds its results here."
)


def add_evaluation(
    model_dir: str | os.PathLike, results: dict[str, Any], results_path: str | os.PathLike
) -> Path:
    """Add (or replace) the results of one ``infosft eval`` run in ``model_dir``'s model card.

    Each evaluated task (``--task`` and every lm-eval task) gets a subsection of the card's
    evaluation section and its metrics in the ``model-index`` metadata; evaluating the same
    task again replaces its entries, other tasks stay. The card is rewritten atomically.

    Args:
        model_dir: a trained output directory holding an infosft model card (README.md).
        results: what ``infosft eval`` wrote to its results JSON (``task``, ``metrics``,
            ``base_metrics``, ``forgetting``, ``lm_eval``, ``model``, ``base_model``).
        results_path: where those results were written (quoted in the card).
    """
    from huggingface_hub import ModelCard

    path = Path(model_dir) / CARD_FILE
    card = ModelCard.load(path)
    blocks = _eval_blocks(card.text)
    new_results = []
    for key, block, evals in _evaluations(results, Path(results_path)):
        # Marked, so that a later evaluation of the same key replaces the block.
        blocks[key] = f"<!-- infosft:eval {marker_key(key)} -->\n{block}\n<!-- /infosft:eval -->"
        new_results.extend(evals)
    replaced = {result.dataset_type for result in new_results}
    kept = [r for r in card.data.eval_results or [] if r.dataset_type not in replaced]
    card.data.eval_results = [*kept, *new_results] or None
    if card.data.model_name is None:
        card.data.model_name = Path(model_dir).resolve().name
    card.text = _with_eval_section(card.text, "\n\n".join(blocks.values()))
    return write_text_atomic(path, str(card))


def _evaluations(results: dict[str, Any], results_path: Path) -> list[tuple[str, str, list[Any]]]:
    """(block key, markdown block, model-index EvalResults) for each task of ``results``."""
    from huggingface_hub import EvalResult

    today = datetime.date.today().isoformat()
    source = f"`infosft eval`, {today}, results in {_inline(results_path)}"
    base = results.get("base_model")
    found = []
    task = results.get("task")
    if task is not None and "metrics" in results:
        metrics = _numbers(results["metrics"])
        base_metrics = _numbers(results.get("base_metrics") or {})
        rows = [
            [
                _inline(key),
                format_value(value, results["metrics"], key),
                format_value(base_metrics.get(key)),
            ]
            for key, value in metrics.items()
        ]
        header = ["metric", "this model", f"base model ({_inline(base)})" if base else "base model"]
        if not base_metrics:
            header, rows = header[:2], [row[:2] for row in rows]
        count = len(results.get("samples", []))
        lines = [f"### {_inline(task)}", "", f"{count} samples; {source}.", ""]
        lines.append(markdown_table(header, rows))
        forgetting = _numbers(results.get("forgetting") or {})
        if forgetting:
            lines += ["", f"Forgetting against {_inline(base)}:", ""]
            rows = [[_inline(k), format_value(v)] for k, v in forgetting.items()]
            lines.append(markdown_table(["measure", "value"], rows))
        evals = [
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=task,
                metric_type=key,
                metric_value=value,
            )
            for key, value in {**metrics, **forgetting}.items()
            if not _is_count(key)
        ]
        found.append((f"task:{task}", "\n".join(lines), evals))
    report = results.get("lm_eval")
    if report:
        found.extend(_lm_eval_evaluations(report, base, source))
    return found


def _lm_eval_evaluations(
    report: dict[str, Any], base: str | None, source: str
) -> list[tuple[str, str, list[Any]]]:
    """(block key, markdown block, model-index EvalResults) for each top-level lm-eval task."""
    from huggingface_hub import EvalResult

    from infosft.evaluation.lm_eval_tasks import top_level_tasks

    found = []
    with_base = "base_scores" in report
    for task in top_level_tasks(report):
        scores = report["scores"][task]
        metrics = {key: value for key, value in _numbers(scores).items() if "_stderr" not in key}
        rows = []
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")
            stderr = scores.get(f"{metric}_stderr{comma}{filter_name}")
            row = [_inline(key), format_value(value), format_value(stderr)]
            if with_base:
                row += [
                    format_value(report["base_scores"].get(task, {}).get(key)),
                    format_value(report["delta"].get(task, {}).get(key), signed=True),
                ]
            rows.append(row)
        header = ["metric", "this model", "stderr"]
        if with_base:
            header += [f"base model ({_inline(base)})", "change"]
        lines = [
            f"### lm-eval: {_inline(task)}",
            "",
            f"{source}.",
            "",
            markdown_table(header, rows),
        ]
        kept = report.get("retention", {}).get(task) if with_base else None
        if kept is not None and kept.get("retention") is not None:
            lines += [
                "",
                f"Retention: {kept['retention']:.1%} of the {kept['base_correct']} items the "
                "base model gets right are still right.",
            ]
        evals = [
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=task,
                metric_type=key.partition(",")[0],
                metric_name=key,
                metric_value=value,
            )
            for key, value in metrics.items()
        ]
        found.append((f"lm_eval:{task}", "\n".join(lines), evals))
    return found


# Characters a block key keeps as they are in its marker; every other byte is %XX-encoded.
_MARKER_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_BLOCK = re.compile(r"<!-- infosft:eval ([A-Za-z0-9_.:%-]+) -->\n.*?\n<!-- /infosft:eval -->", re.S)


def marker_key(key: str) -> str:
    """``key`` as it is written in an evaluation block's marker: percent-encoded UTF-8, so that
    any task name (spaces, ``-->``, newlines, headings, unicode) gives one marker that
    ``urllib.parse.unquote`` turns back into exactly ``key``."""
    return _MARKER_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), key)


def _eval_blocks(text: str) -> dict[str, str]:
    """The evaluation subsections of a card's text by key (``task:NAME``, ``lm_eval:NAME``)."""
    from urllib.parse import unquote

    start, end = text.find(EVAL_BEGIN), text.find(EVAL_END)
    inside = text[start + len(EVAL_BEGIN) : end] if 0 <= start <= end else ""
    return {unquote(match.group(1)): match.group(0) for match in _BLOCK.finditer(inside)}


def _inline(text: Any) -> str:
    """``text`` shown as itself on one line of markdown, injecting nothing: control characters
    as escapes (``\\n``), HTML's ``& < >`` as entities (no comment, marker or tag can start or
    end in it), markdown's ``\\ ` [ ] #`` backslash-escaped (no code span, link or heading)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    shown = re.sub(r"([\\`\[\]#])", r"\\\1", shown)
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def evaluation_section(body: str = "") -> str:
    """The evaluation section's content between its markers (:data:`NOT_EVALUATED` for none)."""
    return f"{EVAL_BEGIN}\n{body or NOT_EVALUATED}\n{EVAL_END}"


def _with_eval_section(text: str, body: str) -> str:
    """``text`` with the evaluation section's content replaced by ``body`` (appended as a new
    section when a hand-edited card lost the markers)."""
    section = evaluation_section(body)
    start, end = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if start < 0 or end < start:
        return text.rstrip("\n") + "\n\n## Evaluation\n\n" + section + "\n"
    return text[:start] + section + text[end + len(EVAL_END) :]


def keep_evaluation(old_card: str, new_card: str) -> str:
    """``new_card`` (a card's text) with the evaluation section and ``model-index`` of
    ``old_card``, so that a card written again keeps what ``infosft eval`` added."""
    from huggingface_hub import ModelCard

    old = ModelCard(old_card, ignore_metadata_errors=True)
    blocks = _eval_blocks(old.text)
    if not blocks:
        return new_card
    new = ModelCard(new_card)
    new.data.eval_results = old.data.eval_results
    new.text = _with_eval_section(new.text, "\n\n".join(blocks.values()))
    return str(new)


def _is_count(key: str) -> bool:
    """Whether a result is a count (of problems, samples, tokens), not a score: counts stay in
    the card's tables and out of its model-index."""
    return key.startswith("num_") or key.endswith("_tokens") or key == "base_correct"


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` that are not confidence bounds."""
    return {
        key: value
        for key, value in values.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not key.endswith(("_ci_low", "_ci_high"))
    }


def format_value(
    value: Any,
    context: dict[str, Any] | None = None,
    key: str | None = None,
    *,
    signed: bool = False,
) -> str:
    """A value for a table cell: floats to 4 significant digits, with ``key``'s confidence
    interval from ``context`` when it has one."""
    if value is None:
        return "-"
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    if context is not None and key is not None:
        low, high = context.get(f"{key}_ci_low"), context.get(f"{key}_ci_high")
        if low is not None and high is not None:
            text += f" [{low:.4g}, {high:.4g}]"
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table of ``header`` and ``rows`` (``|`` in a cell escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])
