"""fused_weighted_nll_loss against each scheme's float64 formula (tests/formulas.py)."""

import math
import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

import infosft
from formulas import formula_loss_and_grads
from infosft import objectives
from infosft.losses import chunking, fused
from infosft.losses.fused import TokenStats, fused_weighted_nll_loss

B, T, H, V = 2, 13, 24, 97
C = math.log(0.93 / 0.07)
# Weights are float32 on every path (relative rounding 6e-8 each), so a float64 loss agrees with
# the float64 formula to about 1e-7, not to float64's own rounding.
FLOAT32_WEIGHTS = 1e-6


def make_problem(dtype=torch.float32, bias=True, seed=0, scale=1.0):
    """hidden [B, T, H], W [V, H], b [V] (leaves needing grad) and labels with ignored spans.

    With a large ``scale`` the logits are peaked; every third target is then the argmax of its
    row, so that some tokens have q near 1 and others q near 0.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = scale * torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    weight = 0.7 * torch.randn(V, H, generator=gen, dtype=torch.float64)
    b = torch.randn(V, generator=gen, dtype=torch.float64) if bias else None
    labels = torch.randint(0, V, (B, T), generator=gen)
    argmax = (hidden @ weight.t() + (b if bias else 0.0)).argmax(-1)
    labels[:, 1::3] = argmax[:, 0:-1:3]
    labels[0, :4] = -100
    labels[1, 9:] = -100
    leaves = [t.to(dtype).requires_grad_() if t is not None else None for t in (hidden, weight, b)]
    return (*leaves, labels)


def float64_reference(hidden, weight, bias, labels, method="infosft", upstream=1.0, **kwargs):
    """Loss and gradients of the scheme's float64 formula (tests/formulas.py)."""
    return formula_loss_and_grads(hidden, weight, bias, labels, method, upstream=upstream, **kwargs)


def rel_err(got, expected):
    return ((got.double() - expected).norm() / expected.norm()).item()


def assert_parity(loss, leaves, ref_loss, ref_grads, tol):
    assert rel_err(loss, ref_loss) <= tol
    for leaf, ref_grad in zip(leaves, ref_grads, strict=True):
        if leaf is not None:
            assert leaf.grad.dtype == leaf.dtype
            assert rel_err(leaf.grad, ref_grad) <= tol


@pytest.fixture(params=["cpu", "cuda_on_cpu"])
def layout(request, monkeypatch):
    """Run a test in the CPU layout and in the CUDA one forced on CPU (bf16/fp16 matmul
    operands with float32 results, gradient in its own buffer of the matmul dtype, the
    matching zero-weight compaction)."""
    monkeypatch.setattr(fused, "_CUDA_LAYOUT_ON_CPU", request.param == "cuda_on_cpu")
    return request.param


@pytest.mark.parametrize("method", objectives.available_schemes())
def test_fp32_loss_and_gradients_match_float64_full_logits(method, layout):
    hidden, weight, bias, labels = make_problem()
    loss = fused_weighted_nll_loss(hidden, weight, labels, method=method, lm_head_bias=bias)
    loss.backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels, method)
    assert loss.dtype == torch.float32
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=1e-5)


@pytest.mark.parametrize("method", objectives.available_schemes())
def test_bf16_inputs_give_bf16_gradients_close_to_float64(method, layout):
    hidden, weight, bias, labels = make_problem(torch.bfloat16)
    loss = fused_weighted_nll_loss(hidden, weight, labels, method=method, lm_head_bias=bias)
    loss.backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels, method)
    assert loss.dtype == torch.float32
    # The gradients are rounded to bf16 at the end (relative step 2**-8).
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=1e-2)


def test_a_newly_registered_scheme_is_used(monkeypatch):
    monkeypatch.setattr(objectives, "_REGISTRY", dict(objectives._REGISTRY))
    infosft.register_scheme("sqrt_q", lambda tokens, p_bar: (0.5 * tokens.log_probs).exp())
    hidden, weight, bias, labels = make_problem(torch.float64)
    loss = fused_weighted_nll_loss(hidden, weight, labels, method="sqrt_q", lm_head_bias=bias)
    logits = (hidden @ weight.t() + bias).detach()
    lp = logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1))
    lp = lp.squeeze(-1)[labels[:, 1:] != -100]
    expected = -((0.5 * lp).exp() * lp).sum() / lp.numel()
    # Weights are float32 on every path.
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_any_chunk_size_gives_the_same_result(chunk_size):
    # 17 target tokens: 7 does not divide them, 1000 is larger than all of them.
    hidden, weight, bias, labels = make_problem(torch.float64)
    loss = fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias, chunk_size=chunk_size)
    loss.backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels)
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=FLOAT32_WEIGHTS)
    # Chunking only regroups float64 sums: every chunk size agrees with one chunk to 1e-12.
    one = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    whole = fused_weighted_nll_loss(one[0], one[1], labels, lm_head_bias=one[2], chunk_size=1000)
    whole.backward()
    assert_parity(loss, (hidden, weight, bias), whole.detach(), [t.grad for t in one], tol=1e-12)


