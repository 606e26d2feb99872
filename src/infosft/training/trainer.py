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

import copy
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy
from trl import SFTTrainer

from infosft.losses import IGNORE_INDEX, TokenStats
from infosft.losses.lm_head import base_head_inputs, causal_lm_loss, forward_inputs
from infosft.objectives import token_weights
from infosft.training.config import InfoSFTConfig, ScheduleEntry
from infosft.training.outputs import BASE_LOG_PROBS_DIR, final_model_saved
from infosft.training.preparation import marked_template_tokenizer, prepare_rows
from infosft.training.static_weights import COLUMN, compute_base_log_probs, with_base_log_probs

if TYPE_CHECKING:
    from infosft.training.spec import RunSpec


# Per-micro-batch values gathered across ranks; every column but the first is summed per log.
_COLUMNS = ("loss", *TokenStats._fields, "input_tokens")


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; training stopped (see the message for what was
    saved)."""


def _is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def _patchable(model: nn.Module) -> nn.Module:
    """The module whose ``forward`` TRL's SFTTrainer patches: the model, or PEFT's base model."""
    return model.get_base_model() if _is_peft(model) else model


def _undo_fused_lm_head(model: nn.Module, given_forward: Any) -> None:
    """Give ``model`` back the ``forward`` it had before ``SFTTrainer.__init__``.

    TRL 1.16's SFTTrainer calls ``trl.trainer.utils.add_fused_lm_head``, which sets
    ``model.forward`` to a method whose closure holds the model's own bound ``forward``: a deep
    copy of the model would run the original's forward (and train the original's weights).
    InfoSFTTrainer computes its loss in the LM head and never calls ``fused_lm_head=True``.
    """
    if model.__dict__.get("forward") is given_forward:
        return
    if given_forward is None:
        del model.forward  # the class's forward again
    else:
        model.forward = given_forward


class EvaluateAtEnd(TrainerCallback):
    """Evaluate after the last optimizer step with ``eval_strategy: no``, inside the training
    loop (the Trainer itself does so for ``steps`` and ``epoch``): trackers that close their run
    when training ends (MLflow, trackio) log it in the training's run, and the last checkpoint
    holds it."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and args.eval_strategy == IntervalStrategy.NO:
            control.should_evaluate = True


