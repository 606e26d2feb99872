"""Weighted NLL straight from hidden states and the LM head, without a logits tensor.

The weight of a token depends only on the detached q, which is known as soon as its logits row
is, so the gradient of ``-sg(w) * log q`` with respect to the logits is known in the forward
pass: ``d/dz = w * (softmax(z) - onehot(y))``. :func:`fused_weighted_nll_loss` therefore walks
over chunks of target rows once, and per chunk does the three matmuls plain cross-entropy needs
(logits, grad of hidden, grad of weight) and forgets the chunk. Backward only multiplies the
saved gradients by the scalar upstream gradient (the gradient-accumulation scale).

Two further savings: only positions with a target are projected, and rows whose weight is 0
(InfoSFT's tokens with q >= p_bar) are dropped from the two gradient matmuls.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from infosft.losses.chunking import rows_per_block, rows_per_chunk
from infosft.losses.reference import check_targets, normalizer, shift_labels, weighted_sum
from infosft.objectives import DEFAULT_P_BAR, check_p_bar, get_weighting, token_weights


class TokenStats(NamedTuple):
    """Per-micro-batch sums over target tokens: float32 0-dim tensors, detached.

    Sums (not means) so that micro-batches and ranks aggregate by addition. With
    ``target_weights`` the weight columns describe those weights, q is still the current model's.
    """

    num_tokens: Tensor
    sum_q: Tensor
    sum_weight: Tensor
    num_zero_weight: Tensor
    sum_nll: Tensor
    sum_entropy: Tensor

    def means(self) -> dict[str, float]:
        """mean_q, mean_weight, zero_weight_share, nll, entropy (NaN when there is no token)."""
        n = float(self.num_tokens)
        if n == 0:
            return dict.fromkeys(
                ("mean_q", "mean_weight", "zero_weight_share", "nll", "entropy"), math.nan
            )
        return {
            "mean_q": float(self.sum_q) / n,
            "mean_weight": float(self.sum_weight) / n,
            "zero_weight_share": float(self.num_zero_weight) / n,
            "nll": float(self.sum_nll) / n,
            "entropy": float(self.sum_entropy) / n,
        }


def chunk_softmax_grad(
    logits: Tensor, targets: Tensor, grad_out: Tensor, with_entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-chunk math shared by every device: log q, entropy, and softmax - onehot.

    Args:
        logits: [C, V] float32/float64 logits of C target positions.
        targets: [C] int64 target ids.
        grad_out: [C, V] buffer (any float dtype) that receives ``softmax(logits) - onehot``,
            i.e. d(-log q)/d logits; the caller scales each row by its weight. It may be
            ``logits`` itself (overwritten in place) unless ``with_entropy``.
        with_entropy: also return the entropy of each row (one more read of the chunk).

    Returns:
        (log_probs [C], entropy [C] or None), in the logits' dtype.
    """
    row_max, argmax = logits.max(dim=1, keepdim=True)
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
    return log_probs, entropy


