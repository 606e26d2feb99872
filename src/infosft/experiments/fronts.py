"""Trade-off fronts of new-task accuracy against retention, and a verdict with intervals.

Pure functions over measured cells (no models). A *cell* is one fine-tune: a curve (usually
the method), a setting on it (learning rate, epochs, ...), a seed, and which held-out problems
and which retention items it answered correctly. From the cells:

- a **point** per (curve, setting): accuracy and retention averaged over its seeds (a seed is
  not a setting: taking the best seed would favour the curve with more seeds or more noise);
- the **front** of a curve: its points that no other point of the curve beats on both axes,
  read as the *attainable accuracy* ``A(r)`` = the best accuracy among the curve's points with
  retention >= r (a staircase; nothing is interpolated between settings that were not run);
- **matched retention** between curves X and Y: the retention range both sweeps cover,
  ``[max(min r_X, min r_Y), min(max r_X, max r_Y)]``; the **gap** is the mean of
  ``A_X(r) - A_Y(r)`` over that range (the area between the staircases divided by its width;
  at a single shared retention level, the difference there);
- **intervals** by a paired bootstrap: every resample draws held-out problems and retention
  items with replacement once and applies the same draw to every cell (all cells answer the
  same items), and draws seeds with replacement within each setting; fronts, range and gap are
  recomputed per resample and the percentile interval is taken over the resamples whose fronts
  overlap.

The verdict is "X learns more" (or less) only when the interval excludes 0 and the fronts
overlap in at least ``confidence`` of the resamples; otherwise it is inconclusive at this size.

That is half of "learn more and forget less". The other half swaps the axes: **matched
accuracy** is the accuracy range both sweeps cover, ``R(a)`` the best retention among a curve's
points with accuracy >= a, and the gap the mean of ``R_X(a) - R_Y(a)`` there ("X forgets less",
or more), with the same paired bootstrap. Each half also says in words when one curve reaches
a region the other never does (it keeps more, or learns more, than any setting of the other),
which no matched range can show, with the share of resamples in which that holds.

Per-cell record the experiment engine stores (results.json), one per fine-tune::

    {"task": "arith_chain", "method": "infosft", "learning_rate": 1e-4, "epochs": 1, "seed": 0,
     ...,                                          # any other knob: p_bar, loss_schedule, ...
     "task_correct": {"arith_chain-0": true, ...},  # every held-out problem id -> correct
     "probe_correct": {"probe-0": false, ...}}      # every retention probe id -> correct

and once per task the base model's ``probe_correct`` (retention is measured on the probes the
base answers correctly). :func:`cells_from_records` turns those records into cells.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
# Record keys that identify a cell rather than its setting.
_NOT_SETTING_KEYS = {"task", "method", "seed", "task_correct", "probe_correct", "curve"}
_SETTING_KEYS = ("learning_rate", "epochs", "num_train_epochs", "max_steps", "p_bar")


def exact_number(value: float) -> str:
    """``value`` as short text that reads back as exactly ``value`` (``%g`` where that is exact,
    else the shortest round-trip form), so two different numbers never share a label or a file
    name: 1e-4 is ``0.0001``, 1.000001e-4 is ``0.0001000001``."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True)
class CellOutcome:
    """What one measured fine-tune (a grid's :class:`~infosft.experiments.grid.Cell`) scored.

    ``task_correct`` [n_task] and ``retention_correct`` [n_retention] are bool arrays aligned
    with the task's held-out problems and retention items (the same order in every cell).
    """

    curve: str
    setting: str
    seed: int
    task_correct: np.ndarray
    retention_correct: np.ndarray


@dataclass(frozen=True)
class Point:
    """A setting of a curve: accuracy and retention averaged over its ``seeds`` cells."""

    curve: str
    setting: str
    retention: float
    accuracy: float
    seeds: int


