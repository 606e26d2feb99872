"""PNG plots of the experiments: fronts with bootstrap bands, q histogram with weight curves,
weight mass per q bin and its shift with p_bar.

Each function takes plain numbers (no models) and writes one PNG, so the plots can be redrawn
from ``results.json`` alone. Matplotlib runs headless (Agg backend).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infosft.objectives import token_weights

# One colour per method everywhere, so a reader matches plots at a glance.
METHOD_COLORS = {
    "base": "#555555",
    "nll": "#1f77b4",
    "dft": "#ff7f0e",
    "infosft": "#2ca02c",
    "eaft": "#d62728",
    "talr": "#9467bd",
    "memft": "#8c564b",
    "dft_mix": "#e377c2",
    "power": "#17becf",
}
_FALLBACK_COLORS = (
    "#bcbd22",
    "#7f7f7f",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#9edae5",
    "#dbdb8d",
)
LEGEND_OUTSIDE = 5
"""Above this many curves a legend goes beside the axes, where it covers no point."""


def method_color(method: str, index: int = 0) -> str:
    """The colour of a method's marks; unknown methods cycle through a fixed palette."""
    return METHOD_COLORS.get(method, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_q_histogram(
    q_values: Sequence[float],
    path: str | Path,
    *,
    methods: Sequence[str],
    p_bar: float,
    title: str,
    bins: int = 20,
) -> Path:
    """Histogram of target-token probabilities q with each method's w(q) overlaid.

    Bars (left axis) are the share of target tokens per q bin; curves (right axis) are the
    weights from :func:`infosft.objectives.token_weights`, the one definition of each scheme.
    """
    import torch

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    n = max(len(q_values), 1)
    ax.hist(
        list(q_values),
        bins=bins,
        range=(0.0, 1.0),
        weights=[1.0 / n] * len(q_values),
        color="#bbbbbb",
        edgecolor="white",
        label="target tokens",
    )
    ax.set_xlabel("q = probability of the target token under the model")
    ax.set_ylabel("share of target tokens")
    ax.set_xlim(0.0, 1.0)
    curve_axis = ax.twinx()
    grid = torch.linspace(1e-4, 1.0, 400, dtype=torch.float64)
    for index, method in enumerate(methods):
        weights = token_weights(grid.log(), method, p_bar)
        curve_axis.plot(
            grid.tolist(),
            weights.tolist(),
            color=method_color(method, index),
            linewidth=2,
            label=f"w(q): {method}",
        )
    curve_axis.set_ylabel("token weight w(q)")
    curve_axis.set_ylim(0.0, 1.05)
    curve_axis.axvline(p_bar, color="#2ca02c", linestyle=":", linewidth=1)
    bars, bar_labels = ax.get_legend_handles_labels()
    curves, curve_labels = curve_axis.get_legend_handles_labels()
    curve_axis.legend(bars + curves, bar_labels + curve_labels, loc="upper center", fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def plot_weight_mass(
    bin_edges: Sequence[float],
    token_share: Sequence[float],
    mass_share: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Grouped bars per q bin: the share of tokens and each method's share of total weight.

    A method's bar above the grey token bar means that bin gets more than its share of the
    gradient signal under that weighting.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.6))
    n_bins = len(token_share)
    series = [("tokens", token_share), *mass_share.items()]
    width = 0.8 / len(series)
    for offset, (name, values) in enumerate(series):
        color = "#bbbbbb" if name == "tokens" else method_color(name, offset)
        ax.bar(
            [i + (offset - (len(series) - 1) / 2) * width for i in range(n_bins)],
            values,
            width=width,
            color=color,
            label="share of tokens" if name == "tokens" else name,
        )
    labels = [f"{bin_edges[i]:.2g}-{bin_edges[i + 1]:.2g}" for i in range(n_bins)]
    ax.set_xticks(range(n_bins))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("q bin")
    ax.set_ylabel("share of total weight")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_mass_vs_p_bar(
    p_bars: Sequence[float],
    mass_by_bin: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Stacked areas: how InfoSFT's weight mass splits over q ranges as p_bar changes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    ax.stackplot(
        list(p_bars), *[list(v) for v in mass_by_bin.values()], labels=list(mass_by_bin), alpha=0.85
    )
    ax.set_xlabel("p_bar")
    ax.set_ylabel("share of InfoSFT's total weight")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.legend(title="q range", fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_fronts(
    summary: Mapping[str, Any],
    path: str | Path,
    *,
    title: str,
    x_label: str = "retention: share of base-correct probes still correct",
    y_label: str = "new-task accuracy (held-out)",
    base_accuracy: float | None = None,
) -> Path:
    """Each curve's front of accuracy vs retention as a staircase, with its bootstrap band.

    ``summary`` is :func:`infosft.experiments.fronts.fronts_summary` (or the same dict read back
    from results.json): every setting is a faint dot, the front is the staircase A(r) (the best
    accuracy among settings retaining at least r) through its points, the shaded band is the
    pointwise bootstrap interval of A(r), and the verdict sentences are printed underneath.
    """
    plt = _pyplot()
    verdicts = [textwrap.fill(v["sentence"], 120) for v in summary.get("verdicts", [])]
    lines = sum(v.count("\n") + 1 for v in verdicts)
    curves = list(summary["fronts"])
    outside = len(curves) > LEGEND_OUTSIDE
    fig, ax = plt.subplots(figsize=(9.4 if outside else 7.6, 5.0 + 0.15 * lines))
    # Variants (a method under another name: infosft-p0.8, sft-then-infosft, ...) draw dashed in
    # palette colours numbered among themselves, so no two of them share a colour up to ten.
    variants = [curve for curve in curves if curve not in METHOD_COLORS]
    for curve in curves:
        color = method_color(curve, variants.index(curve) if curve in variants else 0)
        mine = [p for p in summary["points"] if p["curve"] == curve]
        ax.scatter(
            [p["retention"] for p in mine], [p["accuracy"] for p in mine], color=color, alpha=0.35
        )
        steps = summary["fronts"][curve]
        # A(r) holds y_i on (r_{i-1}, r_i] (matplotlib's "pre" steps draw exactly that) and the
        # best accuracy y_0 below r_0: drawn from the curve's least-retaining setting on.
        lowest = min(p["retention"] for p in mine)
        ax.step(
            [lowest] + [p["retention"] for p in steps],
            [steps[0]["accuracy"]] + [p["accuracy"] for p in steps],
            where="pre",
            color=color,
            linewidth=2,
            linestyle="--" if curve in variants else "-",
            label=curve,
        )
        ax.scatter([p["retention"] for p in steps], [p["accuracy"] for p in steps], color=color)
        band = summary.get("bands", {}).get(curve)
        if band:
            ax.fill_between(
                band["level"],
                [math.nan if v is None else v for v in band["low"]],
                [math.nan if v is None else v for v in band["high"]],
                step="pre",
                color=color,
                alpha=0.15,
                linewidth=0,
            )
    if base_accuracy is not None:
        ax.scatter([1.0], [base_accuracy], color=method_color("base"), marker="s", label="base")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        ax.legend(loc="best", fontsize=8)
    if verdicts:
        # Below the x label, inside the axes' artists so that tight_layout makes room for it.
        ax.text(0.0, -0.13, "\n".join(verdicts), transform=ax.transAxes, va="top", fontsize=7)
    return _save(fig, path)