@pytest.mark.parametrize("return_stats", [False, True])
@pytest.mark.parametrize("block_rows", [1, 3])
def test_zero_weight_rows_inside_chunks_are_squeezed_out_exactly(
    monkeypatch, block_rows, return_stats, layout
):
    # Peaked logits: zero-weight rows sit between weighted ones inside each chunk of 8; the
    # rows are moved block_rows at a time (CPU, in place) or gathered (with the stats' buffer).
    monkeypatch.setattr(chunking, "CPU_BLOCK_BYTES", block_rows * 4 * V)
    hidden, weight, bias, labels = make_problem(torch.float64, scale=6.0)
    loss = fused_weighted_nll_loss(
        hidden, weight, labels, lm_head_bias=bias, chunk_size=8, return_stats=return_stats
    )
    loss = loss[0] if return_stats else loss
    loss.backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels)
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=FLOAT32_WEIGHTS)


def test_zero_weight_rows_of_a_bf16_gradient_buffer_are_squeezed_out(monkeypatch):
    # The CUDA layout's compaction when the gradient buffer (bf16) is not the logits' dtype.
    monkeypatch.setattr(fused, "_CUDA_LAYOUT_ON_CPU", True)
    hidden, weight, bias, labels = make_problem(torch.bfloat16, scale=6.0)
    loss, stats = fused_weighted_nll_loss(
        hidden, weight, labels, lm_head_bias=bias, chunk_size=8, return_stats=True
    )
    loss.backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels)
    assert 0 < stats.num_zero_weight < stats.num_tokens
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=1e-2)


def test_the_cuda_layout_multiplies_bf16_operands_into_float32(monkeypatch):
    monkeypatch.setattr(fused, "_CUDA_LAYOUT_ON_CPU", True)
    monkeypatch.setattr(fused, "_mm", RecordMatmulDtypes(fused._mm))
    hidden, weight, bias, labels = make_problem(torch.bfloat16)
    fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias).backward()
    # logits, grad of hidden, grad of weight: bf16 operands, float32 results.
    assert fused._mm.calls == [(torch.bfloat16, torch.float32)] * 3


class RecordMatmulDtypes:
    """Wraps ``fused._mm`` and records (operand dtype, result dtype) of each call."""

    def __init__(self, mm):
        self.mm, self.calls = mm, []

    def __call__(self, a, b, out, accumulate=False):
        self.calls.append((a.dtype, out.dtype))
        return self.mm(a, b, out=out, accumulate=accumulate)


def test_scalar_upstream_gradient_scales_every_gradient():
    hidden, weight, bias, labels = make_problem(torch.float64)
    loss = fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias)
    (loss * 0.37).backward()
    _, ref_grads = float64_reference(hidden, weight, bias, labels, upstream=0.37)
    for leaf, ref_grad in zip((hidden, weight, bias), ref_grads, strict=True):
        assert rel_err(leaf.grad, ref_grad) <= FLOAT32_WEIGHTS


def test_num_items_in_batch_divides_the_sum():
    hidden, weight, bias, labels = make_problem(torch.float64)
    loss = fused_weighted_nll_loss(
        hidden, weight, labels, lm_head_bias=bias, method="dft", num_items_in_batch=40
    )
    loss.backward()
    ref_loss, ref_grads = float64_reference(
        hidden, weight, bias, labels, method="dft", num_items=40
    )
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=FLOAT32_WEIGHTS)


def test_all_ignored_batch_gives_zero_loss_and_zero_gradients():
    hidden, weight, bias, _ = make_problem()
    labels = torch.full((B, T), -100)
    loss = fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias)
    loss.backward()
    assert loss.item() == 0.0
    for leaf in (hidden, weight, bias):
        assert leaf.grad is not None
        assert not leaf.grad.any()


