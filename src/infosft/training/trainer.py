"""InfoSFTTrainer: TRL's SFTTrainer whose loss is infosft's fused weighted NLL.

One forward pass, no [B, T, V] logits tensor. While the model runs, its LM head's ``forward`` is
swapped for one that receives the final hidden states [B, T, H], calls
:func:`infosft.losses.fused.fused_weighted_nll_loss` with the head's own weight and bias, and
returns the loss (shape [1, 1, 1]) in place of the logits. Because the loss is computed inside
the LM head module:

- the forward still goes through the top-level, possibly DDP/FSDP/DeepSpeed/PEFT-wrapped model,
  so distributed hooks, LoRA and gradient checkpointing apply as usual;
- module hooks that gather a sharded head (FSDP, ZeRO-3) run before the swapped ``forward``;
- the loss is the model's output, so DDP sees every parameter it depends on.

TRL's own ``model(..., fused_lm_head=True)`` would give per-token log q too, but its chunked
function recomputes every tile in backward and cannot skip InfoSFT's zero-weight rows; the
fused loss needs the hidden states themselves, and the LM head is where they are gathered.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import Tensor, nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from infosft.losses import IGNORE_INDEX
from infosft.losses.lm_head import loss_in_lm_head, output_embeddings, take_head_loss
from infosft.objectives import token_weights
from infosft.training.config import InfoSFTConfig

# Per-micro-batch values gathered across ranks; every column but the first is summed per log.
_COLUMNS = (
    "loss",
    "num_tokens",
    "sum_q",
    "sum_weight",
    "num_zero_weight",
    "sum_nll",
    "sum_entropy",
    "input_tokens",
)


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; a checkpoint of the last good state was saved."""


