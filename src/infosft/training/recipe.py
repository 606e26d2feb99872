"""The training recipe: a :class:`~infosft.training.spec.RunSpec` -> a trainer -> a checkpoint.

:func:`build_trainer` is the one place an :class:`~infosft.training.InfoSFTTrainer` is built:
it loads and checks the data, loads the model (unless one is passed) and hands both to the
trainer, whose dataset preparation does the rest. :func:`train` is build, train, save, as
``infosft train`` runs it; see :mod:`infosft.training.outputs` for what it writes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infosft.training.outputs import (
    METRICS_FILE,
    RUN_CONFIG_FILE,
    TRAINER_STATE,
    checkpoint_to_resume,
    metrics_logger,
    read_trainer_state,
    save_final_model,
    training_finished,
)
from infosft.training.spec import RunSpec

if TYPE_CHECKING:
    from infosft.training.trainer import InfoSFTTrainer


@dataclasses.dataclass
class TrainResult:
    """Where a run wrote its outputs, and how it went."""

    output_dir: Path
    metrics_path: Path
    config_path: Path
    train_seconds: float
    metrics: dict[str, Any]
    num_train_examples: int


def build_trainer(
    spec: RunSpec, *, model: Any = None, tokenizer: Any = None, callbacks: Sequence[Any] = ()
) -> InfoSFTTrainer:
    """A ready-to-train InfoSFTTrainer for ``spec``; writes nothing of its own.

    Args:
        spec: the run (model, data, LoRA and InfoSFTConfig).
        model: an already loaded model to train instead of loading ``spec.model`` (e.g. a deep
            copy of a base model kept in memory); pass its ``tokenizer`` with it.
        tokenizer: the tokenizer of ``model``.
        callbacks: TrainerCallbacks added to the trainer's defaults.

    Data is loaded and checked before the model, so bad data fails fast (token ids against the
    vocabulary size in the model's config).
    """
    from infosft.models import load_model_and_tokenizer
    from infosft.models.loading import model_vocab_size
    from infosft.training.data import load_data
    from infosft.training.trainer import InfoSFTTrainer

    def vocab_size() -> int:
        if model is None:
            loading = spec.model_init_kwargs or {}
            kwargs = {k: loading[k] for k in ("trust_remote_code", "revision") if k in loading}
            return model_vocab_size(spec.model, **kwargs)
        return model.get_input_embeddings().num_embeddings

    train_dataset = load_data(spec.data, spec.data_format, vocab_size)
    eval_dataset = (
        None if spec.eval_data is None else load_data(spec.eval_data, spec.data_format, vocab_size)
    )
    if model is None:
        model, loaded_tokenizer = load_model_and_tokenizer(
            spec.model, **(spec.model_init_kwargs or {})
        )
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        raise ValueError("build_trainer(model=...) needs the model's tokenizer as well")
    return InfoSFTTrainer(
        model=model,
        args=spec.args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=None if spec.lora is None else spec.lora.peft_config(),
        callbacks=list(callbacks),
        run_spec=spec,
    )


def optimizer_steps_per_epoch(trainer: InfoSFTTrainer) -> int:
    """Optimizer steps in one epoch over the trainer's (prepared) training data, as the
    Trainer counts them: batches over all processes, the last partial one included, then
    gradient accumulation rounding up."""
    args = trainer.args
    batches = math.ceil(len(trainer.train_dataset) / args.train_batch_size / args.world_size)
    if args.dataloader_drop_last:
        batches = len(trainer.train_dataset) // (args.train_batch_size * args.world_size)
    return max(math.ceil(batches / args.gradient_accumulation_steps), 1)


def train(spec: RunSpec, *, resume: bool | str = False) -> TrainResult:
    """Fine-tune as ``spec`` says and write a loadable checkpoint with its model card to
    ``spec.args.output_dir`` (then upload that directory when ``push_to_hub`` is set).

    Args:
        spec: the run; see :class:`~infosft.training.spec.RunSpec`.
        resume: True to continue from the last complete ``checkpoint-N`` in the output
            directory, or the path of a checkpoint (``resume_from_checkpoint`` in the spec does
            the same); the resumed run logs the same losses as an uninterrupted one.

    Returns:
        TrainResult with the output paths, the training time (seconds) and the final metrics.

    Raises:
        ValueError / FileNotFoundError for bad options, data or output directory (before any
        model is loaded), and :class:`infosft.training.NonFiniteLossError` (a ValueError) when
        the loss becomes NaN or infinite.
    """
    from transformers import TrainerState

    from infosft.training.config import check_schedule_fits

    output_dir = Path(spec.args.output_dir)
    args = spec.args
    if args.max_steps > 0:
        check_schedule_fits(args.schedule, steps=args.max_steps)
    else:
        check_schedule_fits(args.schedule, epochs=args.num_train_epochs)
    checkpoint = checkpoint_to_resume(output_dir, resume or spec.args.resume_from_checkpoint, spec)
    trainer = build_trainer(spec)
    # A schedule in steps for a run in epochs (or the reverse) is checked once the data says
    # how many optimizer steps an epoch has.
    per_epoch = optimizer_steps_per_epoch(trainer)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    check_schedule_fits(args.schedule, steps=steps, epochs=steps / per_epoch)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / METRICS_FILE
    keep_until = None if checkpoint is None else read_trainer_state(checkpoint)["global_step"]
    trainer.add_callback(metrics_logger(metrics_path, keep_until, trainer.is_world_process_zero()))

    config_path = output_dir / RUN_CONFIG_FILE
    if trainer.is_world_process_zero():
        from infosft.files import environment, write_json_atomic

        write_json_atomic(
            config_path,
            {
                **spec.to_dict(),
                "model_path": trainer.model.name_or_path,
                "resumed_from": checkpoint,
                "num_train_examples": len(trainer.train_dataset),
                "num_eval_examples": None
                if trainer.eval_dataset is None
                else len(trainer.eval_dataset),
                "args": spec.args.to_dict(),
                "environment": environment(),
            },
        )

    start = time.perf_counter()
    if training_finished(checkpoint):
        # The run ended but its final save did not: save the last checkpoint's model and state
        # (with the evaluations it logged), without the extra step the Trainer would take when
        # resumed at max_steps.
        trainer._load_from_checkpoint(checkpoint)
        trainer.state = TrainerState.load_from_json(Path(checkpoint, TRAINER_STATE))
        metrics: dict[str, Any] = {}
    else:
        metrics = dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)
    train_seconds = time.perf_counter() - start
    # The trainer evaluated after the last step (InfoSFTTrainer's EvaluateAtEnd), in the loop.
    evaluations = [log for log in trainer.state.log_history if "eval_loss" in log]
    if evaluations:
        metrics.update({k: v for k, v in evaluations[-1].items() if k.startswith("eval_")})
    save_final_model(trainer, output_dir)
    if spec.args.push_to_hub:
        # The Trainer's own upload of output_dir (model, card, logs), once all of it is there.
        trainer.push_to_hub()
    return TrainResult(
        output_dir=output_dir,
        metrics_path=metrics_path,
        config_path=config_path,
        train_seconds=train_seconds,
        metrics=metrics,
        num_train_examples=len(trainer.train_dataset),
    )
