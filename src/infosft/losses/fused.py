"""Weighted NLL straight from hidden states and the LM head, without a logits tensor.

The weight of a token is detached and known as soon as its logits row is, so the gradient of
``-sg(w) * log q`` with respect to the logits is known in the forward pass:
``d/dz = w * (softmax(z) - onehot(y))``. :func:`fused_weighted_nll_loss` therefore walks over
chunks of target rows once, and per chunk does the three matmuls plain cross-entropy needs
(logits, grad of hidden, grad of weight) and forgets the chunk. Backward only multiplies the
saved gradients by the scalar upstream gradient (the gradient-accumulation scale).

Two further savings: only positions with a target are projected, and rows whose weight is 0
(InfoSFT's tokens with q >= p_bar) are dropped from the two gradient matmuls.

What a scheme needs is computed inside the same loop: the entropy of each row, the entropy of
its top-K logits (EAFT), and the KL anchor ``beta * KL(p_base || p_theta)``, whose base logits
are projected chunk by chunk beside the trained ones (gradient ``beta * (p_theta - p_base) / N``
added to the same [C, V] buffer). Two kinds of scheme need something of the whole micro-batch:

- a batch statistic (TALR's tau) is known only after every row's log q: a first pass computes
  log q without any gradient matmul (one extra LM-head matmul, about 1/3 of the loop's cost),
  then the gradient pass uses the weights it gave;
- a self-normalised scheme (MemFT) divides by its weight sum: with the weights known per row,
  only that one scalar is late, so the loop accumulates gradients with divisor 1 and backward
  scales them by 1/D. With the KL anchor as well, whose gradient shares the buffer with a
  different divisor, it takes the first pass instead.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from infosft.losses.chunking import rows_per_block, rows_per_chunk
from infosft.losses.reference import (
    IGNORE_INDEX,
    check_loss_arguments,
    check_targets,
    check_top_k,
    loss_denominator,
    normalizer,
    shift_labels,
    weighted_sum,
)
from infosft.objectives import Scheme, TokenInputs

# Tests set this to run the CUDA layout on CPU: bf16/fp16 matmul operands with float32 results
# (emulated on CPU, which has no mm(out_dtype=) kernel) and the gradient in its own buffer of
# the matmul dtype instead of over the logits.
_CUDA_LAYOUT_ON_CPU = False

NEGLIGIBLE_COEF = 2.0**-100
# Columns per tile in the top-K search of EAFT's entropy (:func:`max_and_top_k`).
TOP_K_TILE = 64


class TokenStats(NamedTuple):
    """Per-micro-batch sums over target tokens: float32 0-dim tensors, detached.

    Sums (not means) so that micro-batches and ranks aggregate by addition. The weight columns
    are the scheme's w (MemFT: 0 or 1, before its division by the weight sum); with
    ``target_weights`` they describe those weights, q is still the current model's.
    ``sum_kl`` is the sum of KL(p_base || p_theta) over the tokens when the KL anchor is on.
    """

    num_tokens: Tensor
    sum_q: Tensor
    sum_weight: Tensor
    num_zero_weight: Tensor
    sum_nll: Tensor
    sum_entropy: Tensor
    sum_kl: Tensor | None = None

    def means(self) -> dict[str, float]:
        """mean_q, mean_weight, zero_weight_share, nll, entropy and, with the KL anchor,
        kl_to_base (the mean KL; NaN when there is no token): the keys training logs use."""
        names = ("mean_q", "mean_weight", "zero_weight_share", "nll", "entropy", "kl_to_base")
        sums = {
            name: value for name, value in zip(names, self[1:], strict=True) if value is not None
        }
        n = float(self.num_tokens)
        return {name: math.nan if n == 0 else float(value) / n for name, value in sums.items()}


class TargetScores(NamedTuple):
    """Per-token scores aligned with labels: position t scores labels[t]; 0 where no target."""

    log_probs: Tensor
    """[B, T] float32 (float64 for float64 inputs) log q of each target token."""
    entropy: Tensor
    """[B, T] entropy (nats) of the distribution that predicted the token."""
    weights: Tensor | None
    """[B, T] float32 weights of ``method`` on these tokens, when a method was given."""


def chunk_softmax_grad(
    logits: Tensor,
    targets: Tensor,
    grad_out: Tensor,
    with_entropy: bool,
    top_k: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per-chunk math shared by every device: log q, entropies, and softmax - onehot.

    Args:
        logits: [C, V] float32/float64 logits of C target positions.
        targets: [C] int64 target ids.
        grad_out: [C, V] buffer (any float dtype) that receives ``softmax(logits) - onehot``,
            i.e. d(-log q)/d logits; the caller scales each row by its weight. It may be
            ``logits`` itself (overwritten in place) unless ``with_entropy``.
        with_entropy: also return the entropy of each row (one more read of the chunk).
        top_k: also return the entropy of the softmax over each row's ``top_k`` largest logits.

    Returns:
        (log_probs [C], logsumexp [C], entropy [C] or None, top-K entropy [C] or None), in the
        logits' dtype.
    """
    top_k_entropy = None
    if top_k is None:
        row_max, argmax = logits.max(dim=1, keepdim=True)
    else:
        # Read before the softmax below may overwrite the logits.
        row_max, argmax, top = max_and_top_k(logits, top_k)
        top_k_entropy = torch.special.entr(top.softmax(dim=1)).sum(dim=1)
    col = targets.unsqueeze(1)
    target_logits = logits.gather(1, col)
    # softmax is one fused pass per row; out= reuses the buffer instead of faulting in new pages.
    if grad_out.dtype == logits.dtype:
        probs = torch.softmax(logits, dim=1, out=grad_out)
    else:
        probs = torch.softmax(logits, dim=1)
    # p at the row's argmax is 1/sum(exp(z - max)) >= 1/V, so this lse never sees an underflow.
    lse = row_max - probs.gather(1, argmax).log()
    log_probs = (target_logits - lse).squeeze(1)
    entropy = None
    if with_entropy:
        # H = lse - sum_j p_j z_j; bmm sums the products without a [C, V] temporary.
        expected = torch.bmm(probs.unsqueeze(1), logits.unsqueeze(2)).view(-1, 1)
        entropy = (lse - expected).squeeze(1)
    target_probs = probs.gather(1, col)
    if probs is not grad_out:
        grad_out.copy_(probs)
    grad_out.scatter_(1, col, (target_probs - 1).to(grad_out.dtype))
    return log_probs, lse.squeeze(1), entropy, top_k_entropy


