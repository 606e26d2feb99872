"""Reports: the grid report as ``report.md`` and a standalone ``report.html``, and its text form.

The markdown is the single source: the HTML is rendered from it (markdown-it, which ships with
rich) and every local PNG it links is embedded as a base64 data URI, so the HTML file can be
mailed or opened anywhere on its own. The grid report puts each task's verdict first, then what
the run can resolve, the fronts, a table of every setting (and of every cell with several
seeds), the definitions and the run configuration.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infosft.experiments import plots
from infosft.experiments.fronts import exact_number
from infosft.experiments.summary import (
    METRICS,
    format_mean_std,
    resolution,
    run_length,
    setting_label,
)
from infosft.files import write_text_atomic

_IMAGE_SRC = re.compile(r'<img src="([^"]+)"')
_HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 64rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code, pre { background: #f5f5f5; border-radius: 3px; }
pre { padding: 0.6rem; overflow-x: auto; }
img { max-width: 100%; }
"""


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (first column left-aligned, the rest right-aligned)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table aligned in columns, for the terminal."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def markdown_to_html(markdown: str, title: str, base_dir: str | Path) -> str:
    """A standalone HTML page of ``markdown``; local images (relative to ``base_dir``) inlined.

    Raises FileNotFoundError naming an image the markdown links but which does not exist.
    """
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    base_dir = Path(base_dir)

    def inline(match: re.Match) -> str:
        source = html.unescape(match.group(1))
        if source.startswith(("data:", "http://", "https://")):
            return match.group(0)
        path = base_dir / source
        if not path.is_file():
            raise FileNotFoundError(f"the report links image {source}, but {path} does not exist")
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:image/png;base64,{encoded}"'

    body = _IMAGE_SRC.sub(inline, body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )


