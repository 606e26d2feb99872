"""Weighted NLL from a full logits tensor: the reference every faster path is checked against.

The loss of a scheme (``method``; :mod:`infosft.objectives`) over the target tokens of a
micro-batch, l = -log q, w the detached weight::

    loss = sum(w * l) / D  +  kl_to_base * sum(KL(p_base || p_theta)) / N

N is the token count (``num_items_in_batch`` when given: the targets of the whole optimizer
step, all accumulation micro-batches and ranks; else this batch's). D is N for every scheme but
a self-normalised one (``memft``), whose D is its weight sum (:func:`loss_denominator`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from infosft.objectives import (
    MAX_WEIGHT,
    Scheme,
    TokenInputs,
    describe,
    get_scheme,
    is_real_number,
    real_number,
)

IGNORE_INDEX = -100
"""Label of a position without a target (no loss), as in transformers and TRL."""


def shift_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Labels aligned with input_ids -> the target of each position, [B, T] -> [B, T].

    Position t predicts labels[t + 1]; the last position has no target (ignore_index), as in
    transformers' causal-LM loss. Padding instead of slicing the logits avoids copying them.
    """
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


def check_ignore_index(ignore_index: Any) -> int:
    """Validate the label value that marks positions without a target; returned as an int."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise ValueError(
            f"ignore_index must be an integer label value (transformers uses -100), got "
            f"{describe(ignore_index)}"
        )
    return int(ignore_index)


NUM_ITEMS = (
    "a finite count > 0 (int, float or one-element tensor) of the optimizer step's target tokens"
)


def _bad_count(value: float | int) -> ValueError:
    return ValueError(
        f"num_items_in_batch must be {NUM_ITEMS}, got {describe(value)}: the loss divides by "
        "it, so 0 or less would give NaN or gradient ascent; a step with no target token at "
        "all has nothing to train on (leave such examples out); None divides by this batch's "
        "count"
    )


def check_num_items_in_batch(num_items_in_batch: Any) -> int | float | Tensor | None:
    """Validate the loss divisor given by the caller (the HF Trainer passes a tensor).

    A Python number or a CPU tensor must be finite and > 0, checked here. A tensor on an
    accelerator is only checked to be one number here, since reading its value waits for the
    device; :func:`check_targets` checks the value in the read of the labels it makes anyway.

    Returns:
        None, the number, or the tensor as a 0-dim tensor (the loss stays a 0-dim scalar).
    """
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, Tensor) and num_items_in_batch.device.type != "cpu":
        if not is_real_number(num_items_in_batch):
            raise ValueError(
                f"num_items_in_batch must be {NUM_ITEMS}, got {describe(num_items_in_batch)}"
            )
        return num_items_in_batch.reshape(())
    value = real_number("num_items_in_batch", num_items_in_batch, NUM_ITEMS)
    tensor = isinstance(num_items_in_batch, Tensor)
    if not 0.0 < value < math.inf:
        raise _bad_count(num_items_in_batch.item() if tensor else num_items_in_batch)
    return num_items_in_batch.reshape(()) if tensor else num_items_in_batch


class LossArguments(NamedTuple):
    """What every loss entry point takes besides its tensors, validated once."""

    scheme: Scheme
    labels: Tensor
    """[B, T] int64."""
    num_items_in_batch: int | float | Tensor | None
    ignore_index: int
    kl_to_base: float


def check_loss_arguments(
    labels: Any,
    inputs: Mapping[str, Any],
    *,
    method: str | Scheme,
    p_bar: float | None,
    method_args: Mapping[str, Any] | None,
    num_items_in_batch: Any,
    ignore_index: Any,
    kl_to_base: Any,
    base_name: str,
) -> LossArguments:
    """The one check of a loss call's arguments, before anything is computed.

    Args:
        labels: must be an integer tensor of token ids (any integer dtype; returned as int64).
        inputs: the call's float tensors by argument name, the first one the main input (e.g.
            logits or hidden_states); None for one not given. Each must be a floating-point
            tensor on the main input's device, and so must ``labels`` be.
        base_name: the input that carries the base model for the KL anchor.
        method, p_bar, method_args, num_items_in_batch, ignore_index, kl_to_base: as for
            :func:`weighted_nll_loss`; see :func:`infosft.objectives.get_scheme`,
            :func:`check_num_items_in_batch`, :func:`check_kl_to_base`.

    Shapes are the caller's to check; values inside tensors are checked by
    :func:`check_targets`, in the one read of the device the loss makes anyway.
    """
    scheme = get_scheme(method, p_bar=p_bar, method_args=method_args)
    ignore_index = check_ignore_index(ignore_index)
    num_items_in_batch = check_num_items_in_batch(num_items_in_batch)
    beta = check_kl_to_base(kl_to_base, inputs.get(base_name) is not None, base_name)
    main_name, main = next(iter(inputs.items()))
    for name, tensor in inputs.items():
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor) or not torch.is_floating_point(tensor):
            raise ValueError(f"{name} must be a floating-point tensor, got {describe(tensor)}")
        if tensor.device != main.device:
            raise ValueError(
                f"{name} is on {tensor.device} but {main_name} on {main.device}; "
                "move them to one device"
            )
    integer = isinstance(labels, Tensor) and not (
        labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex()
    )
    if not integer:
        raise ValueError(f"labels must be an integer tensor of token ids, got {describe(labels)}")
    if labels.device != main.device:
        raise ValueError(
            f"labels is on {labels.device} but {main_name} on {main.device}; "
            "move them to one device"
        )
    return LossArguments(scheme, labels.long(), num_items_in_batch, ignore_index, beta)


def check_top_k(scheme: Scheme, vocab: int) -> None:
    """A scheme that reads the top-K logits (EAFT) needs K <= the vocabulary size."""
    if scheme.top_k is not None and scheme.top_k > vocab:
        raise ValueError(f"{scheme.method} top_k={scheme.top_k} exceeds the vocabulary ({vocab})")


def check_targets(
    targets: Tensor,
    vocab_size: int,
    ignore_index: int,
    num_items_in_batch: int | float | Tensor | None = None,
    target_weights: Tensor | None = None,
) -> Tensor:
    """Boolean mask [B, T] of the target positions of ``targets`` ([B, T] int64, shifted).

    One read of the device checks what is in the tensors: every target lies in
    [0, vocab_size); a tensor ``num_items_in_batch`` is finite and > 0 (see
    :func:`check_num_items_in_batch`); ``target_weights`` ([B, T] float, aligned with
    ``targets``) are finite and within [0, MAX_WEIGHT] at the target positions. ValueError
    naming the first problem otherwise.
    """
    mask = targets != ignore_index
    bad_labels = mask & ((targets < 0) | (targets >= vocab_size))
    problem = bad_labels.any()
    count = num_items_in_batch if isinstance(num_items_in_batch, Tensor) else None
    if count is not None:
        problem = problem | (~(count > 0) | ~torch.isfinite(count)).to(problem.device)
    bad_weights = None
    if target_weights is not None:
        in_range = (target_weights >= 0) & (target_weights <= MAX_WEIGHT)
        bad_weights = mask & ~in_range
        problem = problem | bad_weights.any()
    if not bool(problem):
        return mask
    if bool(bad_labels.any()):
        value = int(targets[bad_labels][0])
        raise ValueError(
            f"label {value} is outside the vocabulary [0, {vocab_size}) and is not "
            f"ignore_index={ignore_index}; check that the tokenizer matches the model and that "
            "padding positions in labels are set to ignore_index"
        )
    if bad_weights is not None and bool(bad_weights.any()):
        row, col = (int(i) for i in bad_weights.nonzero()[0])
        raise ValueError(
            f"target_weights[{row}, {col + 1}] is {target_weights[row, col].item()} at a target "
            f"position (labels != ignore_index); a weight there must be finite and within "
            f"[0, {MAX_WEIGHT:g}] (non-finite, negative or larger ones are refused; weights of "
            "ignored positions are not read)"
        )
    raise _bad_count(count.item())


def normalizer(num_items_in_batch: int | Tensor | None, num_targets: Tensor) -> Tensor | int:
    """The loss denominator: tokens of the whole optimizer step, else this batch's (at least 1)."""
    if num_items_in_batch is None:
        return num_targets.clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        return num_items_in_batch.to(num_targets.device)
    return num_items_in_batch


