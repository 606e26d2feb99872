"""Weighted NLL from a full logits tensor: the reference every faster path is checked against.

The loss of a scheme (``method``; :mod:`infosft.objectives`) over the target tokens of a
micro-batch, l = -log q, w the detached weight::

    loss = sum(w * l) / D  +  kl_to_base * sum(KL(p_base || p_theta)) / N

N is the token count (``num_items_in_batch`` when given: the targets of the whole optimizer
step, all accumulation micro-batches and ranks; else this batch's). D is N for every scheme but
a self-normalised one (``memft``), whose D is its weight sum (:func:`loss_denominator`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from infosft.objectives import Scheme, TokenInputs, get_scheme

IGNORE_INDEX = -100
"""Label of a position without a target (no loss), as in transformers and TRL."""


def shift_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
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


def check_kl_to_base(kl_to_base: float, base_given: bool, base_name: str) -> float:
    """Validate the KL anchor's coefficient beta >= 0 and that the base model's input is there."""
    try:
        beta = float(kl_to_base)
    except (TypeError, ValueError):
        raise ValueError(f"kl_to_base must be a number >= 0, got {kl_to_base!r}") from None
    if not 0.0 <= beta < float("inf"):
        raise ValueError(f"kl_to_base must be a finite number >= 0, got {kl_to_base!r}")
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
            micro-batches and ranks); None divides by this batch's target count
            (:func:`loss_denominator` for self-normalised schemes).
        ignore_index: label value that is not a target.
        base_logits: [B, T, V] logits of the base model on the same inputs (read as constants),
            for the KL anchor.
        kl_to_base: beta of the anchor ``beta * sum_t KL(p_base || p_theta) / N`` over target
            positions, the KL summed over the whole vocabulary; 0 turns it off.

    Returns:
        float32 scalar (float64 for float64 logits). With no target token it is 0 and still
        backpropagates (zero gradient).
    """
    scheme = get_scheme(method, p_bar=p_bar, method_args=method_args)
    beta = check_kl_to_base(kl_to_base, base_logits is not None, "base_logits")
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
    if scheme.top_k is not None and scheme.top_k > vocab:
        raise ValueError(f"{scheme.method} top_k={scheme.top_k} exceeds the vocabulary ({vocab})")
    targets = shift_labels(labels, ignore_index)
    mask = check_targets(targets, vocab, ignore_index)
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