class InfoSFTTrainer(SFTTrainer):
    """SFTTrainer computing ``nll``, ``dft``, ``infosft`` or any registered scheme with the fused
    weighted NLL, normalised by the token count of the whole optimizer step.

    Takes the same keyword arguments as ``trl.SFTTrainer`` (``model``, ``args``,
    ``train_dataset``, ``eval_dataset``, ``processing_class``, ``peft_config``, ...) except
    ``compute_loss_func``; ``args`` must be an :class:`InfoSFTConfig`. Logged every logging
    step: loss, ``nll`` of the same tokens, ``mean_q``, ``mean_weight``, ``zero_weight_share``,
    ``entropy``, ``tokens_per_second``, ``num_tokens`` and the active ``loss_type`` (evaluation
    logs the same with an ``eval_`` prefix). A NaN or infinite training loss saves a checkpoint
    and raises :class:`NonFiniteLossError`.
    """

    def __init__(self, model: Any, args: InfoSFTConfig | None = None, **kwargs: Any):
        if not isinstance(args, InfoSFTConfig):
            raise TypeError(
                "InfoSFTTrainer needs args=InfoSFTConfig(output_dir=...), got "
                f"{type(args).__name__}"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "InfoSFTTrainer computes the loss itself; set InfoSFTConfig.loss_type (or register "
                "a scheme with infosft.register_weighting) instead of passing compute_loss_func"
            )
        # SFTTrainer only accepts its own loss types; every loss type is computed here instead.
        loss_type = args.loss_type
        args.loss_type = "nll"
        try:
            super().__init__(model=model, args=args, **kwargs)
        finally:
            args.loss_type = loss_type
        parallelism = self.accelerator.parallelism_config
        if parallelism is not None and (parallelism.cp_enabled or parallelism.sp_enabled):
            raise ValueError(
                "InfoSFTTrainer does not support context or sequence parallelism (cp_size or "
                "sp_size > 1): the fused loss shifts labels within each sequence shard"
            )
        # compute_loss below consumes num_items_in_batch itself, whatever the model's forward takes,
        # so the Trainer must count it.
        self.model_accepts_loss_kwargs = True
        self._sums: dict[str, dict[str, float]] = {}
        self._window_start: float | None = None
        self._last_loss_type = args.loss_type_at(None)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # remove_unused_columns would otherwise drop the static weights' column.
        if self.args.weight_source == "base" and "base_log_probs" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "base_log_probs"]

    def _target_weights(self, inputs: dict[str, Any], loss_type: str) -> Tensor | None:
        """Fixed weights [B, T] from the base model's log q, or None to use the current model's."""
        if self.args.weight_source == "current":
            return None
        base_log_probs = inputs.get("base_log_probs")
        if base_log_probs is None:
            raise ValueError(
                "weight_source='base' needs a 'base_log_probs' tensor [B, T] (aligned with labels) "
                "in every batch; compute it before training with infosft.training.static_weights"
            )
        # Values where labels are ignored are arbitrary (possibly NaN); zero them first.
        base_log_probs = base_log_probs.masked_fill(inputs["labels"] == IGNORE_INDEX, 0.0)
        return token_weights(base_log_probs, loss_type, self.args.p_bar)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        from infosft.losses.fused import fused_weighted_nll_loss

        mode = "train" if self.model.training else "eval"
        loss_type = self.args.loss_type_at(self.state.epoch)
        labels = inputs["labels"]
        target_weights = self._target_weights(inputs, loss_type)
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "base_log_probs")}
        model_inputs["use_cache"] = False

        def head_loss(hidden_states: Tensor, weight: Tensor, bias: Tensor | None):
            return fused_weighted_nll_loss(
                hidden_states,
                weight,
                labels.to(hidden_states.device),
                method=loss_type,
                p_bar=self.args.p_bar,
                num_items_in_batch=num_items_in_batch,
                ignore_index=IGNORE_INDEX,
                lm_head_bias=bias,
                return_stats=True,
                target_weights=target_weights,
            )

        with loss_in_lm_head(output_embeddings(model), head_loss) as result:
            outputs = model(**model_inputs)
        loss = take_head_loss(outputs, result)
        # As in Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP
        # averages gradients over ranks, so scale the rank's sum back up.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._record(mode, loss, result["stats"], inputs, loss_type)
        if return_outputs:
            # compute_metrics needs the full logits: a second forward, without gradients.
            with torch.no_grad():
                outputs = model(**model_inputs)
            return loss, outputs
        return loss

    def _record(
        self, mode: str, loss: Tensor, stats: Any, inputs: dict[str, Any], loss_type: str
    ) -> None:
        """Gather this micro-batch's token statistics from every rank, add them to the log sums,
        and stop training on a non-finite loss."""
        if "attention_mask" in inputs:
            input_tokens = inputs["attention_mask"].sum()
        else:
            input_tokens = torch.tensor(inputs["input_ids"].numel())
        row = torch.stack(
            [
                loss.detach().float(),
                stats.num_tokens,
                stats.sum_q,
                stats.sum_weight,
                stats.num_zero_weight,
                stats.sum_nll,
                stats.sum_entropy,
                input_tokens.to(loss.device, torch.float32),
            ]
        ).unsqueeze(0)
        rows = self.accelerator.gather(row).cpu()
        if mode == "train" and not bool(torch.isfinite(rows[:, 0]).all()):
            self._stop_on_non_finite(rows[:, 0].tolist(), loss_type)
        if not self._sums.get(mode):
            self._sums[mode] = dict.fromkeys(_COLUMNS[1:], 0.0)
            if mode == "train":
                self._window_start = time.perf_counter()
        totals = rows[:, 1:].double().sum(0).tolist()
        for name, value in zip(_COLUMNS[1:], totals, strict=True):
            self._sums[mode][name] += value
        if mode == "train":
            self._total_train_tokens += int(totals[-1])
            self._last_loss_type = loss_type

    def _stop_on_non_finite(self, losses: list[float], loss_type: str) -> None:
        """Save a checkpoint of the state before this step and raise NonFiniteLossError."""
        self._save_checkpoint(self.model, trial=None)
        checkpoint = os.path.join(
            self._get_output_dir(trial=None), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        raise NonFiniteLossError(
            f"non-finite training loss {losses} at step {self.state.global_step + 1} "
            f"(loss_type={loss_type!r}); the state before this step is saved in {checkpoint}. "
            "Lower the learning rate, check the data for empty or corrupt examples, or train in "
            "float32, then resume with resume_from_checkpoint."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        sums = self._sums.pop(mode, None)
        if sums:
            prefix = "eval_" if mode == "eval" else ""
            count = max(sums["num_tokens"], 1.0)
            means = {
                "nll": sums["sum_nll"] / count,
                "mean_q": sums["sum_q"] / count,
                "mean_weight": sums["sum_weight"] / count,
                "zero_weight_share": sums["num_zero_weight"] / count,
                "entropy": sums["sum_entropy"] / count,
            }
            logs.update({prefix + name: value for name, value in means.items()})
            if mode == "train":
                elapsed = time.perf_counter() - self._window_start
                logs["tokens_per_second"] = sums["input_tokens"] / max(elapsed, 1e-9)
                logs["num_tokens"] = float(self._total_train_tokens)
                logs["loss_type"] = self._last_loss_type
        super().log(logs, start_time)