def peaked_problem():
    """float32 leaves whose targets have log q below -300 (float32 q underflows) or q ~ 1."""
    hidden, weight, bias, labels = make_problem(torch.float64, scale=40.0)
    with torch.no_grad():
        logits = hidden @ weight.t() + bias
        log_q = logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])
    log_q = log_q.squeeze(-1)[labels[:, 1:] != -100]
    assert log_q.min() < -300 and log_q.max() > math.log(0.93)
    return (*(t.detach().float().requires_grad_() for t in (hidden, weight, bias)), labels)


def test_underflowing_q_still_gives_the_exact_nll():
    hidden, weight, bias, labels = peaked_problem()
    loss = fused_weighted_nll_loss(hidden, weight, labels, method="nll", lm_head_bias=bias)
    loss.backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels, "nll")
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=1e-5)


def test_tokens_with_q_near_0_or_1_get_zero_infosft_weight_and_no_nan():
    hidden, weight, bias, labels = peaked_problem()
    loss, stats = fused_weighted_nll_loss(
        hidden, weight, labels, lm_head_bias=bias, return_stats=True
    )
    loss.backward()
    assert stats.num_zero_weight == stats.num_tokens
    assert loss.item() == 0.0
    for leaf in (hidden, weight, bias):
        assert not leaf.grad.any()
    assert torch.isfinite(torch.stack(list(stats[:6]))).all() and stats.sum_kl is None


def test_frozen_head_gets_no_gradient_and_hidden_gradient_is_exact():
    hidden, weight, bias, labels = make_problem(torch.float64)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias).backward()
    _, (ref_hidden_grad, _, _) = float64_reference(hidden, weight, bias, labels)
    assert weight.grad is None and bias.grad is None
    assert rel_err(hidden.grad, ref_hidden_grad) <= FLOAT32_WEIGHTS


def test_no_grad_mode_returns_the_same_value():
    hidden, weight, bias, labels = make_problem(torch.float64)
    with torch.no_grad():
        loss = fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias)
    ref_loss, _ = float64_reference(hidden, weight, bias, labels)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(ref_loss.item(), rel=FLOAT32_WEIGHTS)


def test_target_weights_replace_the_schemes_weights():
    hidden, weight, bias, labels = make_problem(torch.float64)
    gen = torch.Generator().manual_seed(1)
    target_weights = torch.rand(B, T, generator=gen, dtype=torch.float64)
    target_weights[0, 5] = 0.0
    loss = fused_weighted_nll_loss(
        hidden, weight, labels, lm_head_bias=bias, target_weights=target_weights
    )
    loss.backward()
    # Position t predicts labels[t + 1] and carries target_weights[t + 1].
    h, w, b = (t.detach().clone().requires_grad_() for t in (hidden, weight, bias))
    lp = (h @ w.t() + b)[:, :-1].log_softmax(-1)
    lp = lp.gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    mask = labels[:, 1:] != -100
    ref = -(target_weights[:, 1:][mask].float().double() * lp[mask]).sum() / mask.sum()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-7)
    for leaf, ref_leaf in zip((hidden, weight, bias), (h, w, b), strict=True):
        assert rel_err(leaf.grad, ref_leaf.grad) <= 1e-7


def test_stats_are_sums_over_target_tokens():
    hidden, weight, bias, labels = make_problem(torch.float64, scale=6.0)
    _, stats = fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias, return_stats=True)
    logits = (hidden @ weight.t() + bias).detach()[:, :-1][labels[:, 1:] != -100]
    log_p = logits.log_softmax(-1)
    lp = log_p.gather(-1, labels[:, 1:][labels[:, 1:] != -100][:, None]).squeeze(-1)
    q = lp.exp()
    w = (q * (1 - (lp - torch.log1p(-q)) / C).clamp(min=0)).float()
    expected = {
        "num_tokens": lp.numel(),
        "sum_q": q.sum(),
        "sum_weight": w.sum(),
        "num_zero_weight": (w == 0).sum(),
        "sum_nll": -lp.sum(),
        "sum_entropy": -(log_p.exp() * log_p).sum(),
    }
    assert isinstance(stats, TokenStats)
    assert 0 < expected["num_zero_weight"] < expected["num_tokens"]
    for name, value in expected.items():
        got = getattr(stats, name)
        assert got.dtype == torch.float32 and not got.requires_grad
        assert got.item() == pytest.approx(float(value), rel=1e-5), name
    means = stats.means()
    n = expected["num_tokens"]
    assert means["zero_weight_share"] == pytest.approx(float(expected["num_zero_weight"]) / n)
    assert means["entropy"] == pytest.approx(float(expected["sum_entropy"]) / n, rel=1e-5)


