"""The fused loss inside a trainer that someone else builds: axolotl's, ms-swift's, or any
Hugging Face ``Trainer`` subclass.

:func:`use_fused_loss` is the one mechanism; the framework plugins (``infosft.integrations.
axolotl``, ``infosft.integrations.swift``) only read their config keys and call it. It needs
torch alone (the trainer is duck-typed), so a framework's environment keeps its own pins of
transformers and TRL.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from infosft.losses.fused import TokenStats
from infosft.losses.lm_head import (
    base_head_inputs,
    causal_lm_loss,
    forward_inputs,
    output_embeddings,
)
from infosft.losses.reference import kl_coefficient
from infosft.objectives import get_scheme


def _unwrapped(trainer: Any, model: nn.Module) -> nn.Module:
    accelerator = getattr(trainer, "accelerator", None)
    return accelerator.unwrap_model(model) if accelerator is not None else model


def use_fused_loss(
    trainer: Any,
    *,
    method: str = "infosft",
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
    kl_to_base: float = 0.0,
) -> None:
    """Make ``trainer`` (a ``transformers.Trainer`` or subclass) train with the fused weighted
    NLL: one forward pass per micro-batch with the LM head intercepted, no [B, T, V] logits.

    Replaces ``trainer.compute_loss`` on this instance. The loss is summed over the micro-batch's
    target tokens and divided by the Trainer's ``num_items_in_batch`` (every target of the
    optimizer step, all accumulation micro-batches and ranks), so gradient accumulation is
    exact; the Trainer is told the loss is already scaled for accumulation, and the loss is
    multiplied by the number of processes as ``Trainer.compute_loss`` does, because DDP averages
    gradients over ranks. ``trainer.log`` gains this rank's means over the logged window:
    ``infosft/mean_q``, ``infosft/mean_weight``, ``infosft/zero_weight_share``, ``infosft/nll``,
    ``infosft/entropy`` (and ``infosft/kl_to_base``).

    Args:
        trainer: the trainer, after it is built and before ``train()``.
        method, p_bar, method_args: the weighting scheme (checked here, before training).
        kl_to_base: beta of the KL anchor to the model as it is now (before training); the
            anchor reads a frozen copy of the model, or the PEFT model with its adapters off.
    """
    scheme = get_scheme(method, p_bar=p_bar, method_args=method_args)
    kl_to_base = kl_coefficient(kl_to_base)
    model = _unwrapped(trainer, trainer.model)
    output_embeddings(model)  # refuses a model without an LM head before training starts
    frozen_base = None
    if kl_to_base and not hasattr(model, "disable_adapter"):
        frozen_base = copy.deepcopy(model).eval().requires_grad_(False)
    # Per mode, the TokenStats fields summed over the micro-batches since the last log.
    sums: dict[str, list[float]] = {}

    def compute_loss(
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):
        base = None
        if kl_to_base:
            base = base_head_inputs(
                model,
                inputs,
                frozen_base=frozen_base,
                unwrapped=_unwrapped(trainer, model),
            )
        loss, stats = causal_lm_loss(
            model,
            inputs,
            method=scheme,
            num_items_in_batch=num_items_in_batch,
            base=base,
            kl_to_base=kl_to_base,
        )
        args = trainer.args
        if getattr(args, "average_tokens_across_devices", False) and num_items_in_batch is not None:
            accelerator = getattr(trainer, "accelerator", None)
            loss = loss * (accelerator.num_processes if accelerator is not None else 1)
        mode = "train" if model.training else "eval"
        # One read of the device for all the statistics, not one per field.
        read = iter(torch.stack([v.detach().double() for v in stats if v is not None]).tolist())
        values = [0.0 if value is None else next(read) for value in stats]
        window = sums.get(mode)
        sums[mode] = (
            values if window is None else [a + b for a, b in zip(window, values, strict=True)]
        )
        if return_outputs:
            with torch.no_grad():
                outputs = model(**forward_inputs(inputs))
            return loss, outputs
        return loss

    original_log = trainer.log

    def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        window = sums.pop(mode, None)
        if window and window[0]:
            stats = TokenStats(*window[:-1], sum_kl=window[-1] if kl_to_base else None)
            prefix = "eval_infosft/" if mode == "eval" else "infosft/"
            logs = {**logs, **{prefix + name: value for name, value in stats.means().items()}}
        return original_log(logs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.log = log
    # The loss is divided by num_items_in_batch here, so the Trainer must neither divide it by
    # the accumulation steps nor skip counting num_items_in_batch (it counts it only for models
    # that accept loss kwargs or with a compute_loss_func).
    trainer.model_accepts_loss_kwargs = True
    trainer.loss_is_scaled_for_ga = True
    trainer.infosft_scheme = scheme