def max_and_top_k(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's maximum [C, 1], a column holding it [C, 1], and its k largest values [C, k]
    (unsorted) of ``logits`` [C, V], in about one read of the chunk.

    The columns are cut into tiles of ``TOP_K_TILE``; the k largest values lie in the k tiles
    with the largest maxima (a value in any other tile is below that tile's maximum, hence below
    k values), so the search runs over the tile maxima and then over k tiles.
    """
    rows, vocab = logits.shape
    if vocab % TOP_K_TILE or vocab // TOP_K_TILE < k:
        row_max, argmax = logits.max(dim=1, keepdim=True)
        return row_max, argmax, logits.topk(k, dim=1, sorted=False).values
    tiles = logits.view(rows, vocab // TOP_K_TILE, TOP_K_TILE)
    best = tiles.amax(dim=2).topk(k, dim=1).indices  # sorted: best[:, 0] holds the maximum
    picked = tiles.gather(1, best.unsqueeze(2).expand(rows, k, TOP_K_TILE))
    row_max, column = picked[:, 0].max(dim=1, keepdim=True)
    argmax = best[:, :1] * TOP_K_TILE + column
    return row_max, argmax, picked.view(rows, -1).topk(k, dim=1, sorted=False).values


def chunk_base_kl(logits: Tensor, base_logits: Tensor, base_probs_out: Tensor) -> Tensor:
    """The base model's share of KL(p_base || p_theta) per row of a chunk.

    Args:
        logits: [C, V] the trained model's logits z (read only).
        base_logits: [C, V] the base model's logits z_b; overwritten with z_b - z.
        base_probs_out: [C, V] buffer of the same dtype that receives p_base = softmax(z_b).

    Returns:
        [C] ``sum_j p_base_j (z_b - z)_j - logsumexp(z_b)``; adding logsumexp(z) gives the KL,
        since log p_base - log p_theta = (z_b - lse_b) - (z - lse).
    """
    row_max, argmax = base_logits.max(dim=1, keepdim=True)
    probs = torch.softmax(base_logits, dim=1, out=base_probs_out)
    lse = row_max - probs.gather(1, argmax).log()
    diff = base_logits.sub_(logits)
    return (torch.bmm(probs.unsqueeze(1), diff.unsqueeze(2)).view(-1, 1) - lse).squeeze(1)


ChunkFn = Callable[..., tuple[Tensor, Tensor, Tensor | None, Tensor | None]]
WeighFn = Callable[[TokenInputs, slice], Tensor]
"""The engine's ``fn(tokens, rows)``: float32 weights [C] of the target rows ``rows``. Only the
engine sees ``rows``; a scheme's weight function sees the tokens' values alone."""


@functools.cache
def _compiled(fn: Callable, device_type: str, use_compile: bool | None) -> Callable:
    """``fn``, compiled where asked; by default on CUDA when Triton is there."""
    if use_compile is None:
        use_compile = device_type == "cuda" and importlib.util.find_spec("triton") is not None
    if not use_compile:
        return fn
    return torch.compile(fn, dynamic=True)


def _mm(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """``out = a @ b`` (``out += a @ b`` with accumulate); bf16/fp16 operands into a float32
    ``out`` use cuBLAS's float32 output, so nothing is rounded to 16 bits before it is summed."""
    if a.dtype != out.dtype and out.device.type != "cuda":
        # The CUDA layout forced on CPU: torch has no CPU kernel for mm(out_dtype=).
        a, b = a.to(out.dtype), b.to(out.dtype)
    kwargs = {"out_dtype": out.dtype} if a.dtype != out.dtype else {}
    if accumulate:
        return torch.addmm(out, a, b, out=out, **kwargs)
    return torch.mm(a, b, out=out, **kwargs)


def _move_rows_up(matrix: Tensor, keep: Tensor, scratch: Tensor) -> Tensor:
    """``matrix[keep]`` in place as ``matrix[:len(keep)]``, through ``scratch`` rows at a time.

    ``keep`` is ascending, so keep[i] >= i: a block's destination rows are never the source of
    a later block, and each block is read into the scratch before it is written.
    """
    for first in range(0, keep.numel(), scratch.shape[0]):
        rows = keep[first : first + scratch.shape[0]]
        torch.index_select(matrix, 0, rows, out=scratch[: rows.numel()])
        matrix[first : first + rows.numel()].copy_(scratch[: rows.numel()])
    return matrix[: keep.numel()]


class _Head(NamedTuple):
    """An LM head applied to target rows: rows [N, H] and weight [V, H] in the matmul dtype,
    bias [V] in the accumulation dtype or None."""

    rows: Tensor
    weight: Tensor
    bias: Tensor | None


class _Loop(NamedTuple):
    """What the chunk loop computes besides log q, and how."""

    chunk_size: int
    with_entropy: bool
    top_k: int | None
    in_place: bool  # the gradient may overwrite the logits buffer (CPU layout)
    chunk_fn: ChunkFn
    kl_fn: Callable[[Tensor, Tensor, Tensor], Tensor]


class _Result(NamedTuple):
    log_probs: Tensor  # [N] float32+, detached
    weights: Tensor | None  # [N] float32
    entropy: Tensor | None  # [N]
    top_k_entropy: Tensor | None  # [N]
    kl: Tensor | None  # [N] KL(p_base || p_theta)
    grad_rows: Tensor | None  # [N, H] float32+, d loss / d hidden rows (before upstream scale)
    grad_weight: Tensor | None  # [V, H] float32+
    grad_bias: Tensor | None  # [V] float32+


def _chunk_loop(
    head: _Head,
    base: _Head | None,
    targets: Tensor,
    weigh: WeighFn | None,
    inv_n: Tensor | None,
    kl_coef: Tensor | None,
    needs: tuple[bool, bool, bool],
    loop: _Loop,
) -> _Result:
    """One pass over the target rows: log q (and what ``loop`` asks), the weights from
    ``weigh`` (None: no weights, no gradients) and the gradients of
    ``sum(-w log q) * inv_n + kl_coef * sum KL(p_base || p_theta)`` that ``needs`` asks for."""
    rows, weight, bias = head
    n, vocab = rows.shape[0], weight.shape[0]
    device = rows.device
    acc_dtype = torch.promote_types(rows.dtype, torch.float32)
    need_rows, need_weight, need_bias = needs
    any_grad = weigh is not None and any(needs)

    def per_row(wanted: bool, dtype: torch.dtype = acc_dtype) -> Tensor | None:
        return torch.empty(n, device=device, dtype=dtype) if wanted else None

    log_probs = per_row(True)
    weights = per_row(weigh is not None, torch.float32)
    entropy = per_row(loop.with_entropy)
    top_k_entropy = per_row(loop.top_k is not None)
    kl = per_row(base is not None)
    grad_rows = grad_weight = grad_bias = None
    if any_grad:
        grad_rows = torch.zeros(rows.shape, device=device, dtype=acc_dtype) if need_rows else None
        grad_weight = (
            torch.zeros(weight.shape, device=device, dtype=acc_dtype) if need_weight else None
        )
        grad_bias = torch.zeros(vocab, device=device, dtype=acc_dtype) if need_bias else None

    c = min(loop.chunk_size, n)

    def buffer(dtype: torch.dtype = acc_dtype, rows: int = c) -> Tensor:
        return torch.empty((rows, vocab), device=device, dtype=dtype)

    logits_buf = buffer()
    base_buf = buffer() if base is not None else None
    base_probs_buf = buffer() if base is not None else None
    # On CPU the gradient overwrites the logits (one [C, V] buffer) unless the entropy needs
    # both; on CUDA it goes to its own buffer in the matmul dtype (bf16 for bf16 inputs). With
    # the KL anchor, the base logits' buffer is free by the time the gradient is written.
    in_place = loop.in_place and not loop.with_entropy
    if in_place:
        grad_buf = logits_buf
    elif base_buf is not None and rows.dtype == acc_dtype:
        grad_buf = base_buf
    else:
        grad_buf = buffer(rows.dtype)
    # Zero-weight rows are squeezed out (below) only without the anchor, whose gradient
    # reaches every row.
    compaction = any_grad and base is None
    scratch = None
    if compaction and in_place:
        scratch = buffer(rows=max(1, min(c, rows_per_block(vocab))))
    weight_t = weight.t()
    base_weight_t = base.weight.t() if base is not None else None
    for start in range(0, n, loop.chunk_size):
        sl = slice(start, min(start + loop.chunk_size, n))
        h = rows[sl]
        logits = logits_buf[: h.shape[0]]
        _mm(h, weight_t, out=logits)
        if bias is not None:
            logits.add_(bias)
        base_probs = kl_part = None
        if base is not None:
            base_logits = base_buf[: h.shape[0]]
            _mm(base.rows[sl], base_weight_t, out=base_logits)
            if base.bias is not None:
                base_logits.add_(base.bias)
            base_probs = base_probs_buf[: h.shape[0]]
            kl_part = loop.kl_fn(logits, base_logits, base_probs)
        grad_z = grad_buf[: h.shape[0]]
        lp, lse, ent, top_ent = loop.chunk_fn(
            logits, targets[sl], grad_z, loop.with_entropy, loop.top_k
        )
        log_probs[sl] = lp
        if ent is not None:
            entropy[sl] = ent
        if top_ent is not None:
            top_k_entropy[sl] = top_ent
        if kl_part is not None:
            kl[sl] = kl_part + lse
        if weigh is None:
            continue
        w = weigh(TokenInputs(lp, ent, top_ent), sl)
        weights[sl] = w
        if not any_grad:
            continue
        coef = w.to(acc_dtype) * inv_n
        # A row scale below 2**-100 only adds gradients far under float32's normal range, which
        # CPUs process many times slower (denormals), and nothing next to any other row's.
        coef = coef.masked_fill(coef.abs() < NEGLIGIBLE_COEF, 0.0)
        if base is not None:
            # d/dz [coef * -log q + kl_coef * KL] = s (p - onehot) + kl_coef (onehot - p_base)
            # with s = coef + kl_coef: s scales the row on the [C, H] side as below, and the
            # anchor's term joins the [C, V] side divided by s, in one fused pass.
            coef = coef + kl_coef
            coef = coef.masked_fill(coef == 0, torch.finfo(acc_dtype).tiny)
            ratio = (kl_coef / coef).unsqueeze(1)
            grad_z.addcmul_(base_probs, ratio, value=-1)
            grad_z.scatter_add_(1, targets[sl].unsqueeze(1), ratio.to(grad_z.dtype))
        compact = False
        if compaction:
            # Rows of weight 0 add nothing to any gradient: leave them out of the two matmuls.
            keep = (coef != 0).nonzero().squeeze(1)
            compact = keep.numel() < h.shape[0]
            if compact:
                if keep.numel() == 0:
                    continue
                if in_place:
                    grad_z = _move_rows_up(grad_z, keep, scratch)
                elif grad_z.dtype == logits.dtype:  # the logits' buffer is free by now
                    grad_z = torch.index_select(grad_z, 0, keep, out=logits[: keep.numel()])
                else:
                    grad_z = grad_z[keep]
                h, coef = h[keep], coef[keep]
        # d loss / d z = coef * (softmax - onehot): the row scale goes on the [C, H] side.
        if grad_rows is not None:
            dest = grad_rows.new_empty(h.shape) if compact else grad_rows[sl]
            _mm(grad_z, weight, out=dest).mul_(coef.unsqueeze(1))
            if compact:
                grad_rows[sl].index_copy_(0, keep, dest)
        if grad_weight is not None:
            scaled = (h.to(acc_dtype) * coef.unsqueeze(1)).to(h.dtype)
            _mm(grad_z.t(), scaled, out=grad_weight, accumulate=True)
        if grad_bias is not None:
            grad_bias.addmv_(grad_z.t().to(acc_dtype), coef)
    return _Result(
        log_probs, weights, entropy, top_k_entropy, kl, grad_rows, grad_weight, grad_bias
    )


class _Problem(NamedTuple):
    """A validated call of the fused loss: everything but the differentiable tensors."""

    scheme: Scheme
    positions: Tensor  # [N] flat indices (into B*T) of the positions that have a target
    targets: Tensor  # [N] their target ids
    sequence_ids: Tensor  # [N] the row of labels each target belongs to
    target_weights: Tensor | None  # [N] float32 fixed weights, or None for the scheme's
    num_items_in_batch: int | Tensor | None
    num_targets: Tensor  # 0-dim count of N
    base: tuple[Tensor, Tensor, Tensor | None] | None  # base hidden [B, T, H'], weight, bias
    kl_to_base: float
    mm_dtype: torch.dtype
    loop: _Loop


def _project(hidden: Tensor, weight: Tensor, bias: Tensor | None, problem: _Problem) -> _Head:
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, problem.positions)
    acc_dtype = torch.promote_types(problem.mm_dtype, torch.float32)
    return _Head(
        rows.to(problem.mm_dtype),
        weight.to(problem.mm_dtype),
        None if bias is None else bias.to(acc_dtype),
    )