class InfoSFTTrainer(SFTTrainer):
    """SFTTrainer computing ``nll``, ``dft``, ``infosft`` or any registered scheme with the fused
    weighted NLL, normalised by the token count of the whole optimizer step.

    Takes the same keyword arguments as ``trl.SFTTrainer`` (``model``, ``args``,
    ``train_dataset``, ``eval_dataset``, ``processing_class``, ``peft_config``, ...) except
    ``compute_loss_func``; ``args`` must be an :class:`InfoSFTConfig`. It is built by
    :func:`infosft.training.build_trainer`.

    Its datasets are prepared by :func:`infosft.training.preparation.prepare_rows`; the trainer
    keeps (and saves) the tokenizer it was given. With ``weight_source: base`` it adds a
    ``base_log_probs`` column computed once with the model as it is before training (cached
    under ``output_dir/_base_log_probs``).

    Logged every logging step: loss, ``nll`` of the same tokens, ``mean_q``, ``mean_weight``,
    ``zero_weight_share``, ``entropy``, ``tokens_per_second``, ``num_tokens``, ``kl_to_base``
    (when set) and the active ``method``, as a string and as ``method/<name>`` 0/1 values
    (evaluation logs the token statistics with an ``eval_`` prefix; trackers show them as
    ``train/...`` and ``eval/...``). With evaluation data the last step is always followed by
    an evaluation, in the training loop (:class:`EvaluateAtEnd`). A NaN or infinite training
    loss stops training with :class:`NonFiniteLossError`. :meth:`create_model_card` writes the
    InfoSFT model card, naming the model, data and LoRA of ``run_spec`` (the
    :class:`~infosft.training.RunSpec` that :func:`~infosft.training.build_trainer` passes;
    without one, the model's own name).
    """

    def __init__(
        self,
        model: Any,
        args: InfoSFTConfig | None = None,
        *,
        processing_class: Any = None,
        run_spec: RunSpec | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, InfoSFTConfig):
            raise TypeError(
                "InfoSFTTrainer needs args=InfoSFTConfig(output_dir=...), got "
                f"{type(args).__name__}"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "InfoSFTTrainer computes the loss itself; set InfoSFTConfig.method (or register "
                "a scheme with infosft.register_scheme) instead of passing compute_loss_func"
            )
        # What the model card says of the model, data and LoRA (build_trainer passes it).
        self.run_spec = run_spec
        template_tokenizer = marked_template_tokenizer(processing_class, args.assistant_only_loss)
        self._initial_model = model
        # The KL anchor's base model for full fine-tuning: a frozen copy of the model as given.
        # With PEFT the base is the same model with its adapters disabled.
        self._frozen_base = None
        if args.kl_to_base and kwargs.get("peft_config") is None and not _is_peft(model):
            self._frozen_base = copy.deepcopy(model).eval().requires_grad_(False)
        is_module = isinstance(model, nn.Module)
        given_forward = _patchable(model).__dict__.get("forward") if is_module else None
        super().__init__(
            model=model,
            args=args,
            processing_class=template_tokenizer or processing_class,
            **kwargs,
        )
        _undo_fused_lm_head(_patchable(self.model), given_forward)
        # Checkpoints keep the tokenizer's own template: several inference engines reject the
        # {% generation %} tag.
        if template_tokenizer is not None:
            self.processing_class = self.callback_handler.processing_class = processing_class
        parallelism = self.accelerator.parallelism_config
        if parallelism is not None and (parallelism.cp_enabled or parallelism.sp_enabled):
            raise ValueError(
                "InfoSFTTrainer does not support context or sequence parallelism (cp_size or "
                "sp_size > 1): the fused loss shifts labels within each sequence shard"
            )
        if args.weight_source == "base":
            # TRL's collator drops keys it does not know; this one passes the column through.
            self.data_collator = with_base_log_probs(self.data_collator)
        if self._frozen_base is not None:
            self._frozen_base.to(self.args.device)
        if self.eval_dataset is not None:
            self.add_callback(EvaluateAtEnd())
        # compute_loss below consumes num_items_in_batch itself, whatever the model's forward takes,
        # so the Trainer must count it.
        self.model_accepts_loss_kwargs = True
        self._sums: dict[str, dict[str, float]] = {}
        self._window_start: float | None = None
        self._last_method = args.schedule_entry(None, 0).method

    def _prepare_dataset(
        self,
        dataset: Any,
        processing_class: Any,
        args: InfoSFTConfig,
        packing: bool,
        formatting_func: Any,
        dataset_name: str,
    ) -> Any:
        """:func:`~infosft.training.preparation.prepare_rows` with TRL's own preparation, then
        the base model's log q (``weight_source: base``)."""

        def tokenize(rows: Any, tokenizer: Any) -> Any:
            return super(InfoSFTTrainer, self)._prepare_dataset(
                rows, tokenizer, args, packing, formatting_func, dataset_name
            )

        prepared = prepare_rows(
            dataset, processing_class, args, name=dataset_name, packing=packing, tokenize=tokenize
        )
        if args.weight_source == "base" and COLUMN not in prepared.column_names:
            if getattr(self, "state", None) is not None and self.state.global_step > 0:
                raise ValueError(
                    "weight_source='base' needs the base model's log q of every evaluation "
                    "example: pass the evaluation data when the trainer is built, not after "
                    "training (the model is no longer the base model)"
                )
            prepared = compute_base_log_probs(
                self._initial_model,
                prepared,
                cache_dir=os.path.join(args.output_dir, BASE_LOG_PROBS_DIR),
                pad_token_id=self._tokenizer.pad_token_id or 0,
            )
        return prepared

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # remove_unused_columns would otherwise drop the static weights' column.
        if self.args.weight_source == "base" and COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, COLUMN]

    def _target_weights(self, inputs: dict[str, Any], entry: ScheduleEntry) -> Tensor | None:
        """Fixed weights [B, T] from the base model's log q, or None to use the current model's."""
        if self.args.weight_source == "current":
            return None
        base_log_probs = inputs.get(COLUMN)
        if base_log_probs is None:
            raise ValueError(
                "weight_source='base' needs a 'base_log_probs' tensor [B, T] (aligned with labels) "
                "in every batch; compute it before training with infosft.training.static_weights"
            )
        # Values where labels are ignored are arbitrary (possibly NaN); zero them first.
        base_log_probs = base_log_probs.masked_fill(inputs["labels"] == IGNORE_INDEX, 0.0)
        return token_weights(base_log_probs, entry.scheme)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        mode = "train" if self.model.training else "eval"
        entry = self.args.schedule_entry(self.state.epoch, self.state.global_step)
        target_weights = self._target_weights(inputs, entry)
        batch = {k: v for k, v in inputs.items() if k != COLUMN}
        base = None
        if self.args.kl_to_base:
            base = base_head_inputs(
                model,
                batch,
                frozen_base=self._frozen_base,
                unwrapped=self.accelerator.unwrap_model(model),
            )
        loss, stats = causal_lm_loss(
            model,
            batch,
            method=entry.scheme,
            num_items_in_batch=num_items_in_batch,
            base=base,
            kl_to_base=self.args.kl_to_base,
            target_weights=target_weights,
        )
        # As in Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP
        # averages gradients over ranks, so scale the rank's sum back up.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._record(mode, loss, stats, inputs, entry.method)
        if return_outputs:
            # compute_metrics needs the full logits: a second forward, without gradients.
            with torch.no_grad():
                outputs = model(**forward_inputs(batch))
            return loss, outputs
        return loss

    def _record(
        self, mode: str, loss: Tensor, stats: TokenStats, inputs: dict[str, Any], method: str
    ) -> None:
        """Gather this micro-batch's token statistics from every rank, add them to the log sums,
        and stop training on a non-finite loss."""
        if "attention_mask" in inputs:
            input_tokens = inputs["attention_mask"].sum()
        else:
            input_tokens = torch.tensor(inputs["input_ids"].numel())
        sum_kl = stats.sum_nll.new_zeros(()) if stats.sum_kl is None else stats.sum_kl
        input_tokens = input_tokens.to(loss.device, torch.float32)
        row = torch.stack([loss.detach().float(), *stats[:-1], sum_kl, input_tokens]).unsqueeze(0)
        rows = self.accelerator.gather(row).cpu()
        if mode == "train" and not bool(torch.isfinite(rows[:, 0]).all()):
            self._stop_on_non_finite(rows[:, 0].tolist(), method)
        if not self._sums.get(mode):
            self._sums[mode] = dict.fromkeys(_COLUMNS[1:], 0.0)
            if mode == "train":
                self._window_start = time.perf_counter()
        totals = rows[:, 1:].double().sum(0).tolist()
        for name, value in zip(_COLUMNS[1:], totals, strict=True):
            self._sums[mode][name] += value
        if mode == "train":
            self._total_train_tokens += int(totals[-1])
            self._last_method = method

    def _stop_on_non_finite(self, losses: list[float], method: str) -> None:
        """Raise NonFiniteLossError; first save a checkpoint of the state before this step if
        the weights are still finite (a diverged model is not worth resuming from)."""
        step = self.state.global_step + 1
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        finite = bool(
            self.accelerator.gather(torch.tensor([finite], device=self.args.device)).all()
        )
        if finite:
            self._save_checkpoint(self.model, trial=None)
            checkpoint = os.path.join(
                self._get_output_dir(trial=None),
                f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}",
            )
            saved = (
                f"the weights before this step are finite and saved in {checkpoint}; after "
                "changing the settings, continue from it with --resume (train(spec, resume=True) "
                "in Python)"
            )
        else:
            saved = "the weights themselves are no longer finite, so no checkpoint was saved"
        raise NonFiniteLossError(
            f"non-finite training loss {losses} at step {step} (method={method!r}); {saved}. "
            "Lower the learning rate, check the data for empty or corrupt examples, or train in "
            "float32."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        sums = self._sums.pop(mode, None)
        if sums:
            prefix = "eval_" if mode == "eval" else ""
            kl = sums["sum_kl"] if self.args.kl_to_base else None
            stats = TokenStats(*(sums[name] for name in TokenStats._fields[:-1]), sum_kl=kl)
            logs.update({prefix + name: value for name, value in stats.means().items()})
            if mode == "train":
                elapsed = time.perf_counter() - self._window_start
                logs["tokens_per_second"] = sums["input_tokens"] / max(elapsed, 1e-9)
                logs["num_tokens"] = float(self._total_train_tokens)
                logs["method"] = self._last_method
                # The same as numbers, one 0/1 line per method of the run: trackers that keep
                # only numbers (MLflow drops strings) still show which method is active and
                # where a loss schedule switches.
                for method in self.args.methods:
                    logs[f"method/{method}"] = float(method == self._last_method)
        super().log(logs, start_time)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        language: str | list[str] | None = None,
        license: str | None = None,
        finetuned_from: str | None = None,
        output_dir: str | None = None,
    ) -> None:
        """Write the InfoSFT model card (:mod:`infosft.training.model_card`) as README.md in
        ``output_dir`` (default ``args.output_dir``), atomically, on the main process.

        The Trainer calls it from ``push_to_hub`` and TRL at every checkpoint save, so what is
        uploaded carries the objective, data, settings and last diagnostics of the run.
        """
        if not self.is_world_process_zero():
            return
        from infosft.training.model_card import write_model_card

        write_model_card(
            self,
            output_dir or self.args.output_dir,
            model_name=model_name,
            dataset_name=dataset_name,
            tags=tags,
            language=language,
            license=license,
            finetuned_from=finetuned_from,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # push_to_hub saves into output_dir before it uploads the folder. After
        # infosft.training.train the final model is there already (for LoRA merged, the adapter
        # in adapter/); saving again would put the adapter's files beside the merged weights.
        if output_dir is None and _internal_call and final_model_saved(Path(self.args.output_dir)):
            return
        super().save_model(output_dir, _internal_call)
