"""Fronts of accuracy vs retention and the matched-retention verdict, on hand-computed cases."""

import math

import numpy as np
import pytest

from infosft.experiments import fronts
from infosft.experiments.fronts import CellOutcome, Point


def point(retention, accuracy, curve="x", setting=None):
    return Point(curve, setting or f"{retention}/{accuracy}", retention, accuracy, 1)


def bits(n_correct, n, offset=0):
    """n booleans with n_correct True, rotated by offset (so patterns differ between cells)."""
    return np.roll(np.arange(n) < n_correct, offset)


def cell(curve, setting, task_correct, retention_correct, seed=0):
    return CellOutcome(
        curve, setting, seed, np.asarray(task_correct), np.asarray(retention_correct)
    )


def test_front_keeps_points_no_other_point_beats_on_both_axes_by_increasing_retention():
    ps = [point(0.9, 0.1), point(0.8, 0.3), point(0.7, 0.2), point(0.6, 0.5)]
    assert [(p.retention, p.accuracy) for p in fronts.front(ps)] == [
        (0.6, 0.5),
        (0.8, 0.3),
        (0.9, 0.1),
    ]


def test_front_drops_ties_and_points_beaten_at_equal_retention():
    ps = [point(0.8, 0.3, setting="a"), point(0.8, 0.3, setting="b"), point(0.8, 0.1)]
    assert [(p.retention, p.accuracy) for p in fronts.front(ps)] == [(0.8, 0.3)]


def test_front_of_a_single_point_is_that_point():
    assert fronts.front([point(0.5, 0.0)]) == [point(0.5, 0.0)]


def test_attainable_accuracy_is_the_best_among_points_retaining_at_least_the_level():
    retention, accuracy = np.array([0.6, 0.8, 0.9]), np.array([0.5, 0.4, 0.3])
    assert fronts.attainable(retention, accuracy, 0.7) == 0.4
    assert fronts.attainable(retention, accuracy, 0.6) == 0.5
    assert math.isnan(fronts.attainable(retention, accuracy, 0.95))


def test_matched_gap_is_the_mean_staircase_difference_over_the_shared_matched_range():
    # X: (0.6, .5) (0.8, .4) (0.9, .3); Y: (0.7, .35) (0.85, .2) (1.0, .1). Shared [0.7, 0.9]:
    # (0.7, 0.8]: .4 - .2; (0.8, 0.85]: .3 - .2; (0.85, 0.9]: .3 - .1  -> 0.035 / 0.2 = 0.175.
    gap, low, high = fronts.matched_gap(
        np.array([0.6, 0.8, 0.9]),
        np.array([0.5, 0.4, 0.3]),
        np.array([0.7, 0.85, 1.0]),
        np.array([0.35, 0.2, 0.1]),
    )
    assert (low, high) == (0.7, 0.9)
    assert gap == pytest.approx(0.175, abs=1e-12)


def test_matched_gap_at_one_shared_retention_level_is_the_difference_there():
    gap, low, high = fronts.matched_gap(
        np.array([0.8]), np.array([0.3]), np.array([0.8]), np.array([0.1])
    )
    assert (gap, low, high) == (pytest.approx(0.2), 0.8, 0.8)


def test_matched_gap_is_none_when_the_matched_ranges_do_not_overlap():
    assert (
        fronts.matched_gap(
            np.array([0.9, 0.95]), np.array([0.1, 0.0]), np.array([0.5]), np.array([0.4])
        )
        is None
    )


def test_points_average_the_seeds_of_a_setting():
    cells = [
        cell("nll", "lr=1e-4", bits(2, 10), bits(4, 4), seed=0),
        cell("nll", "lr=1e-4", bits(4, 10), bits(2, 4), seed=1),
    ]
    (p,) = fronts.points(cells)
    assert (p.accuracy, p.retention, p.seeds) == (pytest.approx(0.3), pytest.approx(0.75), 2)


def test_cells_must_answer_the_same_items():
    cells = [cell("a", "s", bits(1, 10), bits(1, 4)), cell("b", "s", bits(1, 9), bits(1, 4))]
    with pytest.raises(ValueError, match="same items"):
        fronts.points(cells)