def weighted_sum(weights: Tensor, log_probs: Tensor) -> Tensor:
    """sum(w * log q) where a zero weight contributes exactly 0, even when log q = -inf."""
    return torch.where(weights == 0, 0.0, weights.to(log_probs.dtype) * log_probs).sum()


def loss_denominator(
    scheme: Scheme,
    num_items_in_batch: int | Tensor | None,
    num_targets: Tensor,
    weight_sum: Tensor,
) -> Tensor | int:
    """D of the weighted term: the token count, or the weight sum of a self-normalised scheme.

    A self-normalised scheme divides by max(sum w, 1) over this micro-batch. With
    ``num_items_in_batch`` (gradient accumulation, several ranks) that is scaled by the
    micro-batch's share of the step's tokens, ``num_items_in_batch / num_targets``: the step's
    loss is then the token-weighted mean of each micro-batch's self-normalised loss, exactly the
    definition when the step is one micro-batch on one rank. (The step's own weight sum is not
    known before the last micro-batch's forward pass.)
    """
    if not scheme.self_normalised:
        return normalizer(num_items_in_batch, num_targets)
    denominator = weight_sum.clamp(min=1.0)
    if num_items_in_batch is None:
        return denominator
    share = normalizer(num_items_in_batch, num_targets) / num_targets.clamp(min=1)
    return denominator * share


