"""When to use InfoSFT, regime by regime, from a finished full run; and whether q predicts it.

    python benchmarks/when_to_use.py --results runs/demo-full/results.json
        [--reference src/infosft/experiments/specs/regimes_reference.json] [--curve infosft]
        [--dry-run]

Reads the run's results.json (verdicts, settings) and the regime reference that
``benchmarks/regimes_reference.py --full --results ...`` wrote from the same run (the base
model's q statistics on each regime's training data, as ``infosft inspect`` measures them), and
prints the README's table: per regime the share of target tokens with q >= p_bar and with
q < 0.05, the mean InfoSFT weight, the verdict of ``--curve`` against nll on both halves (learns
more at matched retention / forgets less at matched accuracy, with intervals) and the best
InfoSFT setting.

Then it tests whether the q statistics predict the verdict across regimes:

- Spearman's rank correlation of each statistic with the matched-retention gap (curve - nll)
  and its exact two-sided permutation p-value (every ordering of the regimes). One statistic is
  the test, fixed before any result (``PRIMARY``: the share of target tokens at q < 0.05); the
  others are printed as exploration: with five regimes the smallest possible p is 2/120, so a
  correction for three would make any support impossible;
- leave-one-out nearest-neighbour: each regime's verdict label predicted from the regime
  nearest in q statistics (:func:`infosft.experiments.inspect.nearest_regime`, the rule
  ``infosft inspect`` uses), against predicting the majority label of the others.

``supported`` is true only when the primary statistic's p-value is below ``--alpha`` and the
nearest-neighbour predictions beat the majority rule. The result is stored in the reference as
``when_to_use`` (``--dry-run``: printed only); ``infosft inspect`` names the closest regime's
verdict only when it is supported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infosft.experiments.inspect import REGIME_STATISTICS, nearest_regime, regime_statistics

REFERENCE_CURVE = "nll"
# Decisions of infosft.experiments.fronts.compare that favour the compared curve / the reference.
FAVOURS_CURVE = ("learns_more", "forgets_less")
FAVOURS_REFERENCE = ("learns_less", "forgets_more")
# Exact permutation tests up to this many regimes (8! = 40320 orderings).
MAX_EXACT = 8
# The statistic tested: where InfoSFT lost, the tokens it left unlearned were those the base
# gave q < 0.05 (README, "Not smaller steps"), so their share is the hypothesis fixed in advance.
PRIMARY = "share_q_lt_low"


def halves(fronts: Mapping[str, Any], curve: str) -> dict[str, dict[str, Any]]:
    """``{"retention": verdict, "accuracy": verdict}`` of ``curve`` against the reference in one
    task's fronts summary (results.json ``fronts[task]``); ValueError when it has none."""
    found = {
        v["matched"]: v
        for v in fronts.get("verdicts", [])
        if v["curve"] == curve and v["reference"] == REFERENCE_CURVE
    }
    if set(found) != {"retention", "accuracy"}:
        raise ValueError(
            f"no verdict of {curve} against {REFERENCE_CURVE} on both halves "
            f"(has {sorted(found) or 'none'}); run both methods on this task"
        )
    return found


def favours(verdict: Mapping[str, Any], curve: str) -> str | None:
    """Which curve a verdict favours (``curve``, the reference, or None: inconclusive)."""
    decision = verdict["decision"]
    if decision == "dominates":
        return verdict["sentence"].split(" dominates ")[0]
    if decision in FAVOURS_CURVE:
        return curve
    if decision in FAVOURS_REFERENCE:
        return REFERENCE_CURVE
    return None


def verdict_label(both: Mapping[str, Mapping[str, Any]], curve: str) -> str:
    """One label for both halves: "<curve> ahead", "nll ahead", "inconclusive", or "mixed"
    (one half favours each)."""
    sides = {favours(v, curve) for v in both.values()} - {None}
    if not sides:
        return "inconclusive"
    if len(sides) > 1:
        return "mixed"
    return f"{sides.pop()} ahead"


def half_text(verdict: Mapping[str, Any]) -> str:
    """A verdict half in a table cell: its decision, gap and interval."""
    interval = verdict.get("interval")
    shown = "" if interval is None else f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
    gap = verdict.get("gap")
    value = "" if gap is None else f" {gap:+.3f}"
    return f"{verdict['decision'].replace('_', ' ')}{value}{shown}"