def test_a_curve_that_learns_more_at_the_same_retention_wins_with_an_interval_above_zero():
    retained = bits(90, 100)
    cells = [
        cell("infosft", "lr=1", bits(120, 200), retained),
        cell("nll", "lr=1", bits(40, 200, offset=100), retained),
    ]
    result = fronts.compare(cells, "infosft", "nll", resamples=500)
    assert result.decision == "learns_more"
    assert result.gap == pytest.approx(0.4)
    assert 0 < result.interval[0] < 0.4 < result.interval[1]
    assert result.sentence.startswith("at matched retention (retention 0.90), infosft learns more")


def test_the_loser_is_named_when_the_reference_learns_more():
    retained = bits(90, 100)
    cells = [
        cell("dft", "lr=1", bits(0, 200), retained),
        cell("nll", "lr=1", bits(80, 200), retained),
    ]
    result = fronts.compare(cells, "dft", "nll", resamples=300)
    assert result.decision == "learns_less"
    assert "nll learns more than dft by 0.400" in result.sentence


def test_the_bootstrap_is_paired_identical_cells_give_a_zero_width_interval():
    task, kept = bits(30, 100, offset=7), bits(50, 60)
    cells = [cell("a", "lr=1", task, kept), cell("b", "lr=1", task, kept)]
    result = fronts.compare(cells, "a", "b", resamples=300)
    assert result.gap == 0.0
    assert result.interval == (0.0, 0.0)
    assert result.decision == "inconclusive"
    assert "interval includes 0" in result.sentence


def test_two_curves_that_learn_nothing_are_inconclusive_not_a_win():
    kept = bits(50, 60)
    cells = [
        cell("infosft", "lr=1", bits(0, 100), kept),
        cell("nll", "lr=1", bits(0, 100), bits(40, 60)),
        cell("nll", "lr=2", bits(0, 100), bits(55, 60)),
    ]
    result = fronts.compare(cells, "infosft", "nll", resamples=300)
    assert result.gap == 0.0
    assert result.decision == "inconclusive"


def test_interval_width_matches_the_normal_approximation_of_a_paired_difference():
    rng = np.random.default_rng(1)
    x, y = rng.random(400) < 0.6, rng.random(400) < 0.4
    kept = bits(80, 100)
    cells = [cell("a", "s", x, kept), cell("b", "s", y, kept)]
    result = fronts.compare(cells, "a", "b", resamples=4000)
    d = x.astype(np.float64) - y.astype(np.float64)
    half = 1.959964 * d.std() / math.sqrt(d.size)
    low, high = result.interval
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(d.mean(), abs=0.01)


def test_a_small_sample_difference_is_inconclusive_at_this_size():
    kept = bits(18, 20)
    cells = [cell("a", "s", bits(6, 20), kept), cell("b", "s", bits(4, 20, offset=10), kept)]
    result = fronts.compare(cells, "a", "b", resamples=1000)
    assert result.decision == "inconclusive"
    assert result.sentence.startswith("inconclusive at this size")


def test_disjoint_fronts_where_the_right_one_also_learns_more_is_dominance():
    cells = [
        cell("infosft", "lr=1", bits(100, 200), bits(95, 100)),
        cell("nll", "lr=1", bits(20, 200, offset=50), bits(60, 100)),
    ]
    result = fronts.compare(cells, "infosft", "nll", resamples=300)
    assert result.matched_range is None and result.gap is None
    assert result.decision == "dominates"
    assert result.sentence.startswith("infosft dominates nll")


def test_disjoint_fronts_that_trade_off_are_inconclusive_and_ask_for_a_wider_sweep():
    cells = [
        cell("infosft", "lr=1", bits(20, 200), bits(95, 100)),
        cell("nll", "lr=1", bits(100, 200, offset=50), bits(60, 100)),
    ]
    result = fronts.compare(cells, "infosft", "nll", resamples=300)
    assert result.decision == "inconclusive"
    assert "do not overlap in retention" in result.sentence
    assert "widen the learning-rate sweep" in result.sentence


