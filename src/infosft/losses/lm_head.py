"""Run a Hugging Face causal LM with its LM head intercepted: the loss instead of the logits.

While :func:`loss_in_lm_head` is active, the model's output-embedding module receives the final
hidden states [B, T, H] and returns a loss computed from them and its own weight and bias (the
fused loss) in place of the [B, T, V] logits. Because this happens inside the LM head module:

- the forward still goes through the top-level, possibly DDP/FSDP/DeepSpeed/PEFT-wrapped model,
  so distributed hooks, LoRA and gradient checkpointing apply as usual;
- module hooks that gather a sharded head (FSDP, ZeRO-3) run before the swapped ``forward``;
- the loss is the model's output, so DDP sees every parameter it depends on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from infosft.losses.fused import TokenStats, fused_weighted_nll_loss, score_targets
from infosft.losses.reference import IGNORE_INDEX
from infosft.objectives import Scheme

HeadLossFn = Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Any]]
"""``fn(hidden_states [B, T, H], weight [V, H], bias [V] | None) -> (loss, stats)``."""


@contextlib.contextmanager
def loss_in_lm_head(lm_head: nn.Module, loss_fn: HeadLossFn) -> Iterator[dict[str, Any]]:
    """While active, ``lm_head(hidden_states)`` computes ``loss_fn`` instead of logits.

    The swapped forward returns ``loss.view(1, 1, 1)`` as the "logits" and records
    ``{"output": that tensor, "stats": stats}`` in the yielded dict. Module hooks (FSDP,
    DeepSpeed ZeRO-3, accelerate device maps) still run around it, so the weight it reads is
    the gathered one. A model that transforms the head's output (soft-capping, scaling) changes
    its value; :func:`take_head_loss` detects it.
    """
    # accelerate's device-map hooks replace `forward` and call the original as `_old_forward`.
    attribute = "_old_forward" if hasattr(lm_head, "_hf_hook") else "forward"
    previous = lm_head.__dict__.get(attribute)
    result: dict[str, Any] = {}

    def forward(hidden_states: Tensor) -> Tensor:
        loss, stats = loss_fn(hidden_states, lm_head.weight, lm_head.bias)
        result["output"] = loss.view(1, 1, 1)
        result["stats"] = stats
        return result["output"]

    setattr(lm_head, attribute, forward)
    try:
        yield result
    finally:
        if previous is None:
            delattr(lm_head, attribute)
        else:
            setattr(lm_head, attribute, previous)


def take_head_loss(outputs: Any, result: dict[str, Any]) -> Tensor:
    """The scalar loss from the model's ``outputs``, checked to be what the LM head returned."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    if "output" not in result:
        raise ValueError(
            "the model never called its output embedding module (get_output_embeddings()), so "
            "the fused InfoSFT loss could not run; this architecture is not supported"
        )
    # DDP passes outputs through an identity autograd op, so compare values, not objects.
    expected = result["output"]
    same = logits.shape == expected.shape and torch.allclose(
        logits.detach(), expected.detach(), rtol=0, atol=0, equal_nan=True
    )
    if not same:
        raise ValueError(
            "the model transforms its LM head output (e.g. logit soft-capping or scaling), which "
            "the fused InfoSFT loss does not reproduce; this architecture is not supported"
        )
    return logits.reshape(())


def output_embeddings(model: nn.Module) -> nn.Module:
    """The LM head module of a causal LM, under PEFT and DDP/FSDP wrappers."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(inner).__name__} has no LM head with a weight to project with")
    return head


def target_log_probs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """log p(labels[t] | input_ids[:t]) aligned with labels, 0 where there is no target.

    The model runs once with its LM head intercepted (:func:`loss_in_lm_head`), so any causal
    LM and any PEFT/DDP wrapper works and the [B, T, V] logits never exist: the head's hidden
    states go through :func:`infosft.losses.fused.score_targets`, the one scorer of targets.

    Args:
        model: a causal LM (``transformers`` ``*ForCausalLM``, possibly wrapped), in eval mode.
        input_ids: [B, T] int64, right-padded. attention_mask: [B, T], 1 on real tokens.
        labels: [B, T] int64, IGNORE_INDEX (-100) where no loss applies.

    Returns:
        [B, T] float32 on the model's device; log-softmax is taken in float32 (float64 models:
        float64, then rounded).
    """

    def score(hidden_states: Tensor, weight: Tensor, bias: Tensor | None):
        scores = score_targets(
            hidden_states, weight, labels.to(hidden_states.device), lm_head_bias=bias
        )
        # A "loss" of 1 as the head's output: a model that transforms its logits (soft-capping,
        # scaling) changes it, and take_head_loss refuses to return scores the model disowns.
        return hidden_states.new_ones(()), scores

    with torch.no_grad():
        with loss_in_lm_head(output_embeddings(model), score) as result:
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        take_head_loss(outputs, result)
    return result["stats"].log_probs.float()


def lm_head_inputs(model: nn.Module, model_inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor, Any]:
    """What ``model``'s LM head receives on ``model_inputs``: the final hidden states [B, T, H]
    and the head's weight [V, H] and bias [V] (or None), from one forward pass that builds no
    logits. Run it under ``torch.no_grad()`` unless the hidden states need gradients.
    """

    def capture(hidden_states: Tensor, weight: Tensor, bias: Tensor | None):
        # A "loss" of 1 as the head's output: take_head_loss then refuses a model that
        # transforms its logits (soft-capping, scaling), whose hidden states would mislead.
        return hidden_states.new_ones(()), (hidden_states, weight, bias)

    with loss_in_lm_head(output_embeddings(model), capture) as result:
        outputs = model(**model_inputs)
    take_head_loss(outputs, result)
    return result["stats"]


def forward_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The batch as the model's forward takes it for a loss computed in its LM head: without
    ``labels`` (the model would compute its own loss on [B, T, V] logits) and without a cache."""
    return {**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False}