def _compute(
    head: _Head, problem: _Problem, needs: tuple[bool, bool, bool]
) -> tuple[Tensor, _Result, Tensor | None]:
    """The loss, the per-row results, and the factor backward applies to the gradients on top
    of the upstream gradient (None: 1)."""
    scheme, loop = problem.scheme, problem.loop
    acc_dtype = torch.promote_types(head.rows.dtype, torch.float32)
    device = head.rows.device
    inv_tokens = 1.0 / torch.as_tensor(
        normalizer(problem.num_items_in_batch, problem.num_targets), dtype=acc_dtype, device=device
    )
    base = None if problem.base is None else _project(*problem.base, problem)
    kl_coef = problem.kl_to_base * inv_tokens if base is not None else None
    all_weights = problem.target_weights
    result = None
    if all_weights is None and (
        scheme.needs_batch_statistic or (scheme.self_normalised and base is not None)
    ):
        # The weights need every row's log q first. Without gradients this is the only pass;
        # with them it does no gradient matmul, and the pass below uses its weights.
        only = not any(needs)
        first_loop = loop._replace(
            with_entropy=loop.with_entropy if only else scheme.needs_entropy, top_k=scheme.top_k
        )
        first = _chunk_loop(
            head, base if only else None, problem.targets, None, None, None, needs, first_loop
        )
        tokens = TokenInputs(first.log_probs, first.entropy, first.top_k_entropy)
        statistic = scheme.statistic(tokens, problem.sequence_ids)
        all_weights = scheme.weights(tokens._replace(statistic=statistic))
        result = first._replace(weights=all_weights) if only else None
        loop = loop._replace(top_k=None)

    def weigh(tokens: TokenInputs, rows: slice) -> Tensor:
        return scheme.weights(tokens) if all_weights is None else all_weights[rows]

    def inverse_denominator(weights: Tensor) -> Tensor:
        count, targets = problem.num_items_in_batch, problem.num_targets
        denominator = loss_denominator(scheme, count, targets, weights.sum())
        return 1.0 / torch.as_tensor(denominator, dtype=acc_dtype, device=device)

    # A self-normalised scheme divides by its weight sum: known now if the weights are, else
    # applied after the loop (fold).
    fold = scheme.self_normalised and all_weights is None
    if not scheme.self_normalised:
        inv_n = inv_tokens
    elif fold:
        inv_n = torch.ones((), dtype=acc_dtype, device=device)
    else:
        inv_n = inverse_denominator(all_weights)
    if result is None:
        result = _chunk_loop(head, base, problem.targets, weigh, inv_n, kl_coef, needs, loop)
    loss = -weighted_sum(result.weights, result.log_probs) * inv_n
    scale = None
    if fold:
        scale = inverse_denominator(result.weights)
        loss = loss * scale
    if base is not None:
        loss = loss + result.kl.sum() * kl_coef
    return loss, result, scale


