"""Reports: markdown tables and text, written as ``report.md`` and a standalone ``report.html``.

The markdown is the single source: the HTML is rendered from it (markdown-it, which ships with
rich) and every local PNG it links is embedded as a base64 data URI, so the HTML file can be
mailed or opened anywhere on its own. Results files are written atomically.
"""

from __future__ import annotations

import base64
import html
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

# write_json_atomic is re-exported for callers that still import it from here.
from infosft.files import write_json_atomic, write_text_atomic  # noqa: F401

_IMAGE_SRC = re.compile(r'<img src="([^"]+)"')
_HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 60rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code, pre { background: #f5f5f5; border-radius: 3px; }
pre { padding: 0.6rem; overflow-x: auto; }
img { max-width: 100%; }
"""


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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (first column left-aligned, the rest right-aligned)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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
        return f'<img src="{_data_uri(path)}"'

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
