"""Weighting schemes, checked against an independent float64 formula written here."""

import math
import re
import warnings

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


# The paper's shape at p_bar = 0.93 (arXiv 2605.14967).
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


def test_register_scheme_adds_a_scheme_everywhere():
    def square(tokens, p_bar):
        log_probs = tokens.log_probs
        return log_probs.exp() ** 2

    infosft.register_scheme("square_test", square)
    try:
        assert "square_test" in infosft.available_schemes()
        w = infosft.token_weights(torch.tensor([math.log(0.5)]), "square_test")
        assert w.item() == pytest.approx(0.25)
        logits = torch.randn(1, 3, 5)
        labels = torch.tensor([[-100, 1, 2]])
        infosft.weighted_nll_loss(logits, labels, method="square_test")
        with pytest.raises(ValueError, match="already registered"):
            infosft.register_scheme("square_test", square)
    finally:
        from infosft.objectives import _REGISTRY

        _REGISTRY.pop("square_test")


def test_a_scheme_returning_the_wrong_shape_is_refused_at_registration(registry):
    with pytest.raises(ValueError, match=r"'bad_shape_test' returned \(\) for \d+ tokens"):
        infosft.register_scheme("bad_shape_test", lambda tokens, p_bar: tokens.log_probs.sum())
    assert "bad_shape_test" not in infosft.available_schemes()


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


# ---- the scheme interface -------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for tests that register schemes."""
    from infosft import objectives

    monkeypatch.setattr(objectives, "_REGISTRY", dict(objectives._REGISTRY))


def entropy_gate(tokens, p_bar, *, scale):
    """A user's scheme: w = q * min(1, H / scale), H the full-vocabulary entropy."""
    return tokens.log_probs.exp() * (tokens.entropy / scale).clamp(max=1.0)


def relative_q(tokens, p_bar):
    """A user's scheme: w = q / (mean q over the micro-batch)."""
    return tokens.log_probs.exp() / tokens.statistic


def mean_q(tokens, sequence_ids):
    return tokens.log_probs.exp().mean()


