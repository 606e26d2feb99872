"""benchmarks/when_to_use.py: the README's regime table from a finished run, and the test of
whether the base model's q statistics predict the verdict, on synthetic results."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "when_to_use.py"


@pytest.fixture
def wtu(monkeypatch):
    spec = importlib.util.spec_from_file_location("when_to_use", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "when_to_use", module)
    spec.loader.exec_module(module)
    return module


def verdict(matched, decision, gap=None, interval=(-0.1, 0.1), curve="infosft", sentence=""):
    return {
        "curve": curve,
        "reference": "nll",
        "matched": matched,
        "decision": decision,
        "gap": gap,
        "interval": list(interval),
        "sentence": sentence,
    }


def stats(ge, low, weight):
    return {"share_q_ge_p_bar": ge, "share_q_lt_low": low, "mean_infosft_weight": weight}


def test_spearman_matches_the_textbook_formula_without_ties(wtu):
    # 1 - 6 sum d^2 / (n (n^2 - 1)) with d = (-1, 1, -1, 1, 0): 1 - 24 / 120
    assert wtu.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert wtu.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_tied_values_share_their_mean_rank(wtu):
    assert wtu._ranks([0.3, 0.1, 0.3, 0.2]) == [3.5, 1.0, 3.5, 2.0]


def test_a_perfect_ordering_of_five_regimes_has_permutation_p_two_in_120(wtu):
    # Only the observed ordering and its reverse reach |rho| = 1 among 5! orderings.
    assert wtu.permutation_p([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(2 / 120)
    assert wtu.permutation_p([1, 2, 3, 4, 5], [50, 40, 30, 20, 10]) == pytest.approx(2 / 120)


def test_a_constant_statistic_predicts_nothing(wtu):
    assert wtu.permutation_p([1, 1, 1, 1], [1, 2, 3, 4]) == 1.0


def test_labels_join_both_halves_of_the_verdict(wtu):
    def both(learns, forgets):
        return {"retention": verdict("retention", learns), "accuracy": verdict("accuracy", forgets)}

    assert wtu.verdict_label(both("learns_more", "inconclusive"), "infosft") == "infosft ahead"
    assert wtu.verdict_label(both("inconclusive", "forgets_more"), "infosft") == "nll ahead"
    assert wtu.verdict_label(both("inconclusive", "inconclusive"), "infosft") == "inconclusive"
    assert wtu.verdict_label(both("learns_less", "forgets_less"), "infosft") == "mixed"
    dominated = {
        "retention": verdict("retention", "dominates", sentence="nll dominates infosft: ..."),
        "accuracy": verdict("accuracy", "inconclusive"),
    }
    assert wtu.verdict_label(dominated, "infosft") == "nll ahead"


REGIMES = ["a", "b", "c", "d", "e"]


def test_q_statistics_that_order_the_gaps_and_group_the_labels_are_supported(wtu):
    # Along one line at 0, 1, 3, 6, 7: the middle regime's nearest (b) is labelled otherwise,
    # so 4 of 5 are right; the majority of the others is never the regime's own label.
    place = dict(zip(REGIMES, [0, 1, 3, 6, 7], strict=True))
    statistics = {n: stats(0.1 * x, 0.2 - 0.02 * x, 0.05 * x) for n, x in place.items()}
    gaps = {n: -0.4 + 0.1 * x for n, x in place.items()}
    labels = dict(
        zip(REGIMES, ["nll ahead"] * 2 + ["inconclusive"] + ["infosft ahead"] * 2, strict=True)
    )
    test = wtu.predictive_test(statistics, gaps, labels)
    assert test["supported"] is True
    assert test["correlations"]["share_q_lt_low"]["rho"] == pytest.approx(-1.0)
    assert test["correlations"]["share_q_lt_low"]["p"] == pytest.approx(2 / 120)
    assert test["leave_one_out"]["nearest_accuracy"] == pytest.approx(0.8)
    assert test["leave_one_out"]["majority_accuracy"] == 0.0


def test_only_the_primary_statistic_can_support_a_prediction(wtu):
    # share q >= p_bar orders the gaps perfectly, the primary share q < 0.05 does not.
    statistics = {
        n: stats(0.1 * i, [0.3, 0.1, 0.5, 0.2, 0.4][i], 0.1) for i, n in enumerate(REGIMES)
    }
    gaps = {n: 0.1 * i for i, n in enumerate(REGIMES)}
    labels = dict(zip(REGIMES, ["x", "x", "y", "y", "y"], strict=True))
    test = wtu.predictive_test(statistics, gaps, labels)
    assert test["correlations"]["share_q_ge_p_bar"]["rho"] == pytest.approx(1.0)
    assert test["supported"] is False


def test_q_statistics_unrelated_to_the_verdict_are_not_supported(wtu):
    statistics = {n: stats(0.1, 0.1 * i, 0.1) for i, n in enumerate(REGIMES)}
    gaps = dict(zip(REGIMES, [0.1, -0.3, 0.2, -0.2, 0.0], strict=True))
    labels = dict(zip(REGIMES, ["x", "y", "x", "y", "x"], strict=True))
    test = wtu.predictive_test(statistics, gaps, labels)
    assert test["supported"] is False
    assert "permutation p" in test["summary"]


def test_three_regimes_never_support_a_prediction(wtu):
    statistics = {n: stats(0.1 * i, 0.1, 0.1 * i) for i, n in enumerate(REGIMES[:3])}
    gaps = {n: 0.1 * i for i, n in enumerate(REGIMES[:3])}
    labels = dict(zip(REGIMES[:3], ["x", "y", "z"], strict=True))
    assert wtu.predictive_test(statistics, gaps, labels)["supported"] is False


def summary_row(task, curve, method, lr, accuracy, retention, epochs=1):
    return {
        "task": task,
        "curve": curve,
        "method": method,
        "learning_rate": lr,
        "epochs": epochs,
        "accuracy": {"mean": accuracy, "std": 0.01},
        "retention": {"mean": retention, "std": 0.0},
    }


def results_of(tasks):
    return {
        "spec": {
            "variants": [
                {"name": "nll", "p_bar": None, "loss_schedule": None},
                {"name": "infosft", "p_bar": None, "loss_schedule": None},
                {
                    "name": "sft-then-infosft",
                    "p_bar": None,
                    "loss_schedule": [
                        {"method": "nll", "until_epoch": 0.25},
                        {"method": "infosft"},
                    ],
                },
            ]
        },
        "summary": [
            row
            for i, task in enumerate(tasks)
            for row in (
                summary_row(task, "nll", "nll", 1e-4, 0.5, 0.8),
                summary_row(task, "infosft", "infosft", 1e-4, 0.2 + 0.1 * i, 0.8),
                summary_row(task, "sft-then-infosft", "infosft", 3e-5, 0.45, 0.9, epochs=4),
            )
        ],
        "fronts": {
            task: {
                "verdicts": [
                    verdict("retention", "learns_less", gap=-0.3 + 0.1 * i, interval=(-0.4, -0.2)),
                    verdict("accuracy", "inconclusive", gap=0.01),
                ]
            }
            for i, task in enumerate(tasks)
        },
    }


def reference_of(tasks):
    return {
        "tasks": {
            task: {
                "regime": f"regime {task}",
                "share_q_ge_p_bar": 0.1 * i,
                "share_q_lt_low": 0.1,
                "mean_weight": {"infosft": 0.1 + 0.01 * i},
            }
            for i, task in enumerate(tasks)
        }
    }


def test_each_regime_gets_its_statistics_verdict_and_best_infosft_setting(wtu):
    rows = wtu.regime_rows(results_of(["a", "b"]), reference_of(["a", "b"]))
    assert rows["a"]["statistics"] == stats(0.0, 0.1, 0.1)
    assert rows["a"]["label"] == "nll ahead"
    assert rows["a"]["learns"]["gap"] == pytest.approx(-0.3)
    # a: the schedule's 0.45 beats plain infosft's 0.2; b: plain infosft's 0.3 does not either
    assert rows["a"]["best_infosft"]["curve"] == "sft-then-infosft"
    assert rows["a"]["best_infosft"]["epochs"] == 4
    table = wtu.table(rows, "infosft")
    assert "| a | 0.00 | 0.10 | 0.100 | learns less -0.300 [-0.400, -0.200] |" in table
    assert "sft-then-infosft after nll, lr 3e-05, 4 ep: 0.45 ± 0.01 acc, 0.90 ret" in table


def test_a_regime_without_both_verdict_halves_is_refused_by_name(wtu):
    fronts = {"verdicts": [verdict("retention", "learns_less")]}
    with pytest.raises(ValueError, match=r"both halves \(has \['retention'\]\)"):
        wtu.halves(fronts, "infosft")


def test_the_command_stores_the_test_in_the_reference(wtu, tmp_path, monkeypatch, capsys):
    tasks = ["a", "b", "c", "d"]
    (tmp_path / "results.json").write_text(json.dumps(results_of(tasks)))
    (tmp_path / "reference.json").write_text(json.dumps(reference_of(tasks)))
    argv = ["when_to_use.py", "--results", str(tmp_path / "results.json")]
    monkeypatch.setattr(sys, "argv", [*argv, "--reference", str(tmp_path / "reference.json")])
    wtu.main()
    stored = json.loads((tmp_path / "reference.json").read_text())
    assert set(stored["tasks"]) == set(tasks)
    test = stored["when_to_use"]
    assert test["curve"] == "infosft" and set(test["regimes"]) == set(tasks)
    assert test["regimes"]["a"]["label"] == "nll ahead"
    assert isinstance(test["supported"], bool)
    assert "q statistics predict the verdict" in capsys.readouterr().out
