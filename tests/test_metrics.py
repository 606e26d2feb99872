"""pass@k, Wilson and bootstrap intervals, checked against independent float64 references."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from infosft.evaluation.metrics import bootstrap_interval, pass_at_k, summarize, wilson_interval


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) with exact integers."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c of them correct) that contain a correct one."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(8, 0, 1), (8, 3, 1), (8, 3, 4), (8, 7, 2), (6, 6, 3)])
def test_pass_at_k_is_the_chance_that_a_random_k_subset_has_a_correct_sample(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_for_large_n():
    for n, c, k in [(200, 13, 1), (200, 13, 10), (200, 13, 100), (1000, 1, 500)]:
        assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_exact(n, c, k), rel=1e-10)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 4, 1) == pytest.approx(0.4)


def test_pass_at_k_rejects_k_larger_than_n():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 8)


def wilson_reference(successes: int, total: int, z: float) -> tuple[float, float]:
    """Roots in p of (p_hat - p)^2 = z^2 p (1 - p) / n, solved as a quadratic in float64."""
    p_hat = successes / total
    a = 1 + z * z / total
    b = -(2 * p_hat + z * z / total)
    c = p_hat * p_hat
    roots = np.roots(np.array([a, b, c], dtype=np.float64))
    return float(min(roots.real)), float(max(roots.real))


@pytest.mark.parametrize(("successes", "total"), [(8, 10), (1, 164), (50, 100), (163, 164)])
def test_wilson_interval_solves_the_score_equation(successes, total):
    z = 1.959963984540054  # 97.5% normal quantile
    low, high = wilson_interval(successes, total, 0.95)
    ref_low, ref_high = wilson_reference(successes, total, z)
    assert low == pytest.approx(ref_low, abs=1e-9)
    assert high == pytest.approx(ref_high, abs=1e-9)


def test_wilson_interval_at_zero_successes_starts_at_zero():
    low, high = wilson_interval(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert 0.1 < high < 0.2  # (z^2/n) / (1 + z^2/n) = 0.161


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [float(i % 3 == 0) for i in range(100)]
    first = bootstrap_interval(values, seed=1)
    assert first == bootstrap_interval(values, seed=1)
    assert first[0] < np.mean(values) < first[1]


def test_bootstrap_interval_width_is_close_to_the_normal_approximation():
    values = [float(i % 4 == 0) for i in range(400)]
    low, high = bootstrap_interval(values, resamples=4000, seed=0)
    sd = np.std(values) / math.sqrt(len(values))
    assert high - low == pytest.approx(2 * 1.96 * sd, rel=0.15)


def test_summarize_reports_acc_at_1_and_pass_at_k_over_problems():
    correct = [[True, False, False, False], [False, False, False, False], [True, True, True, True]]
    metrics = summarize(correct, ks=(1, 2, 4, 8), greedy=True)
    assert metrics["num_problems"] == 3
    assert metrics["acc@1"] == pytest.approx(2 / 3)
    expected_pass_2 = np.mean([pass_at_k_exact(4, c, 2) for c in (1, 0, 4)])
    assert metrics["pass@2"] == pytest.approx(expected_pass_2)
    assert metrics["pass@4"] == pytest.approx(2 / 3)
    assert "pass@8" not in metrics  # k > n is skipped
    assert metrics["acc@1_ci_low"] < metrics["acc@1"] < metrics["acc@1_ci_high"]