class _FusedWeightedNLL(torch.autograd.Function):
    """Loss and all its gradients in forward; backward scales them by the upstream scalar."""

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        problem: _Problem,
        needs: tuple[bool, bool, bool],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        # Our matmuls pick their own precision; an enclosing autocast must not recast them.
        with torch.autocast(hidden.device.type, enabled=False):
            head = _project(hidden, weight, bias, problem)
            loss, result, scale = _compute(head, problem, needs)
        ctx.grads = (result.grad_rows, result.grad_weight, result.grad_bias)
        ctx.scale = scale
        ctx.positions = problem.positions
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        empty = result.log_probs.new_empty(0)
        entropy = result.entropy if result.entropy is not None else empty
        kl = result.kl if result.kl is not None else empty
        ctx.mark_non_differentiable(result.log_probs, result.weights, entropy, kl)
        return loss, result.log_probs, result.weights, entropy, kl

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_unused: Tensor):
        if ctx.grads is None:
            raise RuntimeError(
                "fused_weighted_nll_loss computes its gradients in the forward pass and hands "
                "them out once; backward through the same loss twice (retain_graph=True) is not "
                "supported: compute the loss again instead"
            )
        grad_rows, grad_weight, grad_bias = ctx.grads
        ctx.grads = None
        factor = grad_loss if ctx.scale is None else grad_loss * ctx.scale
        # Scale in place: these buffers belong to this call alone.
        grad_hidden = None
        if grad_rows is not None:
            shape, dtype = ctx.hidden_meta
            grad_hidden = torch.zeros(shape, dtype=dtype, device=grad_rows.device)
            grad_hidden.view(-1, shape[-1]).index_copy_(
                0, ctx.positions, grad_rows.mul_(factor).to(dtype)
            )
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(factor).to(ctx.weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(factor).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def _check_head(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, prefix: str = ""
) -> None:
    if hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"{prefix}hidden_states must be [B, T, H] and labels [B, T] with the same B and T; "
            f"got {prefix}hidden_states {tuple(hidden.shape)} and labels {tuple(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"{prefix}lm_head_weight must be [V, H] with H = {prefix}hidden_states.shape[-1] = "
            f"{hidden.shape[2]}; got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"{prefix}lm_head_bias must be [V] = [{weight.shape[0]}] like {prefix}lm_head_weight's "
            f"first dimension; got {tuple(bias.shape)}"
        )


