"""Weighted NLL from a full logits tensor: the reference every faster path is checked against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from infosft.objectives import DEFAULT_P_BAR, check_p_bar, get_weighting, token_weights

IGNORE_INDEX = -100
"""Label of a position without a target (no loss), as in transformers and TRL."""


def shift_labels(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Labels aligned with input_ids -> the target of each position, [B, T] -> [B, T].

    Position t predicts labels[t + 1]; the last position has no target (ignore_index), as in
    transformers' causal-LM loss. Padding instead of slicing the logits avoids copying them.
    """
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


def check_targets(targets: Tensor, vocab_size: int, ignore_index: int) -> Tensor:
    """Boolean mask of target positions; ValueError naming any label outside [0, vocab_size)."""
    mask = targets != ignore_index
    bad = mask & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(
            f"label {value} is outside the vocabulary [0, {vocab_size}) and is not "
            f"ignore_index={ignore_index}; check that the tokenizer matches the model and that "
            "padding positions in labels are set to ignore_index"
        )
    return mask


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


def weighted_nll_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    method: str = "infosft",
    p_bar: float = DEFAULT_P_BAR,
    num_items_in_batch: int | Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Token-weighted causal-LM loss: sum over targets of -sg(w(q)) * log q, normalised.

    Args:
        logits: [B, T, V], any float dtype; math is done in float32.
        labels: [B, T] integer, aligned with input_ids (shifted by one inside);
            ``ignore_index`` marks positions without a target.
        method: a registered weighting scheme ("nll", "dft", "infosft", ...).
        p_bar: InfoSFT's clip point, in (0, 1).
        num_items_in_batch: target tokens in the whole optimizer step (all accumulation
            micro-batches and ranks); None divides by this batch's target count.
        ignore_index: label value that is not a target.

    Returns:
        float32 scalar (float64 for float64 logits). With no target token it is 0 and still
        backpropagates (zero gradient).
    """
    p_bar = check_p_bar(p_bar)
    get_weighting(method)
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be [B, T, V] and labels [B, T] with the same B and T; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    targets = shift_labels(labels, ignore_index)
    mask = check_targets(targets, logits.shape[-1], ignore_index)
    # float32 at least (float64 stays float64, for reference checks).
    target_logits = logits[mask].to(torch.promote_types(logits.dtype, torch.float32))
    log_probs = target_logits.log_softmax(-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    weights = token_weights(log_probs, method, p_bar)
    loss_sum = -weighted_sum(weights, log_probs)
    return loss_sum / normalizer(num_items_in_batch, mask.sum())


def compute_loss_func(
    method: str = "infosft", p_bar: float = DEFAULT_P_BAR, ignore_index: int = -100
) -> Callable[..., Tensor]:
    """A loss for ``transformers.Trainer(compute_loss_func=...)``.

    The returned ``fn(outputs, labels, num_items_in_batch=None)`` reads ``outputs.logits``
    ([B, T, V]) and calls :func:`weighted_nll_loss`. The Trainer passes the token count of the
    whole optimizer step, so gradient accumulation and multi-device averaging stay exact.
    """
    p_bar = check_p_bar(p_bar)
    get_weighting(method)

    def loss_fn(outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return weighted_nll_loss(
            logits,
            labels,
            method=method,
            p_bar=p_bar,
            num_items_in_batch=num_items_in_batch,
            ignore_index=ignore_index,
        )

    loss_fn.__name__ = f"{method}_loss"
    return loss_fn