ChunkFn = Callable[[Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]
WeightsFn = Callable[[Tensor, slice], Tensor]
"""``fn(log_probs, rows)``: float32 weights [C] of the target rows ``rows`` given their log q."""


@functools.cache
def _chunk_fn(device_type: str, use_compile: bool | None) -> ChunkFn:
    """``chunk_softmax_grad``, compiled where asked; by default on CUDA when Triton is there."""
    if use_compile is None:
        use_compile = device_type == "cuda" and importlib.util.find_spec("triton") is not None
    if not use_compile:
        return chunk_softmax_grad
    return torch.compile(chunk_softmax_grad, dynamic=True)


def _mm(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """``out = a @ b`` (``out += a @ b`` with accumulate); bf16/fp16 operands into a float32
    ``out`` use cuBLAS's float32 output, so nothing is rounded to 16 bits before it is summed."""
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


class _Result(NamedTuple):
    log_probs: Tensor  # [N] float32+, detached
    weights: Tensor  # [N] float32
    entropy: Tensor | None  # [N]
    grad_rows: Tensor | None  # [N, H] float32+, d loss / d hidden rows (before upstream scale)
    grad_weight: Tensor | None  # [V, H] float32+
    grad_bias: Tensor | None  # [V] float32+


def _forward_with_grads(
    rows: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    weights_fn: WeightsFn,
    inv_n: Tensor,
    needs: tuple[bool, bool, bool],
    chunk_size: int,
    with_entropy: bool,
    chunk_fn: ChunkFn,
) -> _Result:
    """The chunk loop: log q, weights and the three gradients of ``sum -w log q * inv_n``.

    ``rows`` [N, H] and ``weight`` [V, H] are already in the matmul dtype; ``weights_fn(lp, sl)``
    gives the weights of the rows ``sl`` from their log q.
    """
    n, vocab = rows.shape[0], weight.shape[0]
    device = rows.device
    acc_dtype = torch.promote_types(rows.dtype, torch.float32)
    need_rows, need_weight, need_bias = needs
    log_probs = torch.empty(n, device=device, dtype=acc_dtype)
    weights = torch.empty(n, device=device, dtype=torch.float32)
    entropy = torch.empty(n, device=device, dtype=acc_dtype) if with_entropy else None
    grad_rows = torch.zeros(rows.shape, device=device, dtype=acc_dtype) if need_rows else None
    grad_weight = torch.zeros(weight.shape, device=device, dtype=acc_dtype) if need_weight else None
    grad_bias = torch.zeros(vocab, device=device, dtype=acc_dtype) if need_bias else None
    any_grad = any(needs)

    c = min(chunk_size, n)
    logits_buf = torch.empty((c, vocab), device=device, dtype=acc_dtype)
    # On CPU the gradient overwrites the logits (one [C, V] buffer) unless the entropy needs
    # both; on CUDA it goes to its own buffer in the matmul dtype (bf16 for bf16 inputs).
    in_place = device.type != "cuda" and not with_entropy
    grad_buf = logits_buf if in_place else torch.empty((c, vocab), device=device, dtype=rows.dtype)
    scratch_rows = max(1, min(c, rows_per_block(vocab)))
    scratch = (
        torch.empty((scratch_rows, vocab), device=device, dtype=acc_dtype) if in_place else None
    )
    weight_t = weight.t()
    bias_acc = None if bias is None else bias.to(acc_dtype)
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        h = rows[sl]
        logits = logits_buf[: h.shape[0]]
        _mm(h, weight_t, out=logits)
        if bias_acc is not None:
            logits.add_(bias_acc)
        grad_z = grad_buf[: h.shape[0]]
        lp, ent = chunk_fn(logits, targets[sl], grad_z, with_entropy)
        log_probs[sl] = lp
        if ent is not None:
            entropy[sl] = ent
        w = weights_fn(lp, sl)
        weights[sl] = w
        if not any_grad:
            continue
        coef = w.to(acc_dtype) * inv_n
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
    return _Result(log_probs, weights, entropy, grad_rows, grad_weight, grad_bias)


class _FusedWeightedNLL(torch.autograd.Function):
    """Loss and all its gradients in forward; backward scales them by the upstream scalar."""

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        positions: Tensor,
        targets: Tensor,
        weights_fn: WeightsFn,
        norm: Tensor | int,
        needs: tuple[bool, bool, bool],
        mm_dtype: torch.dtype,
        chunk_size: int,
        with_entropy: bool,
        chunk_fn: ChunkFn,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions).to(mm_dtype)
        acc_dtype = torch.promote_types(mm_dtype, torch.float32)
        inv_n = 1.0 / torch.as_tensor(norm, dtype=acc_dtype, device=hidden.device)
        # Our matmuls pick their own precision; an enclosing autocast must not recast them.
        with torch.autocast(hidden.device.type, enabled=False):
            result = _forward_with_grads(
                rows,
                weight.to(mm_dtype),
                bias,
                targets,
                weights_fn,
                inv_n,
                needs,
                chunk_size,
                with_entropy,
                chunk_fn,
            )
        loss = -weighted_sum(result.weights, result.log_probs) * inv_n
        ctx.grads = (result.grad_rows, result.grad_weight, result.grad_bias)
        ctx.positions = positions
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        entropy = result.entropy if result.entropy is not None else result.log_probs.new_empty(0)
        ctx.mark_non_differentiable(result.log_probs, result.weights, entropy)
        return loss, result.log_probs, result.weights, entropy

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
        # Scale in place: these buffers belong to this call alone.
        grad_hidden = None
        if grad_rows is not None:
            shape, dtype = ctx.hidden_meta
            grad_hidden = torch.zeros(shape, dtype=dtype, device=grad_rows.device)
            grad_hidden.view(-1, shape[-1]).index_copy_(
                0, ctx.positions, grad_rows.mul_(grad_loss).to(dtype)
            )
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(grad_loss).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, *([None] * 9)


def _check_inputs(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Tensor | None,
    target_weights: Tensor | None,
    chunk_size: int | None,
) -> None:
    if hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden_states must be [B, T, H] and labels [B, T] with the same B and T; got "
            f"hidden_states {tuple(hidden.shape)} and labels {tuple(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"lm_head_weight must be [V, H] with H = hidden_states.shape[-1] = {hidden.shape[2]}; "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"lm_head_bias must be [V] = [{weight.shape[0]}] like lm_head_weight's first "
            f"dimension; got {tuple(bias.shape)}"
        )
    if target_weights is not None and target_weights.shape != labels.shape:
        raise ValueError(
            f"target_weights must be [B, T] like labels {tuple(labels.shape)}; "
            f"got {tuple(target_weights.shape)}"
        )
    floats = {"hidden_states": hidden, "lm_head_weight": weight, "lm_head_bias": bias}
    floats["target_weights"] = target_weights
    for name, tensor in floats.items():
        if tensor is not None and not torch.is_floating_point(tensor):
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
        if tensor is not None and tensor.device != hidden.device:
            raise ValueError(
                f"{name} is on {tensor.device} but hidden_states on {hidden.device}; "
                "move them to one device"
            )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _token_stats(log_probs: Tensor, weights: Tensor, entropy: Tensor) -> TokenStats:
    lp = log_probs.float()
    return TokenStats(
        num_tokens=torch.tensor(float(lp.numel()), device=lp.device),
        sum_q=lp.exp().sum(),
        sum_weight=weights.sum(),
        num_zero_weight=(weights == 0).sum().float(),
        sum_nll=-lp.sum(),
        sum_entropy=entropy.float().sum(),
    )