def _prepare(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    *,
    method: str | Scheme,
    p_bar: float | None,
    method_args: Mapping[str, Any] | None,
    ignore_index: int,
    chunk_size: int | None,
    with_entropy: bool,
    use_compile: bool | None,
    num_items_in_batch: int | Tensor | None = None,
    base: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None),
    kl_to_base: float = 0.0,
    target_weights: Tensor | None = None,
) -> _Problem:
    """Validate a call once and turn it into a :class:`_Problem`."""
    base_hidden, base_weight, base_bias = base
    inputs = {"hidden_states": hidden, "lm_head_weight": weight, "lm_head_bias": bias}
    inputs |= {"base_hidden_states": base_hidden, "base_lm_head_weight": base_weight}
    inputs |= {"base_lm_head_bias": base_bias, "target_weights": target_weights}
    scheme, labels, num_items_in_batch, ignore_index, beta = check_loss_arguments(
        labels,
        inputs,
        method=method,
        p_bar=p_bar,
        method_args=method_args,
        num_items_in_batch=num_items_in_batch,
        ignore_index=ignore_index,
        kl_to_base=kl_to_base,
        base_name="base_hidden_states",
    )
    if (base_hidden is None) != (base_weight is None):
        raise ValueError(
            "the KL anchor needs both base_hidden_states and base_lm_head_weight (the base "
            "model's final hidden states and its LM head); got only one of them"
        )
    _check_head(hidden, weight, bias, labels)
    if beta > 0:
        _check_head(base_hidden, base_weight, base_bias, labels, prefix="base_")
        if base_weight.shape[0] != weight.shape[0]:
            raise ValueError(
                f"base_lm_head_weight has {base_weight.shape[0]} rows but lm_head_weight "
                f"{weight.shape[0]}: the base and trained models must share the vocabulary"
            )
    if target_weights is not None and target_weights.shape != labels.shape:
        raise ValueError(
            f"target_weights must be [B, T] like labels {tuple(labels.shape)}; "
            f"got {tuple(target_weights.shape)}"
        )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    vocab = weight.shape[0]
    check_top_k(scheme, vocab)

    targets = shift_labels(labels, ignore_index)
    # Shifted like labels: position t carries the weight of its target labels[t + 1].
    shifted_weights = None if target_weights is None else shift_labels(target_weights.detach(), 0)
    mask = check_targets(targets, vocab, ignore_index, num_items_in_batch, shifted_weights)
    positions = mask.reshape(-1).nonzero().squeeze(1)
    targets = targets.reshape(-1).index_select(0, positions)
    fixed = None
    if shifted_weights is not None:
        fixed = shifted_weights.reshape(-1).index_select(0, positions).float()

    device = hidden.device
    if torch.is_autocast_enabled(device.type):
        input_dtype = torch.get_autocast_dtype(device.type)
    else:
        input_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    cuda_layout = device.type == "cuda" or _CUDA_LAYOUT_ON_CPU
    low_precision = input_dtype in (torch.float16, torch.bfloat16)
    mm_dtype = input_dtype if cuda_layout and low_precision else None
    mm_dtype = mm_dtype or torch.promote_types(input_dtype, torch.float32)
    chunk_fn = _compiled(chunk_softmax_grad, device.type, use_compile)
    loop = _Loop(
        chunk_size=chunk_size or rows_per_chunk(len(positions), vocab, device),
        with_entropy=with_entropy or (scheme.needs_entropy and fixed is None),
        top_k=scheme.top_k if fixed is None else None,
        # torch 2.13's inductor fails (KeyError in codegen) on a compiled call whose logits and
        # gradient are the same view of a larger buffer, so compiled chunks never overwrite.
        in_place=not cuda_layout and chunk_fn is chunk_softmax_grad,
        chunk_fn=chunk_fn,
        kl_fn=_compiled(chunk_base_kl, device.type, use_compile),
    )
    return _Problem(
        scheme=scheme,
        positions=positions,
        targets=targets,
        sequence_ids=positions // labels.shape[1],
        target_weights=fixed,
        num_items_in_batch=num_items_in_batch,
        num_targets=mask.sum(),
        base=(base_hidden, base_weight, base_bias) if beta > 0 else None,
        kl_to_base=beta,
        mm_dtype=mm_dtype,
        loop=loop,
    )