@pytest.mark.parametrize("buffer_dtype", [torch.float32, torch.bfloat16])
def test_chunk_math_writes_softmax_minus_onehot_and_returns_log_q_and_entropy(buffer_dtype):
    # bf16 buffer: the CUDA layout (float32 logits, gradient in the matmul dtype).
    logits = 5 * torch.randn(6, V, dtype=torch.float64)
    targets = torch.randint(0, V, (6,))
    grad = torch.empty(6, V, dtype=buffer_dtype)
    log_q, lse, entropy, top_k_entropy = fused.chunk_softmax_grad(
        logits.float(), targets, grad, True, top_k=5
    )
    log_p = logits.log_softmax(-1)
    expected_grad = log_p.exp() - torch.nn.functional.one_hot(targets, V)
    tol = 1e-6 if buffer_dtype == torch.float32 else 4e-3
    torch.testing.assert_close(grad.double(), expected_grad, rtol=tol, atol=tol)
    torch.testing.assert_close(
        log_q.double(), log_p[torch.arange(6), targets], rtol=1e-6, atol=1e-5
    )
    torch.testing.assert_close(
        entropy.double(), -(log_p.exp() * log_p).sum(-1), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(lse.double(), logits.logsumexp(-1), rtol=1e-6, atol=1e-5)
    top = logits.topk(5, dim=-1).values.log_softmax(-1)
    expected_top = -(top.exp() * top).sum(-1)
    torch.testing.assert_close(top_k_entropy.double(), expected_top, rtol=1e-5, atol=1e-5)


def test_score_targets_gives_log_q_and_entropy_aligned_with_labels():
    hidden, weight, bias, labels = make_problem(torch.float64)
    scores = fused.score_targets(hidden, weight, labels, lm_head_bias=bias, chunk_size=5)
    log_p = (hidden @ weight.t() + bias).detach().log_softmax(-1)
    # labels[t] is scored by position t - 1; nothing scores labels[:, 0].
    scored = labels != -100
    scored[:, 0] = False
    picked = log_p[:, :-1].gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)[:, :-1]
    expected_lp = torch.zeros_like(scores.log_probs)
    expected_lp[:, 1:] = picked
    expected_entropy = torch.zeros_like(scores.entropy)
    expected_entropy[:, 1:] = entropy
    assert scores.weights is None and not scores.log_probs.requires_grad
    torch.testing.assert_close(scores.log_probs, torch.where(scored, expected_lp, 0.0))
    torch.testing.assert_close(scores.entropy, torch.where(scored, expected_entropy, 0.0))


@pytest.mark.parametrize(("vocab", "k"), [(4 * 64, 3), (4 * 64, 5), (97, 20), (640, 20)])
def test_max_and_top_k_finds_the_rows_maximum_and_largest_values(vocab, k):
    # 4 tiles of 64 with k = 5 > 4 and V = 97 (not a multiple of 64) take torch.topk; ties and
    # several large values in one tile are in the data.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, vocab, generator=gen).round(decimals=1)
    logits[0, 10:20] = 9.0
    logits[1, :] = 1.0
    row_max, argmax, top = fused.max_and_top_k(logits, k)
    assert torch.equal(row_max, logits.max(dim=1, keepdim=True).values)
    assert torch.equal(logits.gather(1, argmax), row_max)
    expected = logits.topk(k, dim=1).values
    assert torch.equal(top.sort(dim=1, descending=True).values, expected)