@dataclass(frozen=True)
class Comparison:
    """``curve`` against ``reference`` at a matched level of one axis, with a bootstrap interval.

    ``matched`` names the axis held equal: "retention" (the learning half: ``gap`` is the mean
    over the shared retention range ``matched_range`` of A_curve(r) - A_reference(r), accuracy
    points, positive when ``curve`` learns more) or "accuracy" (the forgetting half:
    ``matched_range`` is the shared accuracy range and ``gap`` the mean of
    R_curve(a) - R_reference(a), retention points, positive when ``curve`` forgets less).
    ``gap`` and ``matched_range`` are None when the fronts do not overlap on that axis.
    ``decision`` is one of "learns_more", "learns_less", "forgets_less", "forgets_more",
    "dominates", "inconclusive". ``beyond`` holds a sentence per curve that reaches past every
    setting of the other on the compared axis (already part of ``sentence``).
    """

    curve: str
    reference: str
    matched_range: tuple[float, float] | None
    gap: float | None
    interval: tuple[float, float] | None
    overlap_share: float
    decision: str
    sentence: str
    confidence: float = DEFAULT_CONFIDENCE
    details: dict[str, Any] = field(default_factory=dict)
    matched: str = "retention"
    beyond: tuple[str, ...] = ()


# Per matched axis: (axis read as the level, axis compared at it, the word for a positive gap,
# for a negative one, and how the compared quantity is phrased).
_HALVES = {
    "retention": ("retention", "accuracy", "learns_more", "learns_less", "learns more than"),
    "accuracy": ("accuracy", "retention", "forgets_less", "forgets_more", "keeps more than"),
}


def default_curve(record: Mapping[str, Any]) -> str:
    """The front a record belongs to: its ``curve`` field when the engine set one, else its
    method (a p_bar sweep or a loss schedule should name its own curve)."""
    return str(record.get("curve") or record["method"])


def default_setting(record: Mapping[str, Any]) -> str:
    """The point a record belongs to: its learning rate, epochs, ... (everything but the seed)."""
    parts = [f"{key}={exact_number(record[key])}" for key in _SETTING_KEYS if key in record]
    if not parts:
        others = sorted(k for k in record if k not in _NOT_SETTING_KEYS)
        parts = [f"{k}={record[k]}" for k in others if isinstance(record[k], int | float | str)]
    return ", ".join(parts) or "default"


def cells_from_records(
    records: Sequence[Mapping[str, Any]],
    base_probe_correct: Mapping[str, bool],
    *,
    curve: Callable[[Mapping[str, Any]], str] = default_curve,
    setting: Callable[[Mapping[str, Any]], str] = default_setting,
) -> list[CellOutcome]:
    """Cells of one task from the engine's per-cell records (format in the module docstring).

    Retention items are the probes the base answered correctly. Raises ValueError when the base
    got no probe right (retention is undefined) or when records cover different items.
    """
    if not records:
        raise ValueError("no cell records to build fronts from")
    retention_ids = sorted(pid for pid, ok in base_probe_correct.items() if ok)
    if not retention_ids:
        raise ValueError("the base model answered no probe correctly; retention is undefined")
    task_ids = sorted(records[0]["task_correct"])
    cells = []
    for record in records:
        name = f"{record.get('task', '?')}/{curve(record)}/{setting(record)}/seed {record['seed']}"
        if sorted(record["task_correct"]) != task_ids:
            raise ValueError(f"cell {name} was scored on other held-out problems than the first")
        missing = set(retention_ids) - set(record["probe_correct"])
        if missing:
            raise ValueError(f"cell {name} lacks probes {sorted(missing)[:3]}")
        cells.append(
            CellOutcome(
                curve=curve(record),
                setting=setting(record),
                seed=int(record["seed"]),
                task_correct=np.array([bool(record["task_correct"][i]) for i in task_ids]),
                retention_correct=np.array(
                    [bool(record["probe_correct"][i]) for i in retention_ids]
                ),
            )
        )
    return cells