def write_report(markdown: str, output_dir: str | Path, title: str) -> tuple[Path, Path]:
    """Write ``report.md`` and the standalone ``report.html`` into ``output_dir``.

    Image links in ``markdown`` are relative to ``output_dir``. Returns both paths.
    """
    output_dir = Path(output_dir)
    md_path = write_text_atomic(output_dir / "report.md", markdown)
    html_path = write_text_atomic(
        output_dir / "report.html", markdown_to_html(markdown, title, output_dir)
    )
    return md_path, html_path


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def setting_table(results: Mapping[str, Any], task: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one task's settings (mean ± std over seeds), the base first."""
    headers = ["method", "lr", "length", "seeds", *[header for _, header, _ in METRICS]]
    accuracy = _number(results["base"]["new_tasks"][task]["accuracy"])
    rows = [["base (no fine-tuning)", "–", "–", "–", accuracy, "1", "0", "0", "–"]]
    rows += [
        [
            row["curve"],
            exact_number(row["learning_rate"]),
            run_length(row),
            str(len(row["seeds"])),
            *[format_mean_std(row[key]["values"], digits) for key, _, digits in METRICS],
        ]
        for row in results["summary"]
        if row["task"] == task
    ]
    return headers, rows


def cell_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of every cell (every seed)."""
    headers = ["task", "method", "lr", "length", "seed", *[header for _, header, _ in METRICS]]
    rows = [
        [
            c["task"],
            c["curve"],
            exact_number(c["learning_rate"]),
            run_length(c),
            str(c["seed"]),
            *[_number(c.get(key), digits) for key, _, digits in METRICS],
        ]
        for c in results["cells"]
    ]
    return headers, rows


def verdict_lines(results: Mapping[str, Any], task: str) -> list[str]:
    """The task's verdict sentences (each method against the reference), or why there is none."""
    summary = results["fronts"].get(task, {})
    if "error" in summary:
        return [f"no fronts: {summary['error']}"]
    if not summary.get("verdicts"):
        return ["one method only: nothing to compare"]
    return [v["sentence"] for v in summary["verdicts"]]


def _regime(results: Mapping[str, Any], task: str) -> str:
    """Where the task sits under the base model, from the measured numbers."""
    base = results["base"]
    accuracy = base["new_tasks"][task]["accuracy"]
    text = f"base accuracy {_number(accuracy)}"
    q = base.get("q_under_base", {}).get(task)
    if q:
        # Older base.json and results.json files name the low-q share by its bound.
        low = q.get("share_q_lt_low", q.get("share_q_lt_0.05"))
        text += (
            f"; training targets under the base: median q {q['median_q']:.2f}, "
            f"{q['share_q_ge_p_bar']:.0%} with q >= 0.93 (InfoSFT weight 0), "
            f"{low:.0%} with q < 0.05"
        )
    return text


def write_fronts_plots(results: Mapping[str, Any], output_dir: Path) -> dict[str, Path]:
    """One fronts plot per task that has fronts."""
    figures = {}
    for task, summary in results["fronts"].items():
        if "error" in summary:
            continue
        figures[task] = plots.plot_fronts(
            summary,
            output_dir / f"fronts-{task}.png",
            title=f"{task}: each method's front over the learning-rate sweep",
            x_label="retention: share of base-correct prior items still correct",
            y_label=f"{task} accuracy (held-out)",
            base_accuracy=results["base"]["new_tasks"][task]["accuracy"],
        )
    return figures


def grid_markdown(results: Mapping[str, Any], figures: Mapping[str, Path]) -> str:
    """The report: verdicts first, then resolution, fronts, tables, definitions, config."""
    spec, base = results["spec"], results["base"]
    tasks = list(base["new_tasks"])
    methods = ", ".join(f"`{v['name']}`" for v in spec["variants"])
    lrs = ", ".join(exact_number(lr) for lr in spec["learning_rates"])
    timing = results["timing"]
    parts = [
        f"# {results['title']}",
        f"Model `{spec['model']}` fine-tuned on {len(tasks)} task(s) with {methods} at learning "
        f"rates {lrs}, {len(spec['seeds'])} seed(s): {len(results['cells'])} cells "
        f"({timing['cells_run']} run now, {timing['cells_reused']} from an earlier run or "
        "another job), "
        f"{timing['total_seconds'] / 60:.1f} min ({timing['compute_seconds'] / 60:.1f} min of "
        "training and measuring over all cells). Every cell is measured on new-task accuracy, "
        "retention of prior capabilities and KL(base ‖ tuned); each method's front is the "
        "upper-right envelope of its cells in (retention, accuracy).",
    ]
    missing = results.get("missing_cells", [])
    if missing:
        total = len(missing) + len(results["cells"])
        parts.append(
            f"**Incomplete: {len(missing)} of {total} cells are missing** (not finished yet, "
            f"e.g. `{missing[0]}`); every number below is over the finished cells only."
        )
    parts.append("## Verdicts")
    for task in tasks:
        about = next((t["about"] for t in spec["tasks"] if t["name"] == task), "")
        reference = results["fronts"].get(task, {}).get("reference", "nll")
        parts.append(f"**{task}**{f' ({about})' if about else ''}: {_regime(results, task)}.")
        parts.append(
            "\n".join(f"- {line}" for line in verdict_lines(results, task))
            + f"\n\n(Each method against `{reference}`; intervals from a paired bootstrap over "
            "items and seeds.)"
        )
    parts.append("## What this run can resolve")
    parts.append("\n".join(f"- {line}" for line in resolution(results)))
    if figures:
        parts.append("## Fronts")
        parts.append(
            "Every setting is a faint dot; the staircase is the method's front (the best "
            "accuracy among its settings that retain at least that much), the band its 95% "
            "bootstrap interval; the grey square is the base model."
        )
        parts += [f"![{task} fronts]({path.name})" for task, path in figures.items()]
    parts.append("## Every setting")
    for task in tasks:
        parts.append(f"**{task}**" + (" (mean ± std over seeds)" if len(spec["seeds"]) > 1 else ""))
        parts.append(markdown_table(*setting_table(results, task)))
    if len(spec["seeds"]) > 1:
        parts.append("## Every cell")
        parts.append(markdown_table(*cell_table(results)))
    priors = ", ".join(f"`{p}`" for p in spec["prior_tasks"])
    parts.append("## What is measured")
    parts.append(
        "- **new-task accuracy**: the share of the task's held-out items answered correctly "
        "(greedy, first completion; built-in tasks check the final number).\n"
        f"- **retention**: of the {base['retention_items']} prior-capability items ({priors}) "
        "the base model answers correctly, the share the tuned model still answers correctly.\n"
        "- **KL(base ‖ tuned)**: mean per-token KL over the vocabulary on the base model's own "
        f"samples for {len(base['general_samples'])} general prompts "
        "(0 = unchanged).\n"
        f"- **general NLL change**: nats per token of plain text, tuned minus base "
        f"(base {base['general_nll']:.3f}).\n"
        "- **training s**: wall time of the fine-tune alone."
    )
    parts.append("## Example answers (first held-out item)")
    examples = []
    for task in tasks:
        shown = base["new_tasks"][task]["examples"][:1]
        examples += [f"- {task}, **base**: `{text!r}`" for text in shown]
        seen = set()
        for cell in results["cells"]:
            if cell["task"] == task and cell["curve"] not in seen and cell.get("examples"):
                seen.add(cell["curve"])
                examples.append(
                    f"- {task}, **{cell['curve']}** ({setting_text(cell)}): "
                    f"`{cell['examples'][0]!r}`"
                )
    parts.append("\n".join(examples) or "(none)")
    parts.append("## Run configuration")
    config = {"spec": spec, "environment": results["environment"]}
    parts.append(f"```json\n{json.dumps(config, indent=2, default=str)}\n```")
    return "\n\n".join(parts) + "\n"


def setting_text(cell: Mapping[str, Any]) -> str:
    return f"{setting_label(cell)}, seed {cell['seed']}"


def write_grid_report(results: Mapping[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """The fronts plots, report.md and report.html of a grid's results."""
    output_dir = Path(output_dir)
    figures = write_fronts_plots(results, output_dir)
    return write_report(grid_markdown(results, figures), output_dir, results["title"])


def text_summary(results: Mapping[str, Any]) -> str:
    """Verdicts and the settings table per task, for the terminal."""
    lines = []
    for task in results["base"]["new_tasks"]:
        lines.append(f"{task} ({_regime(results, task)})")
        lines += [f"  verdict: {line}" for line in verdict_lines(results, task)]
        lines.append(plain_table(*setting_table(results, task)))
        lines.append("")
    return "\n".join(lines)
