"""The training recipe behind ``infosft train``: model + data + InfoSFTConfig -> a checkpoint.

Read top to bottom, :func:`train` resolves the configuration (defaults < config file <
arguments, with CPU-safe defaults), loads and checks the data, loads the model, builds an
:class:`~infosft.training.InfoSFTTrainer`, trains (or resumes), and writes at the top of
``output_dir``:

- the final Hugging Face checkpoint (config.json, model.safetensors, generation_config.json,
  tokenizer with its chat template); with LoRA, the adapter merged into the base weights, and
  the adapter alone in ``adapter/``;
- ``run_config.json``: the fully resolved configuration, data sources and library versions;
- ``metrics.jsonl``: one JSON object per logging step, flushed as it is written.

Intermediate checkpoints are the Trainer's ``checkpoint-N`` directories; ``resume`` continues
from the last one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infosft.files import append_jsonl, environment, read_yaml, write_json_atomic, write_text_atomic
from infosft.models import DEFAULT_MODEL
from infosft.objectives import check_p_bar

if TYPE_CHECKING:
    from datasets import Dataset

    from infosft.training.config import InfoSFTConfig

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.json"
ADAPTER_DIR = "adapter"
BASE_LOG_PROBS_DIR = "base_log_probs"

# Keys of a config file that are arguments of train(), not InfoSFTConfig fields.
RECIPE_KEYS = (
    "model",
    "data",
    "eval_data",
    "data_format",
    "lora",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on the base model (the paper's code runs: rank 32, alpha 64, dropout 0.05
    on all projections). ``target_modules="all-linear"`` is every linear layer but the LM head."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclasses.dataclass
class TrainResult:
    """Where a run wrote its outputs, and how it went."""

    output_dir: Path
    metrics_path: Path
    config_path: Path
    train_seconds: float
    metrics: dict[str, Any]
    num_train_examples: int


def config_field_names() -> list[str]:
    """Every key an InfoSFTConfig accepts (TrainingArguments, SFTConfig and InfoSFT fields)."""
    from infosft.training.config import InfoSFTConfig

    return [f.name for f in dataclasses.fields(InfoSFTConfig) if f.init]


def check_keys(keys: list[str], where: str, allowed: list[str]) -> None:
    """ValueError naming each key not in ``allowed``, with the nearest valid names."""
    unknown = [key for key in keys if key not in allowed]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    raise ValueError(
        f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {'; '.join(hints)}. "
        "Valid keys are the InfoSFTConfig / TrainingArguments fields and "
        f"{', '.join(RECIPE_KEYS)}"
    )


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (or JSON) mapping of InfoSFTConfig fields and recipe keys, checked key by key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = read_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    check_keys(list(values), f"config file {path}", [*config_field_names(), *RECIPE_KEYS])
    return values


def device_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Defaults that depend on the machine, for keys the user did not set in ``values``.

    Without a GPU: ``use_cpu`` (TRL otherwise stops with "Your setup doesn't support
    bf16/gpu"), no activation checkpointing (memory is not the limit on CPU, and it costs a
    recomputation). ``bf16`` only where the GPU supports it.
    """
    import torch

    cuda = torch.cuda.is_available()
    defaults: dict[str, Any] = {}
    if not cuda and not torch.backends.mps.is_available():
        defaults["use_cpu"] = True
    if "bf16" not in values and "fp16" not in values:
        defaults["bf16"] = cuda and torch.cuda.is_bf16_supported()
    if not cuda and not {"gradient_checkpointing", "activation_checkpointing"} & set(values):
        defaults["activation_checkpointing"] = False
    return {key: value for key, value in defaults.items() if key not in values}


def build_config(output_dir: str | os.PathLike, values: dict[str, Any]) -> InfoSFTConfig:
    """InfoSFTConfig from ``values`` (field -> value) over the machine's defaults."""
    from infosft.training.config import InfoSFTConfig

    check_keys(list(values), "the training options", config_field_names())
    merged = {**device_defaults(values), **values, "output_dir": str(output_dir)}
    return InfoSFTConfig(**merged)