def fused_weighted_nll_loss(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    *,
    method: str = "infosft",
    p_bar: float = DEFAULT_P_BAR,
    num_items_in_batch: int | Tensor | None = None,
    ignore_index: int = -100,
    lm_head_bias: Tensor | None = None,
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
        labels: [B, T] integer, aligned with input_ids (shifted by one inside);
            ``ignore_index`` marks positions without a target.
        method: a registered weighting scheme ("nll", "dft", "infosft", ...).
        p_bar: InfoSFT's clip point, in (0, 1).
        num_items_in_batch: target tokens in the whole optimizer step (all accumulation
            micro-batches and ranks); None divides by this batch's target count.
        ignore_index: label value that is not a target.
        lm_head_bias: optional [V] bias of the projection.
        chunk_size: target positions per chunk; None picks it from a memory budget of float32
            logits per chunk (:func:`infosft.losses.chunking.rows_per_chunk`).
        return_stats: also return :class:`TokenStats`. The entropy in it costs one more read
            of every chunk and, on CPU, a second chunk-sized buffer (the logits are kept
            next to their gradient).
        target_weights: optional [B, T] float weights aligned with labels (same positions as
            labels, before the shift), used instead of w(q) of ``method`` -- e.g. static weights
            computed once from the frozen base model. Read as constants (no gradient).
        use_compile: run the per-chunk softmax through ``torch.compile``; None does so on CUDA
            when Triton is installed.

    Returns:
        float32 scalar (float64 for float64 inputs), or ``(loss, stats)`` with return_stats.
        Its gradients for hidden states, weight and bias (those that require grad, with grad
        mode on) are computed during this call; backward only scales them by the upstream
        gradient and casts them to each input's dtype. On CUDA, bf16/fp16 matmuls accumulate
        in float32; on CPU, bf16/fp16 inputs are computed in float32 (faster there).
    """
    p_bar = check_p_bar(p_bar)
    get_weighting(method)
    _check_inputs(hidden_states, lm_head_weight, labels, lm_head_bias, target_weights, chunk_size)
    vocab = lm_head_weight.shape[0]
    targets = shift_labels(labels, ignore_index)
    mask = check_targets(targets, vocab, ignore_index)
    positions = mask.reshape(-1).nonzero().squeeze(1)
    targets = targets.reshape(-1).index_select(0, positions)

    if target_weights is None:

        def weights_fn(log_probs: Tensor, rows: slice) -> Tensor:
            return token_weights(log_probs, method, p_bar)
    else:
        # Shifted like labels: position t carries the weight of its target labels[t + 1].
        fixed = shift_labels(target_weights.detach(), 0).reshape(-1).index_select(0, positions)
        fixed = fixed.float()
        if not bool(torch.isfinite(fixed).all()):
            raise ValueError(
                "target_weights has a non-finite value at a target position (labels != "
                "ignore_index); weights of ignored positions are not read and may be anything"
            )

        def weights_fn(log_probs: Tensor, rows: slice) -> Tensor:
            return fixed[rows]

    device = hidden_states.device
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden_states.requires_grad,
        grad_on and lm_head_weight.requires_grad,
        grad_on and lm_head_bias is not None and lm_head_bias.requires_grad,
    )
    if torch.is_autocast_enabled(device.type):
        input_dtype = torch.get_autocast_dtype(device.type)
    else:
        input_dtype = torch.promote_types(hidden_states.dtype, lm_head_weight.dtype)
    low_precision = input_dtype in (torch.float16, torch.bfloat16)
    mm_dtype = input_dtype if device.type == "cuda" and low_precision else None
    mm_dtype = mm_dtype or torch.promote_types(input_dtype, torch.float32)
    loss, log_probs, weights, entropy = _FusedWeightedNLL.apply(
        hidden_states,
        lm_head_weight,
        lm_head_bias,
        positions,
        targets,
        weights_fn,
        normalizer(num_items_in_batch, mask.sum()),
        needs,
        mm_dtype,
        chunk_size or rows_per_chunk(len(positions), vocab, lm_head_weight.shape[1], device),
        return_stats,
        _chunk_fn(device.type, use_compile),
    )
    if not return_stats:
        return loss
    return loss, _token_stats(log_probs, weights, entropy)