def kl_coefficient(kl_to_base: Any) -> float:
    """The KL anchor's coefficient beta, a finite number >= 0 (a bool is refused)."""
    beta = real_number("kl_to_base", kl_to_base, "a finite number >= 0")
    if not 0.0 <= beta < math.inf:
        raise ValueError(f"kl_to_base must be a finite number >= 0, got {kl_to_base!r}")
    return beta


def check_kl_to_base(kl_to_base: Any, base_given: bool, base_name: str) -> float:
    """Validate the KL anchor's coefficient beta >= 0 and that the base model's input is there."""
    beta = kl_coefficient(kl_to_base)
    if beta > 0 and not base_given:
        raise ValueError(
            f"kl_to_base={beta} needs the base model's {base_name} (the anchor's p_base)"
        )
    if beta == 0 and base_given:
        raise ValueError(
            f"{base_name} was given but kl_to_base=0, so the KL anchor is off; set kl_to_base "
            f"> 0 to use it, or leave {base_name} out"
        )
    return beta


def weighted_nll_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    method: str | Scheme = "infosft",
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
    num_items_in_batch: int | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    base_logits: Tensor | None = None,
    kl_to_base: float = 0.0,
) -> Tensor:
    """Token-weighted causal-LM loss: sum over targets of -sg(w) * log q, normalised, plus an
    optional KL anchor to the base model.

    Args:
        logits: [B, T, V], any float dtype; math is done in float32 (float64 stays float64).
        labels: [B, T] integer, aligned with input_ids (shifted by one inside);
            ``ignore_index`` marks positions without a target.
        method: a registered scheme name ("nll", "dft", "infosft", "eaft", "talr", "memft",
            "dft_mix", "power", ...) or a :class:`~infosft.objectives.Scheme`.
        p_bar: InfoSFT's clip point in (0, 1); None means 0.93 (or the scheme's own).
        method_args: the scheme's other arguments by name, e.g. ``{"top_k": 20}`` for eaft.
        num_items_in_batch: target tokens in the whole optimizer step (all accumulation
            micro-batches and ranks), finite and > 0: a Python number or a one-element tensor
            of any dtype (an accelerator's is checked without an extra wait for the device,
            :func:`check_num_items_in_batch`); None divides by this batch's target count
            (:func:`loss_denominator` for self-normalised schemes).
        ignore_index: label value (an int) that is not a target.
        base_logits: [B, T, V] logits of the base model on the same inputs (read as constants),
            for the KL anchor.
        kl_to_base: beta of the anchor ``beta * sum_t KL(p_base || p_theta) / N`` over target
            positions, the KL summed over the whole vocabulary; 0 turns it off.

    Returns:
        float32 scalar (float64 for float64 logits). With no target token it is 0 and still
        backpropagates (zero gradient), with ``num_items_in_batch`` (a micro-batch of a step
        whose other micro-batches have the targets) or without.

    Raises:
        ValueError: naming the argument, before any computation, for each bad one
            (:func:`check_loss_arguments`, shapes, :func:`check_targets`).
    """
    scheme, labels, num_items_in_batch, ignore_index, beta = check_loss_arguments(
        labels,
        {"logits": logits, "base_logits": base_logits},
        method=method,
        p_bar=p_bar,
        method_args=method_args,
        num_items_in_batch=num_items_in_batch,
        ignore_index=ignore_index,
        kl_to_base=kl_to_base,
        base_name="base_logits",
    )
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be [B, T, V] and labels [B, T] with the same B and T; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if base_logits is not None and base_logits.shape != logits.shape:
        raise ValueError(
            f"base_logits must have the shape of logits {tuple(logits.shape)}; "
            f"got {tuple(base_logits.shape)}"
        )
    vocab = logits.shape[-1]
    check_top_k(scheme, vocab)
    targets = shift_labels(labels, ignore_index)
    mask = check_targets(targets, vocab, ignore_index, num_items_in_batch)
    # float32 at least (float64 stays float64, for reference checks).
    dtype = torch.promote_types(logits.dtype, torch.float32)
    target_logits = logits[mask].to(dtype)
    log_p = target_logits.log_softmax(-1)
    log_probs = log_p.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    tokens = TokenInputs(log_probs.detach())
    with torch.no_grad():
        if scheme.needs_entropy:
            tokens = tokens._replace(entropy=torch.special.entr(log_p.exp()).sum(-1))
        if scheme.top_k is not None:
            top = target_logits.topk(scheme.top_k, dim=-1).values.softmax(-1)
            tokens = tokens._replace(top_k_entropy=torch.special.entr(top).sum(-1))
        rows = torch.arange(labels.shape[0], device=labels.device)
        sequence_ids = rows.unsqueeze(1).expand_as(labels)[mask]
        tokens = tokens._replace(statistic=scheme.statistic(tokens, sequence_ids))
        weights = scheme.weights(tokens)
    num_targets = mask.sum()
    loss_sum = -weighted_sum(weights, log_probs)
    loss = loss_sum / loss_denominator(scheme, num_items_in_batch, num_targets, weights.sum())
    if beta == 0:
        return loss
    log_p_base = base_logits.detach()[mask].to(dtype).log_softmax(-1)
    # p_base * (log p_base - log p_theta), 0 where p_base = 0 (never 0 * inf).
    p_base = log_p_base.exp()
    kl = torch.where(p_base > 0, p_base * (log_p_base - log_p), 0.0).sum(-1)
    return loss + beta * kl.sum() / normalizer(num_items_in_batch, num_targets)


def compute_loss_func(
    method: str | Scheme = "infosft",
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Callable[..., Tensor]:
    """A loss for ``transformers.Trainer(compute_loss_func=...)``.

    The returned ``fn(outputs, labels, num_items_in_batch=None)`` reads ``outputs.logits``
    ([B, T, V]) and calls :func:`weighted_nll_loss` with the scheme resolved here, once. The
    Trainer passes the token count of the whole optimizer step, so gradient accumulation and
    multi-device averaging stay exact. (No KL anchor: the Trainer has no base-model logits.)
    """
    scheme = get_scheme(method, p_bar=p_bar, method_args=method_args)
    ignore_index = check_ignore_index(ignore_index)

    def loss_fn(outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return weighted_nll_loss(
            logits,
            labels,
            method=scheme,
            num_items_in_batch=num_items_in_batch,
            ignore_index=ignore_index,
        )

    loss_fn.__name__ = f"{scheme.method}_loss"
    return loss_fn
