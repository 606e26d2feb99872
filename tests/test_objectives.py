"""Weighting schemes, checked against an independent float64 formula written here."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infosft


def infosft_reference(q: float, p_bar: float = 0.93) -> float:
    """w(q) = q * max(0, 1 - logit(q) / logit(p_bar)), in plain float64."""
    if q >= 1.0:
        return 0.0
    if q <= 0.0:
        return 0.0
    c = math.log(p_bar / (1 - p_bar))
    return q * max(0.0, 1.0 - math.log(q / (1 - q)) / c)


# reference.md §1: the shape at p_bar = 0.93.
TABLE = [
    (0.01, 0.028),
    (0.1, 0.185),
    (0.3, 0.398),
    (0.5, 0.500),
    (0.568, 0.508),
    (0.8, 0.371),
    (0.9, 0.136),
    (0.93, 0.0),
    (0.97, 0.0),
]


@pytest.mark.parametrize(("q", "expected"), TABLE)
def test_infosft_weight_matches_the_papers_table(q, expected):
    w = infosft.token_weights(torch.tensor([math.log(q)]), "infosft")
    assert w.item() == pytest.approx(expected, abs=1e-3)
    assert w.item() == pytest.approx(infosft_reference(q), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize(("p_bar", "peak"), [(0.90, 0.524), (0.95, 0.604), (0.99, 0.724)])
def test_infosft_peak_moves_with_p_bar(p_bar, peak):
    q = torch.linspace(0.001, 0.999, 9981, dtype=torch.float64)
    w = infosft.token_weights(q.log(), "infosft", p_bar=p_bar)
    assert q[w.argmax()].item() == pytest.approx(peak, abs=2e-3)


def test_weight_at_one_half_is_exactly_one_half_for_any_p_bar():
    for p_bar in (0.6, 0.93, 0.999):
        w = infosft.token_weights(torch.tensor([math.log(0.5)]), p_bar=p_bar)
        assert w.item() == pytest.approx(0.5, abs=1e-6)


def test_tokens_at_or_above_p_bar_get_zero_weight():
    q = torch.tensor([0.93, 0.95, 0.999999, 1.0])
    assert torch.equal(infosft.token_weights(q.log(), p_bar=0.93), torch.zeros(4))


def test_nll_weight_is_one_and_dft_weight_is_q():
    lp = torch.tensor([-5.0, -0.7, 0.0])
    assert torch.equal(infosft.token_weights(lp, "nll"), torch.ones(3))
    torch.testing.assert_close(infosft.token_weights(lp, "dft"), lp.exp())


@pytest.mark.parametrize("method", ["nll", "dft", "infosft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_weights_are_finite_float32_for_extreme_log_probs(method, dtype):
    lp = torch.tensor([0.0, -1e-30, -1e-7, -200.0, -1e30, -math.inf, 1e-6]).to(dtype)
    w = infosft.token_weights(lp, method)
    assert w.dtype == torch.float32 and w.shape == lp.shape
    assert torch.isfinite(w).all()
    assert (w >= 0).all()


def test_infosft_extreme_values_are_the_limits():
    lp = torch.tensor([0.0, -1e-30, -200.0, -math.inf])
    assert torch.equal(infosft.token_weights(lp), torch.zeros(4))


def test_token_weights_is_detached_and_keeps_shape():
    lp = torch.randn(2, 3, 4).clamp(max=0).requires_grad_()
    w = infosft.token_weights(lp)
    assert not w.requires_grad and w.shape == (2, 3, 4)


@pytest.mark.parametrize("p_bar", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_p_bar_outside_open_unit_interval_is_rejected(p_bar):
    with pytest.raises(ValueError, match="p_bar"):
        infosft.token_weights(torch.zeros(1), "infosft", p_bar=p_bar)


def test_infosft_p_bar_at_or_below_one_half_is_rejected_with_the_reason():
    with pytest.raises(ValueError, match="logit"):
        infosft.token_weights(torch.zeros(1), "infosft", p_bar=0.5)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="nll, dft, infosft"):
        infosft.token_weights(torch.zeros(1), "focal")


def test_register_weighting_adds_a_scheme_everywhere():
    def square(log_probs, p_bar):
        return log_probs.exp() ** 2

    infosft.register_weighting("square_test", square)
    try:
        assert "square_test" in infosft.available_weightings()
        w = infosft.token_weights(torch.tensor([math.log(0.5)]), "square_test")
        assert w.item() == pytest.approx(0.25)
        logits = torch.randn(1, 3, 5)
        labels = torch.tensor([[-100, 1, 2]])
        infosft.weighted_nll_loss(logits, labels, method="square_test")
        with pytest.raises(ValueError, match="already registered"):
            infosft.register_weighting("square_test", square)
    finally:
        from infosft.objectives import _REGISTRY

        _REGISTRY.pop("square_test")


def test_a_scheme_returning_the_wrong_shape_is_reported():
    infosft.register_weighting("bad_shape_test", lambda lp, p: lp.sum())
    try:
        with pytest.raises(ValueError, match="bad_shape_test"):
            infosft.token_weights(torch.zeros(3), "bad_shape_test")
    finally:
        from infosft.objectives import _REGISTRY

        _REGISTRY.pop("bad_shape_test")


@settings(max_examples=300, deadline=None)
@given(
    q=st.floats(min_value=1e-30, max_value=1.0),
    p_bar=st.floats(min_value=0.51, max_value=0.999),
)
def test_infosft_weight_matches_float64_formula_everywhere(q, p_bar):
    w = infosft.token_weights(torch.tensor([math.log(q)], dtype=torch.float64), p_bar=p_bar)
    # Weights are float32: log q's rounding (2**-24 relative) is amplified by 1 / logit(p_bar).
    abs_tol = 1e-6 + 1e-7 / math.log(p_bar / (1 - p_bar))
    assert w.item() == pytest.approx(infosft_reference(q, p_bar), rel=1e-4, abs=abs_tol)


@settings(max_examples=200, deadline=None)
@given(lp=st.lists(st.floats(min_value=-1e6, max_value=0.0), min_size=1, max_size=50))
def test_weights_are_bounded_by_q_times_the_peak_factor(lp):
    t = torch.tensor(lp, dtype=torch.float64)
    w = infosft.token_weights(t)
    assert torch.isfinite(w).all()
    assert (w >= 0).all() and (w <= 0.51).all()
