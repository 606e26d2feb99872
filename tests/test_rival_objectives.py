"""The rival objectives and the KL anchor against float64 implementations of their formulas.

The formulas (tests/formulas.py) are written from the schemes' definitions, token by token,
without ``infosft``: q = p(target), l = -log q, weights detached.
"""

import math
import statistics

import pytest
import torch

import infosft
from formulas import formula_loss
from infosft.losses import fused, score_targets
from infosft.losses.fused import fused_weighted_nll_loss

B, T, H, V = 3, 11, 16, 64
LN2 = math.log(2.0)


@pytest.fixture(autouse=True)
def small_top_k_tiles(monkeypatch):
    """Tiles of 2 columns, so that the fused top-K search runs over tiles here (32 >= K)."""
    monkeypatch.setattr(fused, "TOP_K_TILE", 2)


def make_problem(dtype=torch.float64, seed=0, scale=1.5):
    """hidden, W, bias (leaves needing grad), base hidden/W/bias, labels with uneven lengths."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, s=1.0):
        return s * torch.randn(*shape, generator=gen, dtype=torch.float64)

    hidden, weight, bias = randn(B, T, H, s=scale), randn(V, H, s=0.7), randn(V)
    base = (hidden + randn(B, T, H, s=0.3), weight + randn(V, H, s=0.2), randn(V, s=0.5))
    labels = torch.randint(0, V, (B, T), generator=gen)
    # Uneven sequences: a prompt of 3 in row 0, row 1 ends after 6 tokens, row 2 is long.
    labels[0, :3] = -100
    labels[1, 6:] = -100
    labels[2, :1] = -100
    leaves = [t.to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    return (*leaves, tuple(t.to(dtype) for t in base), labels)


def formula_grads(hidden, weight, bias, base, labels, method, upstream=1.0, **kwargs):
    """Loss and gradients of :func:`formula_loss` in float64."""
    h, w, b = (t.detach().double().requires_grad_() for t in (hidden, weight, bias))
    logits = h @ w.t() + b
    base_logits = (base[0].double() @ base[1].double().t() + base[2].double()).detach()
    loss = formula_loss(logits, labels, method, base_logits=base_logits, **kwargs)
    (loss * upstream).backward()
    return loss.detach(), (h.grad, w.grad, b.grad)


def rel_err(got, expected):
    return ((got.double() - expected).norm() / expected.norm()).item()


RIVALS = ["eaft", "talr", "memft", "dft_mix", "power"]
ARGS = {"eaft": {"top_k": 7, "alpha": 1.5}, "dft_mix": {"alpha": 0.4}, "power": {"k": 3.0}}


def fused_loss(hidden, weight, bias, base, labels, method, beta=0.0, **kwargs):
    base_kwargs = {}
    if beta:
        base_kwargs = {
            "base_hidden_states": base[0],
            "base_lm_head_weight": base[1],
            "base_lm_head_bias": base[2],
            "kl_to_base": beta,
        }
    return fused_weighted_nll_loss(
        hidden, weight, labels, method=method, lm_head_bias=bias, **base_kwargs, **kwargs
    )


def reference_loss(hidden, weight, bias, base, labels, method, beta=0.0, **kwargs):
    logits = hidden @ weight.t() + bias
    base_kwargs = {}
    if beta:
        base_kwargs = {"base_logits": base[0] @ base[1].t() + base[2], "kl_to_base": beta}
    return infosft.weighted_nll_loss(logits, labels, method=method, **base_kwargs, **kwargs)


PATHS = {"fused": fused_loss, "reference": reference_loss}


WITH_ARGS = [(m, None) for m in RIVALS] + list(ARGS.items())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("method", "method_args"), WITH_ARGS)
def test_loss_and_gradients_match_the_float64_formula(path, method, method_args):
    hidden, weight, bias, base, labels = make_problem()
    loss = PATHS[path](hidden, weight, bias, base, labels, method, method_args=method_args)
    (loss * 0.7).backward()
    ref_loss, ref_grads = formula_grads(
        hidden, weight, bias, base, labels, method, upstream=0.7, args=method_args
    )
    # Weights are float32 on every path (relative rounding 6e-8).
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for leaf, ref_grad in zip((hidden, weight, bias), ref_grads, strict=True):
        assert rel_err(leaf.grad, ref_grad) <= 1e-6


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("method", "beta"), [("nll", 0.3), ("dft", 0.1), ("memft", 0.5)])
def test_kl_anchor_matches_the_float64_formula(path, method, beta):
    # dft + 0.1 is ASFT, nll + beta is SFT-KL; memft's divisor differs from the anchor's.
    hidden, weight, bias, base, labels = make_problem()
    loss = PATHS[path](hidden, weight, bias, base, labels, method, beta=beta)
    loss.backward()
    ref_loss, ref_grads = formula_grads(hidden, weight, bias, base, labels, method, beta=beta)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for leaf, ref_grad in zip((hidden, weight, bias), ref_grads, strict=True):
        assert rel_err(leaf.grad, ref_grad) <= 1e-6


@pytest.mark.parametrize("method", ["eaft", "talr"])
def test_kl_anchor_with_schemes_needing_more_than_q(method):
    hidden, weight, bias, base, labels = make_problem()
    loss = fused_loss(hidden, weight, bias, base, labels, method, beta=0.2, chunk_size=4)
    loss.backward()
    ref_loss, ref_grads = formula_grads(hidden, weight, bias, base, labels, method, beta=0.2)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for leaf, ref_grad in zip((hidden, weight, bias), ref_grads, strict=True):
        assert rel_err(leaf.grad, ref_grad) <= 1e-6


def test_kl_anchor_is_zero_when_the_base_is_the_trained_model():
    hidden, weight, bias, _, labels = make_problem()
    same = (hidden.detach(), weight.detach(), bias.detach())
    anchored, stats = fused_loss(hidden, weight, bias, same, labels, "dft", 0.5, return_stats=True)
    plain = fused_weighted_nll_loss(hidden, weight, labels, method="dft", lm_head_bias=bias)
    assert anchored.item() == pytest.approx(plain.item(), rel=1e-12)
    assert abs(stats.sum_kl.item()) < 1e-12


def test_stats_report_the_kl_and_memfts_raw_weights():
    hidden, weight, bias, base, labels = make_problem()
    _, stats = fused_loss(hidden, weight, bias, base, labels, "memft", 0.3, return_stats=True)
    h, w, b = (t.detach() for t in (hidden, weight, bias))
    mask = labels[:, 1:] != -100
    log_p = (h @ w.t() + b)[:, :-1][mask].log_softmax(-1)
    log_p_base = (base[0] @ base[1].t() + base[2])[:, :-1][mask].log_softmax(-1)
    nll = -log_p.gather(-1, labels[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
    kl = (log_p_base.exp() * (log_p_base - log_p)).sum(-1)
    assert stats.sum_weight.item() == float((nll > LN2).sum())
    assert stats.num_zero_weight.item() == float((nll <= LN2).sum())
    assert stats.sum_kl.item() == pytest.approx(kl.sum().item(), rel=1e-6)
    assert stats.means()["kl_to_base"] == pytest.approx(kl.mean().item(), rel=1e-6)


def micro_batches():
    """Two micro-batches of one optimizer step whose NLL levels (hence tau) differ."""
    a = make_problem(seed=1, scale=0.5)
    b = make_problem(seed=2, scale=3.0)
    n = sum(int((p[-1][:, 1:] != -100).sum()) for p in (a, b))
    return a, b, n


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["memft", "talr"])
def test_gradient_accumulation_combines_each_micro_batchs_own_statistic(path, method):
    """With num_items_in_batch (the step's token count, as the Trainer passes it): talr takes
    tau over each micro-batch's sequences and divides by the step's tokens; memft divides each
    micro-batch's sum by its own max(sum w, 1) times num_items / its tokens. Ranks are the same
    case: each rank's loss is one micro-batch of the step."""
    a, b, n = micro_batches()
    total = 0.0
    for hidden, weight, bias, base, labels in (a, b):
        loss = PATHS[path](hidden, weight, bias, base, labels, method, num_items_in_batch=n)
        loss.backward()
        ref_loss, ref_grads = formula_grads(hidden, weight, bias, base, labels, method, num_items=n)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
        for leaf, ref_grad in zip((hidden, weight, bias), ref_grads, strict=True):
            assert rel_err(leaf.grad, ref_grad) <= 1e-6
        total += loss.item()
    if method == "memft":
        # The token-weighted mean of the two self-normalised losses.
        shares = [
            int((p[-1][:, 1:] != -100).sum()) / n * PATHS[path](*p, method).item() for p in (a, b)
        ]
        assert total == pytest.approx(sum(shares), rel=1e-9)


def test_talr_tau_is_the_median_over_sequences_not_tokens():
    hidden, weight, bias, _, labels = make_problem()
    scores = score_targets(hidden, weight, labels, lm_head_bias=bias, method="talr")
    scored = labels != -100
    scored[:, 0] = False  # nothing predicts the first label
    per_row = [(-scores.log_probs[r][scored[r]]).tolist() for r in range(B)]
    tau = statistics.median(statistics.mean(row) for row in per_row)
    q = scores.log_probs.exp()
    expected = torch.where(scored, (q ** (1 / tau)).clamp(min=0.01), 0.0)
    torch.testing.assert_close(scores.weights.double(), expected, rtol=1e-6, atol=1e-7)


def test_talr_with_an_even_number_of_sequences_takes_the_mean_of_the_middle_two():
    hidden, weight, bias, base, labels = make_problem()
    labels = labels.clone()
    labels[1] = -100  # rows 0 and 2 remain
    loss = fused_loss(hidden, weight, bias, base, labels, "talr")
    ref_loss, _ = formula_grads(hidden, weight, bias, base, labels, "talr")
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_memft_without_num_items_divides_by_its_weight_sum(path):
    hidden, weight, bias, base, labels = make_problem()
    n = int((labels[:, 1:] != -100).sum())
    plain = PATHS[path](hidden, weight, bias, base, labels, "memft")
    one_step = PATHS[path](hidden, weight, bias, base, labels, "memft", num_items_in_batch=n)
    ref_loss, _ = formula_grads(hidden, weight, bias, base, labels, "memft")
    assert plain.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert one_step.item() == pytest.approx(plain.item(), rel=1e-12)


@pytest.mark.parametrize("layout", ["cpu", "cuda_on_cpu"])
@pytest.mark.parametrize("method", RIVALS)
def test_fused_fp32_through_each_device_layout_matches_the_formula(monkeypatch, layout, method):
    monkeypatch.setattr(fused, "_CUDA_LAYOUT_ON_CPU", layout == "cuda_on_cpu")
    hidden, weight, bias, base, labels = make_problem(torch.float32)
    loss = fused_loss(hidden, weight, bias, base, labels, method, beta=0.2, chunk_size=5)
    loss.backward()
    ref_loss, ref_grads = formula_grads(hidden, weight, bias, base, labels, method, beta=0.2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for leaf, ref_grad in zip((hidden, weight, bias), ref_grads, strict=True):
        assert rel_err(leaf.grad, ref_grad) <= 1e-5


def test_compiled_chunk_functions_match_the_formula_in_the_cuda_layout(monkeypatch):
    # What runs on a GPU: torch.compile'd chunk math (top-K entropy, entropy for the stats,
    # the KL anchor's base share), separate gradient buffer. About 25 s of compiling on CPU.
    monkeypatch.setattr(fused, "_CUDA_LAYOUT_ON_CPU", True)
    hidden, weight, bias, base, labels = make_problem(torch.float32)
    loss, stats = fused_loss(
        hidden,
        weight,
        bias,
        base,
        labels,
        "eaft",
        0.2,
        chunk_size=5,
        use_compile=True,
        return_stats=True,
    )
    loss.backward()
    ref_loss, ref_grads = formula_grads(hidden, weight, bias, base, labels, "eaft", beta=0.2)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for leaf, ref_grad in zip((hidden, weight, bias), ref_grads, strict=True):
        assert rel_err(leaf.grad, ref_grad) <= 1e-5
    assert torch.isfinite(stats.sum_entropy) and torch.isfinite(stats.sum_kl)


def peaked_problem(dtype):
    """Targets with log q below -300 (q underflows in float32) and with q ~ 1."""
    hidden, weight, bias, base, labels = make_problem(scale=40.0)
    return (*(t.detach().to(dtype).requires_grad_() for t in (hidden, weight, bias)), base, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", RIVALS)
def test_extreme_targets_give_finite_loss_and_gradients(method, dtype):
    hidden, weight, bias, base, labels = peaked_problem(dtype)
    base = tuple(t.to(dtype) for t in base)
    loss = fused_loss(hidden, weight, bias, base, labels, method, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss)
    for leaf in (hidden, weight, bias):
        assert torch.isfinite(leaf.grad.float()).all()


@pytest.mark.parametrize(("method", "beta"), [("talr", 0.0), ("talr", 0.2), ("memft", 0.2)])
def test_without_gradients_the_first_pass_is_the_only_one_and_gives_the_same_loss(method, beta):
    hidden, weight, bias, base, labels = make_problem()
    with torch.no_grad():
        no_grad = fused_loss(hidden, weight, bias, base, labels, method, beta)
    ref_loss, _ = formula_grads(hidden, weight, bias, base, labels, method, beta=beta)
    assert no_grad.item() == pytest.approx(ref_loss.item(), rel=1e-6)