def best_setting(results: Mapping[str, Any], task: str, method: str = "infosft") -> dict[str, Any]:
    """The setting of ``method`` (any of its curves: p_bar variants, schedules) with the highest
    mean held-out accuracy on ``task``, with its curve's p_bar and schedule."""
    rows = [r for r in results["summary"] if r["task"] == task and r["method"] == method]
    if not rows:
        raise ValueError(f"no {method} cells on {task}")
    best = max(rows, key=lambda r: (r["accuracy"]["mean"], r["retention"]["mean"]))
    variant = next((v for v in results["spec"]["variants"] if v["name"] == best["curve"]), {})
    return {
        "curve": best["curve"],
        "p_bar": variant.get("p_bar"),
        "loss_schedule": variant.get("loss_schedule"),
        "learning_rate": best["learning_rate"],
        "epochs": best["epochs"],
        "accuracy": best["accuracy"]["mean"],
        "accuracy_std": best["accuracy"]["std"],
        "retention": best["retention"]["mean"],
    }


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of the ranks); NaN when either is constant."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def permutation_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Exact two-sided permutation p-value of Spearman's rho: the share of all orderings of
    ``y`` whose |rho| is at least the observed one (the observed ordering included)."""
    if len(x) > MAX_EXACT:
        raise ValueError(f"exact permutation test only up to {MAX_EXACT} regimes, got {len(x)}")
    observed = spearman(x, y)
    if math.isnan(observed):
        return 1.0
    orderings = list(itertools.permutations(y))
    # A relative tolerance: equal |rho| of two orderings must count as at least as extreme.
    extreme = sum(abs(spearman(x, p)) >= abs(observed) - 1e-12 for p in orderings)
    return extreme / len(orderings)


def leave_one_out(
    statistics: Mapping[str, Mapping[str, float]], labels: Mapping[str, str]
) -> dict[str, Any]:
    """Each regime's label predicted from its nearest other regime in q statistics, and from the
    majority label of the others (ties: the label first in regime order)."""
    predictions, majority = {}, {}
    for name in statistics:
        others = {k: v for k, v in statistics.items() if k != name}
        predictions[name] = labels[nearest_regime(statistics[name], others)]
        counts = Counter(labels[k] for k in others)
        majority[name] = max(counts, key=lambda label: counts[label])
    n = len(statistics)
    return {
        "predicted": predictions,
        "nearest_accuracy": sum(predictions[k] == labels[k] for k in statistics) / n,
        "majority_accuracy": sum(majority[k] == labels[k] for k in statistics) / n,
    }


def predictive_test(
    statistics: Mapping[str, Mapping[str, float]],
    gaps: Mapping[str, float | None],
    labels: Mapping[str, str],
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Whether the q statistics predict the verdict across regimes (module docstring).

    Args:
        statistics: per regime, :data:`REGIME_STATISTICS` (see ``regime_statistics``).
        gaps: per regime, the matched-retention gap curve - nll (None: the fronts did not
            overlap; left out of the correlations).
        labels: per regime, :func:`verdict_label`.
        alpha: the level of the corrected tests.
    """
    with_gap = [name for name in statistics if gaps.get(name) is not None]
    correlations = {}
    for key in REGIME_STATISTICS:
        x = [statistics[name][key] for name in with_gap]
        y = [gaps[name] for name in with_gap]
        enough = len(with_gap) >= 3
        rho = spearman(x, y) if enough else math.nan
        p = permutation_p(x, y) if enough else 1.0
        correlations[key] = {"rho": rho, "p": p}
    loo = leave_one_out(statistics, labels) if len(statistics) >= 2 else None
    correlated = correlations[PRIMARY]["p"] < alpha
    beats_majority = loo is not None and loo["nearest_accuracy"] > loo["majority_accuracy"]
    supported = len(statistics) >= 4 and correlated and beats_majority
    c = correlations[PRIMARY]
    loo_text = (
        "n/a"
        if loo is None
        else f"{loo['nearest_accuracy']:.2f} vs {loo['majority_accuracy']:.2f} for the majority"
    )
    others = ", ".join(
        f"{k} {v['rho']:+.2f} (p {v['p']:.3f})" for k, v in correlations.items() if k != PRIMARY
    )
    summary = (
        f"{len(statistics)} regimes; {PRIMARY}: Spearman rho {c['rho']:+.2f} with the "
        f"matched-retention gap over {len(with_gap)} regimes, permutation p {c['p']:.3f}; "
        f"leave-one-out nearest regime predicts the verdict label {loo_text}; exploratory: "
        f"{others}"
    )
    return {
        "supported": supported,
        "alpha": alpha,
        "primary": PRIMARY,
        "correlations": correlations,
        "leave_one_out": loo,
        "summary": summary,
    }