@torch.no_grad()
def base_head_inputs(
    model: nn.Module,
    inputs: Mapping[str, Any],
    *,
    frozen_base: nn.Module | None = None,
    unwrapped: nn.Module,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The KL anchor's base on ``inputs`` (the batch as :func:`causal_lm_loss` takes it): the
    base model's hidden states [B, T, H'] and LM head (weight, bias), from one forward without
    gradients that builds no logits.

    The base is ``frozen_base`` when given, else ``model`` with its PEFT adapters off
    (``unwrapped`` is ``model`` without DDP/accelerate wrappers, whose ``disable_adapter`` is
    used). The weight is None when the base projects with ``model``'s own head (LoRA leaves it
    alone), as :func:`causal_lm_loss`'s ``base`` takes it.
    """
    if frozen_base is not None:
        return lm_head_inputs(frozen_base, forward_inputs(inputs))
    with unwrapped.disable_adapter():
        hidden, weight, bias = lm_head_inputs(model, forward_inputs(inputs))
    if weight is output_embeddings(unwrapped).weight:
        return hidden, None, None
    return hidden, weight, bias


def causal_lm_loss(
    model: nn.Module,
    inputs: Mapping[str, Any],
    *,
    method: str | Scheme = "infosft",
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
    num_items_in_batch: int | Tensor | None = None,
    base: tuple[Tensor, Tensor | None, Tensor | None] | None = None,
    kl_to_base: float = 0.0,
    target_weights: Tensor | None = None,
) -> tuple[Tensor, TokenStats]:
    """The fused weighted NLL of a causal LM on one micro-batch, from one forward pass of
    ``model`` that builds no [B, T, V] logits: the one step every trainer integration runs
    (InfoSFTTrainer, the axolotl and ms-swift plugins).

    Args:
        model: a causal LM (``transformers`` ``*ForCausalLM``, possibly PEFT/DDP/FSDP/DeepSpeed
            wrapped) with ``get_output_embeddings()``.
        inputs: the batch as a Trainer passes it: ``input_ids`` [B, T], ``labels`` [B, T]
            (IGNORE_INDEX where no loss applies, not yet shifted), and whatever else the model's
            forward takes (``attention_mask``, ``position_ids``, ...). ``labels`` is not passed
            to the model, and neither is ``use_cache`` (set to False).
        method, p_bar, method_args, num_items_in_batch, kl_to_base, target_weights: as in
            :func:`~infosft.losses.fused.fused_weighted_nll_loss`.
        base: for the KL anchor, the frozen base model's head inputs on the same batch
            (:func:`lm_head_inputs`): hidden states [B, T, H'], head weight [V, H'] and bias,
            read as constants; a weight of None means the base shares the trained model's head.

    Returns:
        ``(loss, stats)``: the float32 scalar loss (summed over this micro-batch's targets and
        divided by ``num_items_in_batch``; the caller scales for data parallelism as its
        trainer expects) and the micro-batch's :class:`~infosft.losses.fused.TokenStats`.
    """
    labels = inputs["labels"]
    base_hidden, base_weight, base_bias = base or (None, None, None)

    def head_loss(hidden_states: Tensor, weight: Tensor, bias: Tensor | None):
        shares_head = base is not None and base_weight is None
        return fused_weighted_nll_loss(
            hidden_states,
            weight,
            labels.to(hidden_states.device),
            method=method,
            p_bar=p_bar,
            method_args=method_args,
            num_items_in_batch=num_items_in_batch,
            ignore_index=IGNORE_INDEX,
            lm_head_bias=bias,
            base_hidden_states=base_hidden,
            base_lm_head_weight=weight if shares_head else base_weight,
            base_lm_head_bias=bias if shares_head else base_bias,
            kl_to_base=kl_to_base,
            return_stats=True,
            target_weights=target_weights,
        )

    with loss_in_lm_head(output_embeddings(model), head_loss) as result:
        outputs = model(**forward_inputs(inputs))
    return take_head_loss(outputs, result), result["stats"]