def _token_stats(
    log_probs: Tensor, weights: Tensor, entropy: Tensor, kl: Tensor | None
) -> TokenStats:
    lp = log_probs.float()
    return TokenStats(
        num_tokens=torch.tensor(float(lp.numel()), device=lp.device),
        sum_q=lp.exp().sum(),
        sum_weight=weights.sum(),
        num_zero_weight=(weights == 0).sum().float(),
        sum_nll=-lp.sum(),
        sum_entropy=entropy.float().sum(),
        sum_kl=None if kl is None else kl.float().sum(),
    )


def fused_weighted_nll_loss(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    method: str | Scheme = "infosft",
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
    num_items_in_batch: int | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    lm_head_bias: Tensor | None = None,
    base_hidden_states: Tensor | None = None,
    base_lm_head_weight: Tensor | None = None,
    base_lm_head_bias: Tensor | None = None,
    kl_to_base: float = 0.0,
    chunk_size: int | None = None,
    return_stats: bool = False,
    target_weights: Tensor | None = None,
    use_compile: bool | None = None,
) -> Tensor | tuple[Tensor, TokenStats]:
    """:func:`~infosft.losses.reference.weighted_nll_loss` of ``hidden_states @ W.T + b``,
    computed chunk by chunk without the [B, T, V] logits; same value and gradients.

    Args:
        hidden_states: [B, T, H] float, the model's last hidden states (after the final norm).
        lm_head_weight: [V, H] float, the output projection.
        labels, method, p_bar, method_args, num_items_in_batch, ignore_index: as for
            :func:`~infosft.losses.reference.weighted_nll_loss`; a batch statistic (TALR's tau)
            is taken over this call's sequences (the micro-batch on this rank).
        lm_head_bias: optional [V] bias of the projection.
        base_hidden_states: [B, T, H'] final hidden states of the frozen base model on the
            same inputs, for the KL anchor (read as constants).
        base_lm_head_weight: [V, H'] the base model's LM head (read as a constant).
        base_lm_head_bias: optional [V] bias of the base model's LM head.
        kl_to_base: as for the reference loss; the base logits are projected chunk by chunk
            beside the trained ones.
        chunk_size: target positions per chunk; None picks it from a memory budget of float32
            logits per chunk (:func:`infosft.losses.chunking.rows_per_chunk`).
        return_stats: also return :class:`TokenStats`. The entropy in it costs one more read
            of every chunk and, on CPU, a second chunk-sized buffer (the logits are kept
            next to their gradient).
        target_weights: optional [B, T] float weights aligned with labels (same positions as
            labels, before the shift), used instead of the scheme's w -- e.g. static weights
            computed once from the frozen base model. Read as constants (no gradient); at
            target positions each must be finite and within [0,
            :data:`~infosft.objectives.MAX_WEIGHT`].
        use_compile: run the per-chunk softmax through ``torch.compile``; None does so on CUDA
            when Triton is installed.

    Returns:
        float32 scalar (float64 for float64 inputs), or ``(loss, stats)`` with return_stats;
        0 with zero gradients when no label is a target (whatever ``num_items_in_batch``).
        Its gradients for hidden states, weight and bias (those that require grad, with grad
        mode on) are computed during this call; backward only scales them by the upstream
        gradient and casts them to each input's dtype. On CUDA, bf16/fp16 matmuls accumulate
        in float32; on CPU, bf16/fp16 inputs are computed in float32 (faster there).

    Raises:
        ValueError: naming the argument, before any matmul, for each bad one (the checks
            shared with the reference loss, :func:`~infosft.losses.reference.check_loss_arguments`
            and :func:`~infosft.losses.reference.check_targets`, then shapes and chunk_size).
    """
    problem = _prepare(
        hidden_states,
        lm_head_weight,
        lm_head_bias,
        labels,
        method=method,
        p_bar=p_bar,
        method_args=method_args,
        num_items_in_batch=num_items_in_batch,
        ignore_index=ignore_index,
        base=(base_hidden_states, base_lm_head_weight, base_lm_head_bias),
        kl_to_base=kl_to_base,
        chunk_size=chunk_size,
        target_weights=target_weights,
        with_entropy=return_stats,
        use_compile=use_compile,
    )
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden_states.requires_grad,
        grad_on and lm_head_weight.requires_grad,
        grad_on and lm_head_bias is not None and lm_head_bias.requires_grad,
    )
    loss, log_probs, weights, entropy, kl = _FusedWeightedNLL.apply(
        hidden_states, lm_head_weight, lm_head_bias, problem, needs
    )
    if not return_stats:
        return loss
    return loss, _token_stats(log_probs, weights, entropy, kl if problem.base is not None else None)