def _group(cells: Sequence[CellOutcome]) -> dict[tuple[str, str], list[CellOutcome]]:
    if not cells:
        raise ValueError("no cells")
    n_task, n_ret = cells[0].task_correct.shape, cells[0].retention_correct.shape
    groups: dict[tuple[str, str], list[CellOutcome]] = {}
    for cell in cells:
        if cell.task_correct.shape != n_task or cell.retention_correct.shape != n_ret:
            raise ValueError(
                f"cell {cell.curve}/{cell.setting}/seed {cell.seed} has {cell.task_correct.size} "
                f"problems and {cell.retention_correct.size} retention items; the first cell has "
                f"{n_task[0]} and {n_ret[0]}: every cell must answer the same items"
            )
        if n_ret[0] == 0:
            raise ValueError("no retention items: retention is undefined")
        groups.setdefault((cell.curve, cell.setting), []).append(cell)
    return groups


def points(cells: Sequence[CellOutcome]) -> list[Point]:
    """One point per (curve, setting), seeds averaged, in first-seen order."""
    return [
        Point(
            curve=curve,
            setting=setting,
            retention=float(np.mean([c.retention_correct.mean() for c in members])),
            accuracy=float(np.mean([c.task_correct.mean() for c in members])),
            seeds=len(members),
        )
        for (curve, setting), members in _group(cells).items()
    ]