def _logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; infinity for a line cut short by a crash."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def metrics_logger(
    path: Path, keep_until_step: int | None = None, is_main_process: bool = True
) -> Any:
    """A TrainerCallback appending every log (train, eval, final summary) to ``path`` as JSONL.

    ``keep_until_step=None`` starts a new file; an int keeps the lines of an interrupted run up
    to that step (the checkpoint being resumed) and appends after them, so a resumed run's file
    reads as if it had never stopped. Only the main process touches the file.
    """
    from transformers import TrainerCallback

    if is_main_process:
        kept = ""
        if keep_until_step is not None and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = "".join(line for line in lines if _logged_step(line) <= keep_until_step)
        write_text_atomic(path, kept)

    class MetricsLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            append_jsonl(path, record)

    return MetricsLogger()


def _checkpoint_to_resume(output_dir: Path, resume: bool | str) -> str | None:
    """The checkpoint directory to resume from, or None for a fresh run.

    A fresh run refuses an output_dir that already holds checkpoints, so two runs never mix.
    """
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if isinstance(resume, str):
        if not Path(resume, "trainer_state.json").is_file():
            raise FileNotFoundError(f"{resume} is not a Trainer checkpoint (no trainer_state.json)")
        return resume
    if resume:
        if last is None:
            raise FileNotFoundError(
                f"nothing to resume: {output_dir} holds no checkpoint-N directory; "
                "run without --resume, or set save_steps so that checkpoints are written"
            )
        return last
    if last is not None:
        raise ValueError(
            f"{output_dir} already holds checkpoints of an earlier run ({Path(last).name}); "
            "pass --resume to continue it, or choose another --output-dir"
        )
    return None


def _peft_config(lora: LoraSpec) -> Any:
    from peft import LoraConfig

    target = lora.target_modules
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        task_type="CAUSAL_LM",
    )


def save_final_model(trainer: Any, output_dir: Path) -> None:
    """Write the trained model and tokenizer at the top of ``output_dir``, file by file atomically.

    A LoRA model is saved twice: the adapter in ``adapter/`` and the adapter merged into the
    base weights at the top, which ``from_pretrained`` and vLLM load without PEFT.
    """
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(model, "merge_and_unload"):
            trainer.save_model(str(staging / ADAPTER_DIR))
            if trainer.is_world_process_zero():
                merged = model.merge_and_unload()
                merged.save_pretrained(staging)
                trainer.processing_class.save_pretrained(staging)
        else:
            trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            for item in staging.iterdir():
                target = output_dir / item.name
                if item.is_dir() and target.is_dir():
                    shutil.rmtree(target)
                os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _describe(data: Any) -> Any:
    """How a data argument is recorded in run_config.json."""
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, (list, tuple)):
        return [_describe(item) for item in data]
    return f"<in-memory {type(data).__name__} of {len(data)} rows>"