def regime_rows(
    results: Mapping[str, Any], reference: Mapping[str, Any], curve: str = "infosft"
) -> dict[str, dict[str, Any]]:
    """Per regime (a task of the run that the reference describes): its q statistics, both
    verdict halves, their label and the best InfoSFT setting."""
    rows = {}
    for task, fronts in results["fronts"].items():
        described = reference.get("tasks", {}).get(task)
        if described is None or "error" in fronts:
            continue
        both = halves(fronts, curve)
        rows[task] = {
            "about": described.get("regime", ""),
            "statistics": regime_statistics(described),
            "learns": {k: both["retention"].get(k) for k in ("decision", "gap", "interval")},
            "forgets": {k: both["accuracy"].get(k) for k in ("decision", "gap", "interval")},
            "learns_text": half_text(both["retention"]),
            "forgets_text": half_text(both["accuracy"]),
            "label": verdict_label(both, curve),
            "best_infosft": best_setting(results, task),
        }
    return rows


def setting_text(best: Mapping[str, Any]) -> str:
    schedule = " after nll" if best["loss_schedule"] else ""
    p_bar = "" if best["p_bar"] is None else f", p_bar {best['p_bar']:g}"
    epochs = "" if best["epochs"] is None else f", {best['epochs']:g} ep"
    return (
        f"{best['curve']}{schedule}{p_bar}, lr {best['learning_rate']:g}{epochs}: "
        f"{best['accuracy']:.2f} ± {best['accuracy_std']:.2f} acc, {best['retention']:.2f} ret"
    )


def table(rows: Mapping[str, Mapping[str, Any]], curve: str) -> str:
    """The README's table as markdown."""
    lines = [
        f"| regime | q >= p_bar | q < 0.05 | mean InfoSFT weight | {curve} vs nll: learns "
        "(matched retention) | forgets (matched accuracy) | verdict | best InfoSFT setting |",
        "|:---|---:|---:|---:|:---|:---|:---|:---|",
    ]
    for name, row in rows.items():
        s = row["statistics"]
        lines.append(
            f"| {name} | {s['share_q_ge_p_bar']:.2f} | {s['share_q_lt_low']:.2f} | "
            f"{s['mean_infosft_weight']:.3f} | {row['learns_text']} | {row['forgets_text']} | "
            f"{row['label']} | {setting_text(row['best_infosft'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True, help="a finished full run's results.json")
    parser.add_argument("--reference", help="default: the packaged regimes_reference.json")
    parser.add_argument("--curve", default="infosft", help="the curve judged against nll")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--dry-run", action="store_true", help="print; do not store the test")
    args = parser.parse_args()

    from infosft.experiments.inspect import REGIMES_REFERENCE
    from infosft.files import write_json_atomic

    results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    reference_path = Path(args.reference) if args.reference else REGIMES_REFERENCE
    reference = json.loads(reference_path.read_text(encoding="utf-8"))
    rows = regime_rows(results, reference, args.curve)
    if not rows:
        raise SystemExit(
            f"no task of {args.results} is described in {reference_path}; write the reference "
            "from the same run first (benchmarks/regimes_reference.py --full --results ...)"
        )
    test = predictive_test(
        {k: r["statistics"] for k, r in rows.items()},
        {k: r["learns"]["gap"] for k, r in rows.items()},
        {k: r["label"] for k, r in rows.items()},
        args.alpha,
    )
    print(table(rows, args.curve))
    print(f"\nq statistics predict the verdict: {test['supported']} ({test['summary']})")
    test = {
        **test,
        "curve": args.curve,
        "results": args.results,
        "regimes": {k: {"label": r["label"], **r["statistics"]} for k, r in rows.items()},
    }
    if not args.dry_run:
        write_json_atomic(reference_path, {**reference, "when_to_use": test})
        print(f"stored as when_to_use in {reference_path}")


if __name__ == "__main__":
    main()