@pytest.mark.parametrize("path", ["reference", "fused"])
def test_a_users_scheme_gets_entropy_and_a_batch_statistic_on_both_paths(registry, path):
    infosft.register_scheme("gate_test", entropy_gate, method_args={"scale": 2.0}, entropy=True)
    infosft.register_scheme("relative_test", relative_q, batch_statistic=mean_q)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(11, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 6), generator=gen)
    labels[1, 4:] = -100
    logits = hidden @ weight.t()
    # float64 formulas, token by token.
    log_p = logits[:, :-1].log_softmax(-1)[labels[:, 1:] != -100]
    lp = log_p.gather(-1, labels[:, 1:][labels[:, 1:] != -100].unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    q = lp.exp()
    expected = {
        "gate_test": -(q * (entropy / 3.0).clamp(max=1.0) * lp).sum() / lp.numel(),
        "relative_test": -(q / q.mean() * lp).sum() / lp.numel(),
    }
    for method, value in expected.items():
        args = {"scale": 3} if method == "gate_test" else None
        if path == "reference":
            got = infosft.weighted_nll_loss(logits, labels, method=method, method_args=args)
        else:
            got = infosft.fused_weighted_nll_loss(
                hidden, weight, labels, method=method, method_args=args, chunk_size=3
            )
        assert got.item() == pytest.approx(value.item(), rel=1e-6), method


def test_a_scheme_is_resolved_once_per_loss_call_not_per_chunk(monkeypatch):
    from infosft import objectives

    calls = []
    lookup = objectives._definition
    monkeypatch.setattr(objectives, "_definition", lambda name: calls.append(name) or lookup(name))
    hidden, weight = torch.randn(2, 9, 4), torch.randn(7, 4)
    labels = torch.randint(0, 7, (2, 9))
    infosft.fused_weighted_nll_loss(hidden, weight, labels, method="talr", chunk_size=1)
    assert calls == ["talr"]
    scheme = infosft.get_scheme("eaft", method_args={"top_k": 3})
    calls.clear()
    infosft.fused_weighted_nll_loss(hidden, weight, labels, method=scheme, chunk_size=1)
    assert calls == []


def test_the_weight_callback_sees_per_token_values_only(registry):
    seen = []

    def spy(tokens, p_bar):
        seen.append(tokens)
        return torch.ones_like(tokens.log_probs)

    infosft.register_scheme("spy_test", spy)
    scheme = infosft.get_scheme("spy_test")
    seen.clear()  # registration and get_scheme try the weight on probe tokens
    hidden, weight = torch.randn(2, 9, 4), torch.randn(7, 4)
    infosft.fused_weighted_nll_loss(
        hidden, weight, torch.randint(0, 7, (2, 9)), method=scheme, chunk_size=5
    )
    chunks = seen
    assert [t.log_probs.shape for t in chunks] == [(5,), (5,), (5,), (1,)]
    assert all(isinstance(t, infosft.TokenInputs) and t.entropy is None for t in chunks)


@pytest.mark.parametrize(
    ("method", "method_args", "message"),
    [
        ("eaft", {"k": 3}, "takes top_k, alpha; got unknown 'k'"),
        ("nll", {"alpha": 1}, "takes no method_args"),
        ("eaft", {"top_k": 2.5}, "top_k must be an integer"),
        ("eaft", {"top_k": 1}, "top_k >= 2"),
        ("eaft", {"alpha": -1.0}, "alpha >= 0"),
        ("dft_mix", {"alpha": 1.5}, "0 <= alpha <= 1"),
        ("power", {"k": 0}, "k > 0"),
        ("power", {"k": "10"}, "k must be a number"),
        ("power", [("k", 1)], "method_args must be a mapping"),
    ],
)
def test_bad_method_args_are_named(method, method_args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        infosft.get_scheme(method, method_args=method_args)


def test_a_resolved_scheme_refuses_a_different_p_bar_next_to_it():
    scheme = infosft.get_scheme("infosft", p_bar=0.9)
    assert infosft.get_scheme(scheme, p_bar=0.9) is scheme
    with pytest.raises(ValueError, match="carries its own p_bar"):
        infosft.weighted_nll_loss(
            torch.randn(1, 3, 5), torch.ones(1, 3, dtype=torch.long), method=scheme, p_bar=0.95
        )


def test_a_scheme_returning_non_finite_weights_is_refused_at_registration(registry):
    with pytest.raises(ValueError, match=r"'inv_q_test' .* weight inf \(non-finite\) at q = 3.7"):
        infosft.register_scheme("inv_q_test", lambda tokens, p_bar: (-tokens.log_probs).exp())


def test_token_weights_refuses_a_scheme_that_is_not_a_function_of_q():
    with pytest.raises(ValueError, match="top-20 entropy"):
        infosft.token_weights(torch.zeros(3), "eaft")
    with pytest.raises(ValueError, match="micro-batch statistic"):
        infosft.token_weights(torch.zeros(3), "talr")


Q_ONLY = [m for m in infosft.available_schemes() if infosft.get_scheme(m).q_only]


@pytest.mark.parametrize("method", Q_ONLY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_every_q_only_scheme_is_finite_for_extreme_log_probs(method, dtype):
    lp = torch.tensor([0.0, -1e-30, -1e-7, -200.0, -1e30, -math.inf, 1e-6]).to(dtype)
    w = infosft.token_weights(lp, method)
    assert w.dtype == torch.float32 and torch.isfinite(w).all() and (w >= 0).all()


def test_eaft_weight_is_the_normalised_top_k_entropy_to_the_alpha():
    scheme = infosft.get_scheme("eaft", method_args={"top_k": 4, "alpha": 2.0})
    h = torch.tensor([0.0, 0.5, math.log(4.0), math.log(4.0) + 1e-6])
    w = scheme.weights(infosft.TokenInputs(torch.zeros(4), top_k_entropy=h))
    expected = [0.0, (0.5 / math.log(4)) ** 2, 1.0, 1.0]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "log_probs",
    [[0.0, 0.0, 0.0], [-math.inf, -math.inf, 0.0], [-1e-30, -200.0, -math.inf]],
)
def test_talr_is_finite_when_tau_is_zero_or_a_log_q_is_minus_inf(log_probs):
    scheme = infosft.get_scheme("talr")
    tokens = infosft.TokenInputs(torch.tensor(log_probs))
    tau = scheme.statistic(tokens, torch.tensor([0, 1, 2]))
    w = scheme.weights(tokens._replace(statistic=tau))
    assert torch.isfinite(tau) and torch.isfinite(w).all()
    assert ((w >= 0.01) & (w <= 1.0)).all()


def test_a_scheme_survives_deepcopy_and_pickling_by_name():
    import copy
    import pickle

    scheme = infosft.get_scheme("eaft", p_bar=0.9, method_args={"top_k": 5})
    assert copy.deepcopy(scheme) is scheme
    again = pickle.loads(pickle.dumps(scheme))
    assert (again.method, again.p_bar, dict(again.method_args)) == (
        "eaft",
        0.9,
        {"top_k": 5, "alpha": 1.0},
    )


# ---- what registration and resolution refuse ------------------------------------------------


def reported_q(message: str) -> float:
    """The q an error message names ("... at q = 0.301 (log q = ...")."""
    return float(re.search(r"at q = ([-+.e\d]+|inf|nan) ", message).group(1))


def test_a_scheme_that_is_nan_on_part_of_the_unit_interval_is_refused_naming_the_q(registry):
    def nan_between(tokens, p_bar):
        log_probs = tokens.log_probs
        q = log_probs.exp()
        return torch.where((q > 0.3) & (q < 0.31), math.nan, q)

    with pytest.raises(ValueError, match=r"'nan_test' .*weight nan \(non-finite\)") as error:
        infosft.register_scheme("nan_test", nan_between)
    assert 0.3 < reported_q(str(error.value)) < 0.31
    assert "nan_test" not in infosft.available_schemes()


def test_resolving_a_scheme_at_a_p_bar_tries_its_weight_at_q_equal_to_that_p_bar(registry):
    probed = []

    def spy(tokens, p_bar):
        log_probs = tokens.log_probs
        probed.append(log_probs.double().exp())
        return torch.ones_like(log_probs)

    infosft.register_scheme("spy_q_test", spy)
    probed.clear()
    infosft.get_scheme("spy_q_test", p_bar=0.9137)
    assert min((q - 0.9137).abs().min().item() for q in probed) < 1e-6


def test_the_probe_covers_q_near_0_and_near_1_in_float32_and_float64(registry):
    probed = []

    def spy(tokens, p_bar):
        log_probs = tokens.log_probs
        probed.append(log_probs)
        return torch.ones_like(log_probs)

    infosft.register_scheme("spy_range_test", spy)
    assert {lp.dtype for lp in probed} == {torch.float32, torch.float64}
    for log_probs in probed:
        q = log_probs.double().exp()
        assert len(q) >= 300
        assert q.min() == 0.0 and (q > 0).any() and q[q > 0].min() < 1e-40
        assert q.max() == 1.0 and ((q > 1 - 1e-6) & (q < 1)).any()


def test_a_scheme_that_is_0_times_inf_at_q_equal_0_is_refused_naming_q_0(registry):
    def naive_infosft(tokens, p_bar):
        log_probs = tokens.log_probs
        q = log_probs.exp()
        logit = log_probs - torch.log(1 - q)  # -inf at q = 0, so q * factor is 0 * inf
        return q * (1 - logit / math.log(p_bar / (1 - p_bar))).clamp(min=0)

    with pytest.raises(ValueError, match=r"nan \(non-finite\) at q = 0 \(log q = -inf"):
        infosft.register_scheme("naive_test", naive_infosft)


def test_a_scheme_with_negative_weights_is_refused(registry):
    with pytest.raises(ValueError, match=r"'minus_q_test' .*\(negative\) at q = "):
        infosft.register_scheme("minus_q_test", lambda tokens, p_bar: 0.5 - tokens.log_probs.exp())


def test_a_scheme_with_weights_above_max_weight_is_refused(registry):
    with pytest.raises(ValueError, match=r"weight 1e\+38 \(too large\) .*\[0, 10000\]"):
        infosft.register_scheme(
            "huge_test", lambda tokens, p_bar: torch.full_like(tokens.log_probs, 1e38)
        )


def test_a_scheme_returning_integer_weights_is_refused(registry):
    with pytest.raises(ValueError, match=r"'int_test' returned torch\.int64 weights"):
        infosft.register_scheme("int_test", lambda tokens, p_bar: (tokens.log_probs < -1).long())


def test_a_scheme_that_raises_is_refused_naming_the_exception(registry):
    def broken(tokens, p_bar):
        raise RuntimeError("shape mismatch\nsecond line")

    with pytest.raises(ValueError, match=r"'broken_test': its weight raised RuntimeError \("):
        infosft.register_scheme("broken_test", broken)


def test_a_refused_overwrite_keeps_the_registered_scheme(registry):
    infosft.register_scheme("kept_test", lambda tokens, p_bar: tokens.log_probs.exp())
    with pytest.raises(ValueError, match="kept_test"):
        infosft.register_scheme(
            "kept_test", lambda tokens, p_bar: -tokens.log_probs.exp(), overwrite=True
        )
    w = infosft.token_weights(torch.tensor([math.log(0.25)]), "kept_test")
    assert w.item() == pytest.approx(0.25)


def test_an_entropy_scheme_is_probed_at_zero_entropy(registry):
    def inverse_entropy(tokens, p_bar):
        return tokens.log_probs.exp() / tokens.entropy

    with pytest.raises(ValueError, match=r"'inv_h_test' .*\(non-finite\) .*entropy = 0,"):
        infosft.register_scheme("inv_h_test", inverse_entropy, entropy=True)


def test_a_batch_statistic_scheme_is_probed_on_a_micro_batch_of_certain_tokens(registry):
    def mean_nll(tokens, sequence_ids):
        return -tokens.log_probs.clamp(min=-1e4).mean()

    def inverse_statistic(tokens, p_bar):
        return torch.ones_like(tokens.log_probs) / tokens.statistic

    with pytest.raises(
        ValueError, match=r"'inv_tau_test' .*\(too large\) at q = 1 .*batch statistic = "
    ):
        infosft.register_scheme("inv_tau_test", inverse_statistic, batch_statistic=mean_nll)


def test_resolving_a_users_scheme_with_arguments_probes_them(registry):
    def scaled(tokens, p_bar, *, scale):
        return scale * tokens.log_probs.exp()

    infosft.register_scheme("scaled_test", scaled, method_args={"scale": 1.0})
    assert infosft.get_scheme("scaled_test", method_args={"scale": 3}).method_args["scale"] == 3
    with pytest.raises(ValueError, match=r"'scaled_test' \(p_bar=0.93, scale=-1.0\) .*negative"):
        infosft.get_scheme("scaled_test", method_args={"scale": -1})


def test_power_with_a_k_whose_weight_exceeds_max_weight_is_refused():
    with pytest.raises(ValueError, match=r"'power' \(p_bar=0.93, k=20000.0\) .*too large"):
        infosft.get_scheme("power", method_args={"k": 2e4})


@pytest.mark.parametrize(
    ("method", "p_bar", "method_args"),
    [
        ("infosft", 0.5001, None),
        ("infosft", 0.9999, None),
        ("power", 0.93, {"k": 1e-3}),
        ("power", 0.93, {"k": 1000.0}),
        ("eaft", 0.93, {"top_k": 2, "alpha": 50.0}),
        ("dft_mix", 0.93, {"alpha": 0.0}),
    ],
)
def test_built_in_schemes_pass_the_probe_at_extreme_arguments(method, p_bar, method_args):
    infosft.get_scheme(method, p_bar=p_bar, method_args=method_args)


def test_a_non_finite_method_arg_is_refused_by_name(registry):
    infosft.register_scheme(
        "free_test", lambda t, p_bar, *, c: t.log_probs.exp(), method_args={"c": 1.0}
    )
    with pytest.raises(ValueError, match="method 'free_test': c must be a finite number, got nan"):
        infosft.get_scheme("free_test", method_args={"c": math.nan})


def test_a_non_finite_method_arg_default_is_refused_at_registration(registry):
    with pytest.raises(ValueError, match="finite numbers, got 'c': inf"):
        infosft.register_scheme(
            "inf_default_test",
            lambda t, p_bar, *, c: t.log_probs.exp(),
            method_args={"c": math.inf},
        )


@pytest.mark.parametrize("p_bar", ["0.9", True, [0.9], torch.tensor([0.9, 0.9])])
def test_p_bar_that_is_not_one_number_is_refused(p_bar):
    with pytest.raises(ValueError, match="p_bar must be a number in"):
        infosft.get_scheme("infosft", p_bar=p_bar)


def test_p_bar_may_be_a_numpy_float_or_a_one_element_tensor():
    import numpy as np

    assert infosft.get_scheme("infosft", p_bar=np.float32(0.9)).p_bar == pytest.approx(0.9)
    assert infosft.get_scheme("infosft", p_bar=torch.tensor([0.9])).p_bar == pytest.approx(0.9)


@pytest.mark.parametrize("value", [math.nan, 2.3])
def test_token_weights_refuses_nan_or_positive_log_probs_naming_the_index(value):
    log_probs = torch.tensor([-0.5, -1.0, value])
    with pytest.raises(ValueError, match=r"log_probs must hold log q in \[-inf, 0\], .* index 2"):
        infosft.token_weights(log_probs)


def test_token_weights_refuses_integer_log_probs_with_a_value_error():
    with pytest.raises(ValueError, match="log_probs must be a floating-point tensor"):
        infosft.token_weights(torch.zeros(3, dtype=torch.long))


# Each old name's call, and what the new name gives for it.
OLD_REGISTRY_CALLS = {
    "available_weightings": (
        lambda: infosft.available_weightings(),
        lambda: infosft.available_schemes(),
    ),
    "get_weighting": (
        lambda: infosft.get_weighting("dft").method,
        lambda: infosft.get_scheme("dft").method,
    ),
    "register_weighting": (
        lambda: infosft.register_weighting(
            "old_q_test", lambda lp, p_bar: lp.exp(), overwrite=True
        ),
        lambda: None,
    ),
}


@pytest.mark.parametrize("old", OLD_REGISTRY_CALLS)
def test_each_old_registry_name_warns_once_and_still_works(registry, monkeypatch, old):
    from infosft import objectives

    old_call, new_call = OLD_REGISTRY_CALLS[old]
    monkeypatch.setattr(objectives, "_WARNED", set())
    with pytest.warns(DeprecationWarning, match=f"infosft.{old} is now infosft.") as caught:
        assert old_call() == new_call()
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert old_call() == new_call()


def test_register_weighting_gives_the_same_weights_as_register_scheme_of_log_q(registry):
    with pytest.warns(DeprecationWarning):
        infosft.register_weighting("old_sq_test", lambda lp, p_bar: lp.exp() ** 2)
    infosft.register_scheme("new_sq_test", lambda tokens, p_bar: tokens.log_probs.exp() ** 2)
    log_q = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    old = infosft.token_weights(log_q, "old_sq_test")
    torch.testing.assert_close(old, infosft.token_weights(log_q, "new_sq_test"))
    torch.testing.assert_close(old.double(), torch.tensor([0.01, 0.25, 0.81], dtype=torch.float64))