def train(
    model: str = DEFAULT_MODEL,
    data: str | list[str] | Dataset | None = None,
    *,
    output_dir: str | os.PathLike,
    eval_data: str | list[str] | Dataset | None = None,
    data_format: str | None = None,
    loss_type: str | None = None,
    p_bar: float | None = None,
    seed: int | None = None,
    lora: LoraSpec | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool | str = False,
) -> TrainResult:
    """Fine-tune ``model`` on ``data`` and write a loadable checkpoint to ``output_dir``.

    Args:
        model: "smollm2-135m-instruct" (the embedded default), a checkpoint directory or a hub id.
        data: local .jsonl/.json/.parquet files or hub dataset names (see
            :func:`infosft.training.data.load_data`), or a ``datasets.Dataset``, in a TRL format.
        output_dir: where checkpoints, the final model, run_config.json and metrics.jsonl go.
        eval_data: like ``data``; evaluated every ``eval_steps`` if ``eval_strategy`` is set,
            and once at the end of training.
        data_format: formatter applied to raw rows first (:mod:`infosft.training.formats`).
        loss_type, p_bar, seed: InfoSFTConfig fields; when given they override ``overrides``.
        lora: train LoRA adapters instead of every weight.
        overrides: any other InfoSFTConfig fields (optim, learning_rate, max_steps, bf16, ...).
        resume: True to continue from the last ``checkpoint-N`` in ``output_dir``, or the path of
            a checkpoint; the resumed run logs the same losses as an uninterrupted one.

    Returns:
        TrainResult with the output paths, the training time (seconds) and the final metrics.

    Raises:
        ValueError / FileNotFoundError for bad options or data (before any model is loaded),
        and :class:`infosft.training.NonFiniteLossError` (a ValueError) when the loss becomes
        NaN or infinite, after a checkpoint of the last good state was saved.
    """
    from infosft.models import load_model_and_tokenizer, training_chat_template
    from infosft.training.data import drop_examples_without_targets, load_data

    values = dict(overrides or {})
    explicit = {"loss_type": loss_type, "p_bar": p_bar, "seed": seed}
    values.update({key: value for key, value in explicit.items() if value is not None})
    if "p_bar" in values:
        values["p_bar"] = check_p_bar(values["p_bar"])
    if data is None:
        raise ValueError("no training data given; pass --data FILE (or a hub dataset name)")
    output_dir = Path(output_dir)
    checkpoint = _checkpoint_to_resume(output_dir, resume)
    args = build_config(output_dir, values)

    train_dataset = load_data(data, data_format)
    eval_dataset = None if eval_data is None else load_data(eval_data, data_format)
    # The model is loaded here, not by SFTTrainer, so that the embedded default resolves.
    model_kwargs = dict(args.model_init_kwargs or {})
    model_obj, tokenizer = load_model_and_tokenizer(
        model, dtype=model_kwargs.pop("dtype", None), **model_kwargs
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / METRICS_FILE
    keep_until = None
    if checkpoint is not None:
        state = json.loads(Path(checkpoint, "trainer_state.json").read_text(encoding="utf-8"))
        keep_until = state["global_step"]

    from infosft.training.trainer import InfoSFTTrainer

    # Hidden from SFTTrainer, which would warn that it ignores them; they were used above.
    init_kwargs, args.model_init_kwargs = args.model_init_kwargs, None
    # SFTTrainer tokenizes the data when it is built; assistant-only masks need a template with
    # {% generation %} markers then, and the original one is restored for every saved copy.
    chat_template = tokenizer.chat_template
    marked_template = training_chat_template(chat_template) if args.assistant_only_loss else None
    if marked_template is not None:
        tokenizer.chat_template = marked_template
    trainer = InfoSFTTrainer(
        model=model_obj,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=None if lora is None else _peft_config(lora),
        callbacks=[metrics_logger(metrics_path, keep_until, args.process_index == 0)],
    )
    args.model_init_kwargs = init_kwargs
    if marked_template is not None and tokenizer.chat_template == marked_template:
        tokenizer.chat_template = chat_template
    if not args.packing:
        trainer.train_dataset = drop_examples_without_targets(
            trainer.train_dataset, len(train_dataset), "training", args.max_length
        )
    eval_packing = args.packing if args.eval_packing is None else args.eval_packing
    if eval_dataset is not None and not eval_packing:
        trainer.eval_dataset = drop_examples_without_targets(
            trainer.eval_dataset, len(eval_dataset), "evaluation", args.max_length
        )
    if args.weight_source == "base":
        from infosft.training.static_weights import attach_base_log_probs

        attach_base_log_probs(trainer, cache_dir=output_dir / BASE_LOG_PROBS_DIR)

    config_path = output_dir / RUN_CONFIG_FILE
    if trainer.is_world_process_zero():
        write_json_atomic(
            config_path,
            {
                "model": model,
                "model_path": model_obj.name_or_path,
                "data": _describe(data),
                "eval_data": _describe(eval_data),
                "data_format": data_format,
                "lora": None if lora is None else dataclasses.asdict(lora),
                "resumed_from": checkpoint,
                "num_train_examples": len(trainer.train_dataset),
                "num_eval_examples": None if eval_dataset is None else len(trainer.eval_dataset),
                "args": args.to_dict(),
                "environment": environment(),
            },
        )

    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    metrics = dict(output.metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    save_final_model(trainer, output_dir)
    return TrainResult(
        output_dir=output_dir,
        metrics_path=metrics_path,
        config_path=config_path,
        train_seconds=train_seconds,
        metrics=metrics,
        num_train_examples=len(trainer.train_dataset),
    )