def front(curve_points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (ties kept once), by increasing retention.

    Along the returned list retention rises and accuracy falls: the upper-right envelope.
    """
    ordered = sorted(curve_points, key=lambda p: (-p.retention, -p.accuracy))
    kept: list[Point] = []
    for p in ordered:
        # Scanning from the highest retention down, a point is on the front when it is more
        # accurate than everything that retains at least as much.
        if not kept or p.accuracy > kept[-1].accuracy:
            kept.append(p)
    return kept[::-1]


def attainable(retention: np.ndarray, accuracy: np.ndarray, level: float) -> float:
    """A(level): the best accuracy among points with retention >= level; NaN when none."""
    reached = accuracy[retention >= level]
    return float(reached.max()) if reached.size else math.nan


def matched_gap(
    x_retention: np.ndarray,
    x_accuracy: np.ndarray,
    y_retention: np.ndarray,
    y_accuracy: np.ndarray,
) -> tuple[float, float, float] | None:
    """(gap, low, high): the mean of A_X(r) - A_Y(r) over the matched range [low, high].

    Exact for the staircases: A is constant on (b_{j-1}, b_j] between consecutive retention
    values b_j, where it equals A(b_j). None when the ranges do not overlap.
    """

    def difference(r: float) -> float:
        return attainable(x_retention, x_accuracy, r) - attainable(y_retention, y_accuracy, r)

    low = max(x_retention.min(), y_retention.min())
    high = min(x_retention.max(), y_retention.max())
    if low > high:
        return None
    if low == high:
        return difference(low), float(low), float(high)
    inner = np.concatenate([x_retention, y_retention])
    breaks = np.unique(np.concatenate([[low, high], inner[(inner > low) & (inner < high)]]))
    area = 0.0
    for left, right in itertools.pairwise(breaks):
        area += (right - left) * difference(right)
    return area / (high - low), float(low), float(high)


@dataclass
class _Resamples:
    """Bootstrap replicates of every point: ``retention``/``accuracy`` [B, n_points]."""

    keys: list[tuple[str, str]]
    retention: np.ndarray
    accuracy: np.ndarray


def _resample_points(cells: Sequence[CellOutcome], resamples: int, seed: int) -> _Resamples:
    groups = _group(cells)
    rng = np.random.default_rng(seed)
    n_task = cells[0].task_correct.size
    n_ret = cells[0].retention_correct.size
    # One draw of items per resample, shared by every cell: the comparison is paired.
    task_weights = rng.multinomial(n_task, np.full(n_task, 1 / n_task), size=resamples)
    ret_weights = rng.multinomial(n_ret, np.full(n_ret, 1 / n_ret), size=resamples)
    keys = list(groups)
    retention = np.empty((resamples, len(keys)))
    accuracy = np.empty((resamples, len(keys)))
    for column, key in enumerate(keys):
        members = groups[key]
        # Per seed and resample: [B, n_seeds].
        acc = task_weights @ np.stack([c.task_correct for c in members]).T.astype(float) / n_task
        ret = ret_weights @ np.stack([c.retention_correct for c in members]).T.astype(float) / n_ret
        drawn = rng.integers(0, len(members), size=(resamples, len(members)))
        rows = np.arange(resamples)[:, None]
        accuracy[:, column] = acc[rows, drawn].mean(axis=1)
        retention[:, column] = ret[rows, drawn].mean(axis=1)
    return _Resamples(keys, retention, accuracy)


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def compare(
    cells: Sequence[CellOutcome],
    curve: str,
    reference: str,
    *,
    matched: str = "retention",
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """``curve`` against ``reference`` with a paired bootstrap interval: at matched retention
    (``matched="retention"``, does it learn more?) or at matched accuracy
    (``matched="accuracy"``, does it forget less?)."""
    if matched not in _HALVES:
        raise ValueError(f"matched must be one of {sorted(_HALVES)}, got {matched!r}")
    level_axis, value_axis, more, less, verb = _HALVES[matched]
    estimate = points(cells)
    mine = [p for p in estimate if p.curve == curve]
    theirs = [p for p in estimate if p.curve == reference]
    both = ((curve, mine), (reference, theirs))
    for name, found in both:
        if not found:
            available = sorted({p.curve for p in estimate})
            raise ValueError(f"no cells for curve {name!r}; the cells have {available}")

    def arrays(ps: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.array([getattr(p, level_axis) for p in ps]),
            np.array([getattr(p, value_axis) for p in ps]),
        )

    observed = matched_gap(*arrays(mine), *arrays(theirs))
    boot = _resample_points(cells, resamples, seed)
    levels, values = getattr(boot, level_axis), getattr(boot, value_axis)
    x_cols = [i for i, k in enumerate(boot.keys) if k[0] == curve]
    y_cols = [i for i, k in enumerate(boot.keys) if k[0] == reference]
    gaps = []
    for b in range(resamples):
        result = matched_gap(
            levels[b, x_cols], values[b, x_cols], levels[b, y_cols], values[b, y_cols]
        )
        if result is not None:
            gaps.append(result[0])
    overlap_share = len(gaps) / resamples
    beyond = _beyond(mine, theirs, boot, x_cols, y_cols, value_axis, level_axis, verb)
    details = {
        axis: {name: _span(ps, axis) for name, ps in both} for axis in ("retention", "accuracy")
    }
    for axis in ("accuracy", "retention"):
        details[f"best_{axis}"] = {name: span[1] for name, span in details[axis].items()}
    if observed is None:
        gap, matched_range, overlap_share = None, None, 0.0
        interval, decision, sentence, details = _without_overlap(
            curve, reference, mine, theirs, boot, x_cols, y_cols, confidence, details, matched
        )
    else:
        gap, low, high = observed
        matched_range = (low, high)
        interval = _percentile_interval(np.array(gaps), confidence) if gaps else None
        decisive = (
            interval is not None
            and overlap_share >= confidence
            and (interval[0] > 0 or interval[1] < 0)
        )
        where = f"at matched {level_axis} ({_range(low, high, level_axis)})"
        if decisive:
            decision = more if gap > 0 else less
            winner, loser = (curve, reference) if gap > 0 else (reference, curve)
            lo, hi = (interval[0], interval[1]) if gap > 0 else (-interval[1], -interval[0])
            unit = "" if matched == "retention" else " retention"
            sentence = (
                f"{where}, {winner} {verb} {loser} by {abs(gap):.3f}{unit} "
                f"({confidence:.0%} interval {lo:.3f} to {hi:.3f})"
            )
        else:
            decision = "inconclusive"
            reason = (
                f"the fronts overlap in only {overlap_share:.0%} of resamples"
                if overlap_share < confidence
                else "the interval includes 0"
            )
            shown = "n/a" if interval is None else f"{interval[0]:+.3f} to {interval[1]:+.3f}"
            sentence = (
                f"inconclusive at this size: {where}, {value_axis} {curve} − {reference} = "
                f"{gap:+.3f} ({confidence:.0%} interval {shown}; {reason})"
            )
    return Comparison(
        curve=curve,
        reference=reference,
        matched_range=matched_range,
        gap=gap,
        interval=interval,
        overlap_share=overlap_share,
        decision=decision,
        sentence="; ".join([sentence, *beyond]),
        confidence=confidence,
        details=details,
        matched=matched,
        beyond=tuple(beyond),
    )


def _beyond(
    mine: Sequence[Point],
    theirs: Sequence[Point],
    boot: _Resamples,
    x_cols: list[int],
    y_cols: list[int],
    axis: str,
    other: str,
    verb: str,
) -> list[str]:
    """A sentence for each curve whose best ``axis`` value exceeds every point of the other's,
    naming its point past them (the best on ``other`` among those) against the other's best,
    and the share of resamples in which the curve still reaches further."""
    sentences = []
    for (ps, cols), (qs, q_cols) in (
        ((mine, x_cols), (theirs, y_cols)),
        ((theirs, y_cols), (mine, x_cols)),
    ):
        their_best = max(qs, key=lambda p: (getattr(p, axis), getattr(p, other)))
        past = [p for p in ps if getattr(p, axis) > getattr(their_best, axis)]
        if not past:
            continue
        best = max(past, key=lambda p: (getattr(p, other), getattr(p, axis)))
        drawn = getattr(boot, axis)
        share = float(np.mean(drawn[:, cols].max(axis=1) > drawn[:, q_cols].max(axis=1)))
        sentences.append(
            f"{best.curve} {verb} any {their_best.curve} setting: {axis} "
            f"{getattr(best, axis):.3f} vs {getattr(their_best, axis):.3f} at {other} "
            f"{getattr(best, other):.3f} vs {getattr(their_best, other):.3f} "
            f"(further in {share:.0%} of resamples)"
        )
    return sentences


def _without_overlap(
    curve: str,
    reference: str,
    mine: Sequence[Point],
    theirs: Sequence[Point],
    boot: _Resamples,
    x_cols: list[int],
    y_cols: list[int],
    confidence: float,
    details: dict[str, Any],
    matched: str,
) -> tuple[tuple[float, float], str, str, dict[str, Any]]:
    """Every point of one curve lies past every point of the other on the matched axis: no
    matched level. The interval, decision and sentence, and ``details`` with the difference of
    the bests.

    The curve further along the matched axis *dominates* when it is also better at its best on
    the other axis (interval of the difference of bests above 0); otherwise the sweeps trade
    off and the verdict is inconclusive until they are widened to overlap.
    """
    level_axis, value_axis = _HALVES[matched][:2]
    right, left = (
        (curve, reference)
        if getattr(mine[0], level_axis) > getattr(theirs[0], level_axis)
        else (reference, curve)
    )
    r_cols, l_cols = (x_cols, y_cols) if right == curve else (y_cols, x_cols)
    drawn = getattr(boot, value_axis)
    best = drawn[:, r_cols].max(axis=1) - drawn[:, l_cols].max(axis=1)
    interval = _percentile_interval(best, confidence)
    bests = details[f"best_{value_axis}"]
    diff = bests[right] - bests[left]
    spans = details[level_axis]
    where = (
        f"{right} {_range(*spans[right], level_axis)}, {left} {_range(*spans[left], level_axis)}"
    )
    more = "retains more" if level_axis == "retention" else "is more accurate"
    if interval[0] > 0:
        decision = "dominates"
        sentence = (
            f"{right} dominates {left}: every {right} cell {more} ({where}) and its best "
            f"{value_axis} is higher by {diff:.3f} ({confidence:.0%} interval {interval[0]:.3f} "
            f"to {interval[1]:.3f})"
        )
    else:
        decision = "inconclusive"
        sentence = (
            f"inconclusive at this size: the fronts do not overlap in {level_axis} ({where}); "
            f"best {value_axis} {right} − {left} = {diff:+.3f} ({confidence:.0%} interval "
            f"{interval[0]:+.3f} to {interval[1]:+.3f}); widen the learning-rate sweep so they do"
        )
    difference = {"right": right, "value": diff}
    return interval, decision, sentence, {**details, f"best_{value_axis}_difference": difference}


def compare_all(
    cells: Sequence[CellOutcome],
    reference: str = "nll",
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> list[Comparison]:
    """Every other curve against ``reference`` (plain SFT by default), in first-seen order,
    each twice: at matched retention (learns more?) then at matched accuracy (forgets less?)."""
    curves = list(dict.fromkeys(c.curve for c in cells))
    if reference not in curves:
        raise ValueError(f"reference curve {reference!r} has no cells; the cells have {curves}")
    return [
        compare(
            cells,
            curve,
            reference,
            matched=matched,
            resamples=resamples,
            confidence=confidence,
            seed=seed,
        )
        for curve in curves
        if curve != reference
        for matched in _HALVES
    ]


def front_bands(
    cells: Sequence[CellOutcome],
    levels: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, dict[str, list[float]]]:
    """Pointwise bootstrap interval of each curve's A(r) at the retention ``levels``.

    Returns ``{curve: {"level", "low", "high"}}`` (lists, NaN where fewer than half of the
    resamples have a point retaining that much), for drawing a band around each front.
    """
    boot = _resample_points(cells, resamples, seed)
    bands = {}
    for curve in dict.fromkeys(k[0] for k in boot.keys):
        cols = [i for i, k in enumerate(boot.keys) if k[0] == curve]
        drawn = list(zip(boot.retention[:, cols], boot.accuracy[:, cols], strict=True))
        intervals = []
        for level in levels:
            values = np.array([attainable(ret, acc, level) for ret, acc in drawn])
            values = values[~np.isnan(values)]
            too_few = values.size < resamples / 2
            intervals.append(
                (math.nan, math.nan) if too_few else _percentile_interval(values, confidence)
            )
        bands[curve] = {
            "level": [float(x) for x in levels],
            "low": [low for low, _ in intervals],
            "high": [high for _, high in intervals],
        }
    return bands


def fronts_summary(
    cells: Sequence[CellOutcome],
    reference: str = "nll",
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything a report needs about one task, JSON-ready: points, fronts, bands, verdicts.

    ``verdicts`` is empty when there is no reference curve to compare against.
    """
    estimate = points(cells)
    curves = list(dict.fromkeys(p.curve for p in estimate))
    low = min(p.retention for p in estimate)
    levels = np.linspace(low, 1.0, 41).tolist()
    comparisons = (
        compare_all(cells, reference, resamples=resamples, confidence=confidence, seed=seed)
        if reference in curves and len(curves) > 1
        else []
    )
    return {
        "points": [vars(p) for p in estimate],
        "fronts": {
            c: [vars(p) for p in front([p for p in estimate if p.curve == c])] for c in curves
        },
        "bands": front_bands(cells, levels, resamples=resamples, confidence=confidence, seed=seed),
        "verdicts": [
            {
                "curve": c.curve,
                "reference": c.reference,
                "matched": c.matched,
                "matched_range": c.matched_range,
                "gap": c.gap,
                "interval": c.interval,
                "overlap_share": c.overlap_share,
                "decision": c.decision,
                "sentence": c.sentence,
                "beyond": list(c.beyond),
            }
            for c in comparisons
        ],
        "resamples": resamples,
        "confidence": confidence,
    }


def _span(ps: Sequence[Point], axis: str) -> tuple[float, float]:
    return (min(getattr(p, axis) for p in ps), max(getattr(p, axis) for p in ps))


def _range(low: float, high: float, axis: str) -> str:
    return f"{axis} {low:.2f}" if low == high else f"{axis} {low:.2f}–{high:.2f}"