def test_compare_all_compares_every_other_curve_with_the_reference():
    kept = bits(9, 10)
    cells = [
        cell("nll", "s", bits(5, 50), kept),
        cell("dft", "s", bits(5, 50), kept),
        cell("infosft", "s", bits(5, 50), kept),
    ]
    halves = [(c.curve, c.matched) for c in fronts.compare_all(cells, resamples=50)]
    assert halves == [
        ("dft", "retention"),
        ("dft", "accuracy"),
        ("infosft", "retention"),
        ("infosft", "accuracy"),
    ]
    with pytest.raises(ValueError, match="reference curve 'sft'"):
        fronts.compare_all(cells, reference="sft")


def test_records_become_cells_with_retention_on_the_probes_the_base_got_right():
    base = {"probe-0": True, "probe-1": False, "probe-2": True}
    records = [
        {
            "task": "t",
            "method": "nll",
            "learning_rate": 1e-4,
            "seed": 0,
            "task_correct": {"t-1": True, "t-0": False},
            "probe_correct": {"probe-0": False, "probe-1": True, "probe-2": True},
        }
    ]
    (c,) = fronts.cells_from_records(records, base)
    assert (c.curve, c.setting) == ("nll", "learning_rate=0.0001")
    assert c.task_correct.tolist() == [False, True]  # ids sorted: t-0, t-1
    assert c.retention_correct.tolist() == [False, True]  # probe-0, probe-2


def test_records_without_any_base_correct_probe_are_rejected():
    record = {"method": "nll", "seed": 0, "task_correct": {"a": True}, "probe_correct": {"p": True}}
    with pytest.raises(ValueError, match="retention is undefined"):
        fronts.cells_from_records([record], {"p": False})


def test_bands_are_nan_above_the_retention_a_curve_reaches():
    cells = [cell("nll", "s", bits(5, 50), bits(7, 10))]
    band = fronts.front_bands(cells, [0.5, 0.99], resamples=200)["nll"]
    assert band["low"][0] <= 0.1 <= band["high"][0]
    assert math.isnan(band["low"][1]) and math.isnan(band["high"][1])


def test_a_curve_that_keeps_more_at_the_same_accuracy_forgets_less_with_an_interval():
    learned = bits(100, 200)
    cells = [
        cell("infosft", "lr=1", learned, bits(90, 100)),
        cell("nll", "lr=1", learned, bits(60, 100, offset=50)),
    ]
    result = fronts.compare(cells, "infosft", "nll", matched="accuracy", resamples=500)
    assert result.decision == "forgets_less"
    assert result.matched_range == (0.5, 0.5)
    assert result.gap == pytest.approx(0.3)
    assert 0 < result.interval[0] < 0.3 < result.interval[1]
    assert result.sentence.startswith(
        "at matched accuracy (accuracy 0.50), infosft keeps more than nll by 0.300 retention"
    )


def test_the_forgetting_half_is_the_staircase_gap_with_the_axes_swapped():
    # infosft (accuracy, retention): (0.3, 0.9) (0.5, 0.8); nll: (0.4, 0.7) (0.6, 0.5).
    # Shared accuracy [0.4, 0.5]: R_infosft = 0.8 and R_nll = 0.5 on (0.4, 0.5] -> gap 0.3.
    cells = [
        cell("infosft", "lr=1", bits(30, 100), bits(90, 100)),
        cell("infosft", "lr=2", bits(50, 100), bits(80, 100)),
        cell("nll", "lr=1", bits(40, 100, offset=3), bits(70, 100, offset=5)),
        cell("nll", "lr=2", bits(60, 100, offset=3), bits(50, 100, offset=5)),
    ]
    result = fronts.compare(cells, "infosft", "nll", matched="accuracy", resamples=200)
    assert result.matched_range == (0.4, 0.5)
    assert result.gap == pytest.approx(0.3, abs=1e-12)