class RecordMatmuls(TorchFunctionMode):
    """Shapes of the results of every torch.mm / torch.addmm / matmul called inside."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in (torch.mm, torch.addmm, torch.matmul, torch.Tensor.__matmul__):
            self.shapes.append(tuple(result.shape))
        return result


def test_projects_only_target_positions_one_chunk_at_a_time():
    hidden, weight, bias, labels = make_problem()
    with RecordMatmuls() as recorder:
        fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias, chunk_size=4)
    logits_rows = [rows for rows, cols in recorder.shapes if cols == V]
    assert max(logits_rows) <= 4
    assert sum(logits_rows) == int((labels[:, 1:] != -100).sum())


def test_zero_and_negligible_weight_tokens_are_left_out_of_the_gradient_matmuls():
    # Negligible: w / N below 2**-100, whose gradients would fall under float32's normal range.
    hidden, weight, bias, labels = make_problem(scale=6.0)
    scores = fused.score_targets(hidden, weight, labels, lm_head_bias=bias, method="infosft")
    scored = labels != -100
    scored[:, 0] = False
    w = scores.weights[scored]
    assert (w == 0).any() and ((w > 0) & (w / w.numel() < 2.0**-100)).any()
    with RecordMatmuls() as recorder:
        fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias, chunk_size=1000)
    grad_hidden_rows = [rows for rows, cols in recorder.shapes if cols == H and rows != V]
    assert grad_hidden_rows == [int((w / w.numel() >= 2.0**-100).sum())]


def test_backward_twice_is_refused():
    hidden, weight, bias, labels = make_problem()
    loss = fused_weighted_nll_loss(hidden, weight, labels, lm_head_bias=bias)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": torch.zeros(B, T + 1, dtype=torch.long)}, r"labels \(2, 14\)"),
        ({"lm_head_weight": torch.zeros(V, H + 1)}, r"lm_head_weight must be \[V, H\]"),
        ({"lm_head_bias": torch.zeros(V + 1)}, r"lm_head_bias must be \[V\]"),
        ({"labels": torch.full((B, T), V)}, f"label {V} is outside"),
        ({"target_weights": torch.zeros(B, T - 1)}, "target_weights must be"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"method": "nope"}, "unknown scheme"),
    ],
)
def test_bad_input_is_named_in_the_error(kwargs, message):
    hidden, weight, _, labels = make_problem()
    call = {"hidden_states": hidden, "lm_head_weight": weight, "labels": labels} | kwargs
    with pytest.raises(ValueError, match=message):
        fused_weighted_nll_loss(**call)


def test_non_finite_target_weight_at_a_target_is_refused():
    hidden, weight, _, labels = make_problem()
    target_weights = torch.zeros(B, T)
    target_weights[0, 0] = math.nan  # position 0 has no target: never read
    assert fused_weighted_nll_loss(hidden, weight, labels, target_weights=target_weights) == 0
    target_weights[1, 3] = math.inf
    with pytest.raises(ValueError, match="non-finite"):
        fused_weighted_nll_loss(hidden, weight, labels, target_weights=target_weights)


@pytest.mark.skipif(
    os.environ.get("INFOSFT_TEST_COMPILE") != "1",
    reason="compiles per scheme, 10-25 s each on CPU; set INFOSFT_TEST_COMPILE=1 to run "
    "(test_rival_objectives compiles one case by default)",
)
@pytest.mark.parametrize("return_stats", [False, True])
@pytest.mark.parametrize("method", objectives.available_schemes())
def test_compiled_chunk_math_matches_float64_on_cpu(method, layout, return_stats):
    hidden, weight, bias, labels = make_problem()
    loss = fused_weighted_nll_loss(
        hidden,
        weight,
        labels,
        method=method,
        lm_head_bias=bias,
        chunk_size=5,
        use_compile=True,
        return_stats=return_stats,
    )
    loss = loss[0] if return_stats else loss
    loss.backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels, method)
    assert_parity(loss, (hidden, weight, bias), ref_loss, ref_grads, tol=1e-5)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("method", objectives.available_schemes())
def test_cuda_matches_float64_full_logits(method, dtype, tol):
    hidden, weight, bias, labels = make_problem(dtype)
    on_gpu = [t.detach().cuda().requires_grad_() for t in (hidden, weight, bias)]
    loss = fused_weighted_nll_loss(
        *on_gpu[:2], labels.cuda(), method=method, lm_head_bias=on_gpu[2]
    )
    (loss * 2.0).backward()
    ref_loss, ref_grads = float64_reference(hidden, weight, bias, labels, method, upstream=2.0)
    assert rel_err(loss.cpu(), ref_loss) <= tol
    for leaf, ref_grad in zip(on_gpu, ref_grads, strict=True):
        assert leaf.grad.dtype == dtype
        assert rel_err(leaf.grad.cpu(), ref_grad) <= tol


@pytest.mark.gpu
@cuda
def test_cuda_all_ignored_batch_gives_zero_gradients():
    hidden, weight, bias, _ = make_problem(torch.bfloat16)
    on_gpu = [t.detach().cuda().requires_grad_() for t in (hidden, weight, bias)]
    labels = torch.full((B, T), -100, device="cuda")
    loss = fused_weighted_nll_loss(*on_gpu[:2], labels, lm_head_bias=on_gpu[2])
    loss.backward()
    assert loss.item() == 0.0
    assert all(not leaf.grad.any() for leaf in on_gpu)


# ---- every entry point refuses what cannot be right ------------------------------------------


def call_entry_point(entry, **kwargs):
    """Call a public loss entry point on the same small problem with ``kwargs`` changed."""
    hidden, weight, _, labels = make_problem()
    labels = kwargs.pop("labels", labels)
    if entry == "fused":
        return fused_weighted_nll_loss(hidden, weight, labels, **kwargs)
    if entry == "score_targets":
        kwargs.pop("num_items_in_batch", None)
        return fused.score_targets(hidden, weight, labels, **kwargs)
    logits = (hidden @ weight.t()).detach()
    if entry == "reference":
        return infosft.weighted_nll_loss(logits, labels, **kwargs)
    num_items = kwargs.pop("num_items_in_batch", None)
    loss_fn = infosft.compute_loss_func(**kwargs)
    return loss_fn({"logits": logits}, labels, num_items_in_batch=num_items)


ENTRY_POINTS = ["fused", "score_targets", "reference", "compute_loss_func"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p_bar": "0.9"}, "p_bar must be a number in"),
        ({"p_bar": 1.0}, "p_bar must lie strictly between 0 and 1"),
        ({"method": "power", "method_args": {"k": math.nan}}, "k must be a finite number"),
        ({"method": "power", "method_args": {"k": 1e5}}, r"'power' .* \(too large\) at q = "),
        ({"ignore_index": -100.0}, "ignore_index must be an integer"),
        ({"labels": torch.zeros(B, T)}, "labels must be an integer tensor"),
    ],
)
def test_every_entry_point_refuses_a_bad_argument_by_name(entry, kwargs, message):
    with pytest.raises(ValueError, match=message):
        call_entry_point(entry, **kwargs)


@pytest.mark.parametrize("entry", ["fused", "reference", "compute_loss_func"])
@pytest.mark.parametrize("num_items", [0, -4, math.nan, torch.tensor(0), torch.tensor([-4.0])])
def test_every_loss_refuses_a_num_items_in_batch_that_is_not_positive(entry, num_items):
    with pytest.raises(ValueError, match="num_items_in_batch must be a finite count > 0"):
        call_entry_point(entry, num_items_in_batch=num_items)


@pytest.mark.parametrize("value", [-0.5, 2e4, math.nan])
def test_a_target_weight_outside_0_to_max_weight_at_a_target_is_refused_by_position(value):
    hidden, weight, _, labels = make_problem()
    target_weights = torch.ones(B, T)
    target_weights[1, 3] = value
    with pytest.raises(ValueError, match=r"target_weights\[1, 3\] is .* within \[0, 10000\]"):
        fused_weighted_nll_loss(hidden, weight, labels, target_weights=target_weights)


@pytest.mark.parametrize("num_items", [None, 5, torch.tensor(5)])
@pytest.mark.parametrize("method", objectives.available_schemes())
def test_a_batch_without_targets_gives_zero_loss_and_zero_gradients_with_any_divisor(
    method, num_items
):
    hidden, weight, bias, _ = make_problem()
    labels = torch.full((B, T), -100)
    loss = fused_weighted_nll_loss(
        hidden, weight, labels, method=method, lm_head_bias=bias, num_items_in_batch=num_items
    )
    loss.backward()
    assert loss.item() == 0.0
    assert all(not leaf.grad.any() for leaf in (hidden, weight, bias))


def test_int32_labels_give_the_float64_loss():
    hidden, weight, bias, labels = make_problem(torch.float64)
    loss = fused_weighted_nll_loss(hidden, weight, labels.int(), lm_head_bias=bias)
    ref_loss, _ = float64_reference(hidden, weight, bias, labels)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=FLOAT32_WEIGHTS)


@pytest.mark.gpu
@cuda
def test_cuda_num_items_in_batch_tensor_of_zero_is_refused_and_a_positive_one_divides():
    hidden, weight, bias, labels = (t.detach().cuda() for t in make_problem(torch.float64))
    with pytest.raises(
        ValueError, match=r"num_items_in_batch must be a finite count > 0 .*, got 0:"
    ):
        fused_weighted_nll_loss(
            hidden, weight, labels, num_items_in_batch=torch.tensor(0, device="cuda")
        )
    loss = fused_weighted_nll_loss(
        hidden, weight, labels, lm_head_bias=bias, num_items_in_batch=torch.tensor(40).cuda()
    )
    ref_loss, _ = float64_reference(
        hidden.cpu(), weight.cpu(), bias.cpu(), labels.cpu(), num_items=40
    )
    assert loss.item() == pytest.approx(ref_loss.item(), rel=FLOAT32_WEIGHTS)