def score_targets(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    lm_head_bias: Tensor | None = None,
    method: str | Scheme | None = None,
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> TargetScores:
    """log q and entropy of every target token, through the fused engine without gradients.

    Args:
        hidden_states: [B, T, H] final hidden states; lm_head_weight [V, H]; lm_head_bias [V].
        labels: [B, T] integer, aligned with input_ids; ``ignore_index`` marks non-targets.
        method: also return this scheme's weights of the tokens (a batch statistic such as
            TALR's tau is taken over these B sequences); p_bar and method_args as for the loss.
        chunk_size: as for :func:`fused_weighted_nll_loss`.

    Returns:
        :class:`TargetScores` aligned with labels (position t scores labels[t], as
        ``labels`` is written), 0 where there is no target. No [B, T, V] tensor is built.
    """
    with torch.no_grad():
        problem = _prepare(
            hidden_states,
            lm_head_weight,
            lm_head_bias,
            labels,
            method="nll" if method is None else method,
            p_bar=p_bar,
            method_args=method_args,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
            with_entropy=True,
            use_compile=False,
        )
        with torch.autocast(hidden_states.device.type, enabled=False):
            head = _project(hidden_states, lm_head_weight, lm_head_bias, problem)
            _, result, _ = _compute(head, problem, (False, False, False))

        def aligned(values: Tensor) -> Tensor:
            flat = values.new_zeros(labels.numel())
            flat[problem.positions] = values
            # Position t predicted labels[t + 1]; move each value onto the label it scores.
            return torch.nn.functional.pad(flat.view(labels.shape)[:, :-1], (1, 0))

        weights = aligned(result.weights) if method is not None else None
        return TargetScores(aligned(result.log_probs), aligned(result.entropy), weights)