def test_a_point_past_every_reference_setting_is_said_in_words_with_its_numbers():
    # The reference's most-retaining setting keeps 0.811 at accuracy 0.500; the curve keeps
    # 0.847 at 0.525: no matched retention level exists, yet the curve reaches further.
    cells = [
        cell("sft-then-infosft", "lr=3e-5", bits(105, 200), bits(847, 1000)),
        cell("nll", "lr=3e-5", bits(100, 200, offset=7), bits(811, 1000, offset=11)),
        cell("nll", "lr=1e-4", bits(140, 200, offset=7), bits(600, 1000, offset=11)),
    ]
    learning, forgetting = (
        fronts.compare(cells, "sft-then-infosft", "nll", matched=m, resamples=300)
        for m in ("retention", "accuracy")
    )
    said = (
        "sft-then-infosft keeps more than any nll setting: retention 0.847 vs 0.811 at accuracy "
        "0.525 vs 0.500"
    )
    assert learning.matched_range is None
    assert forgetting.beyond and forgetting.beyond[0].startswith(said)
    assert said in forgetting.sentence
    # The other way round, nll is more accurate than any sft-then-infosft setting.
    assert learning.beyond[0].startswith(
        "nll learns more than any sft-then-infosft setting: accuracy 0.700 vs 0.525"
    )


def test_a_curve_reaching_no_further_gets_no_sentence_about_it():
    kept = bits(9, 10)
    cells = [cell("nll", "s", bits(5, 50), kept), cell("infosft", "s", bits(5, 50), kept)]
    for matched in ("retention", "accuracy"):
        assert fronts.compare(cells, "infosft", "nll", matched=matched, resamples=50).beyond == ()


def test_an_unknown_matched_axis_is_refused():
    kept = bits(9, 10)
    cells = [cell("nll", "s", bits(5, 50), kept), cell("infosft", "s", bits(5, 50), kept)]
    with pytest.raises(ValueError, match="matched must be one of"):
        fronts.compare(cells, "infosft", "nll", matched="loss")


def test_summary_is_json_ready_and_carries_both_halves_per_other_curve():
    import json

    kept = bits(9, 10)
    cells = [cell("nll", "s", bits(5, 50), kept), cell("infosft", "s", bits(9, 50), kept)]
    summary = fronts.fronts_summary(cells, resamples=100)
    json.dumps(summary)
    assert [(v["curve"], v["matched"]) for v in summary["verdicts"]] == [
        ("infosft", "retention"),
        ("infosft", "accuracy"),
    ]
    assert set(summary["fronts"]) == {"nll", "infosft"}


def test_the_fronts_plot_shows_the_summarys_points_fronts_and_verdicts(tmp_path, monkeypatch):
    from infosft.experiments import plots

    kept = bits(9, 10)
    cells = [
        cell("nll", "a", bits(5, 50), kept),
        cell("nll", "b", bits(9, 50), bits(6, 10)),
        cell("infosft", "a", bits(0, 50), kept),
    ]
    summary = fronts.fronts_summary(cells, resamples=50)
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    path = plots.plot_fronts(summary, tmp_path / "f.png", title="t", base_accuracy=0.3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = drawn[0].axes
    staircases = {line.get_label(): line for line in ax.get_lines()}
    assert set(staircases) == {"nll", "infosft"}
    dots = sorted(tuple(xy) for c in ax.collections for xy in c.get_offsets().tolist())
    for curve, front in summary["fronts"].items():
        mine = [p for p in summary["points"] if p["curve"] == curve]
        # The staircase starts at the curve's least-retaining setting, at its best accuracy.
        lowest = min(p["retention"] for p in mine)
        line = staircases[curve]
        assert line.get_drawstyle() == "steps-pre"
        assert list(line.get_xdata()) == [lowest] + [p["retention"] for p in front]
        assert list(line.get_ydata()) == [front[0]["accuracy"]] + [p["accuracy"] for p in front]
        for p in mine + front:
            assert (p["retention"], p["accuracy"]) in dots
    assert (1.0, 0.3) in dots
    text = "".join(t.get_text() for t in ax.texts).replace("\n", " ")
    for verdict in summary["verdicts"]:
        assert verdict["sentence"] in text
