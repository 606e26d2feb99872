"""What a training run writes into its output directory, and the checks that keep it safe.

``output_dir`` of a run holds, at the top:

- the final Hugging Face checkpoint (config.json, model.safetensors, generation_config.json,
  tokenizer with its chat template); with LoRA, the adapter merged into the base weights, and
  the adapter alone in ``adapter/``;
- ``README.md``: the model card (objective, data, settings, final diagnostics, evaluations);
- ``run_config.json``: the resolved run spec, data sources and environment;
- ``metrics.jsonl``: one JSON object per logging step, flushed as it is written;
- ``_finished.json``: written last, once the final model is complete: the run is finished;
- the Trainer's ``checkpoint-N`` directories, from which ``resume`` continues, and with
  ``weight_source: base`` the base model's log q in ``_base_log_probs/``.

"Finished" is the marker, not the model files: with ``push_to_hub`` the Trainer copies every
checkpoint's config.json and weights to the top of ``output_dir`` (and TRL writes the card at
every checkpoint), so an interrupted run holds them too. ``push_to_hub`` uploads the directory
as the Trainer does, leaving out names starting with ``_`` and ``checkpoint-``: the model, the
tokenizer, the card, ``adapter/``, ``run_config.json`` (with the paths as the run was given
them), ``metrics.jsonl``, TensorBoard's ``runs/`` and the Trainer's ``training_args.bin`` go up;
the marker and the base log-prob cache (large, and recomputed from the model and data) do not.

Nothing is overwritten by accident: a fresh run refuses a directory that holds a finished run,
a model that no unfinished run of infosft left there, or unrelated files (such as a project's
README.md when ``--output-dir`` points at the working directory).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from infosft.files import append_jsonl, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.json"
CARD_FILE = "README.md"
ADAPTER_DIR = "adapter"
FINISHED_FILE = "_finished.json"
BASE_LOG_PROBS_DIR = "_base_log_probs"
"""Where ``weight_source: base`` caches the base model's log q (``_``: never uploaded)."""
TRAINER_STATE = "trainer_state.json"
INCOMPLETE_SUFFIX = ".incomplete"
# What an unfinished run leaves besides checkpoints: a fresh run may start over on top of it.
RESTARTABLE = {RUN_CONFIG_FILE, METRICS_FILE, BASE_LOG_PROBS_DIR, "runs"}
# Files of a model at the top of a directory, including those the Trainer copies there from
# each checkpoint when it pushes to the Hub.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "*.bin.index.json",
    "adapter_config.json",
    "adapter_model.*",
)


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
            append_jsonl(path, {"step": state.global_step, "epoch": state.epoch, **logs})

    return MetricsLogger()


def read_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """A checkpoint's trainer_state.json, or None when the checkpoint is incomplete.

    The Trainer writes trainer_state.json last, so a save cut off by a kill or Ctrl-C leaves
    the file missing or truncated.
    """
    try:
        state = json.loads(Path(checkpoint, TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) and "global_step" in state else None


def checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories in ``output_dir``, oldest (lowest N) first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        prefix, _, number = path.name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and number.isdigit() and path.is_dir():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def is_model_file(path: Path) -> bool:
    """Whether ``path`` is a model's file or a LoRA run's ``adapter/`` (see MODEL_FILES)."""
    if path.is_dir():
        return path.name == ADAPTER_DIR
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in MODEL_FILES)


def final_model_saved(output_dir: Path) -> bool:
    """Whether a run's final save into ``output_dir`` completed (the run is finished)."""
    return (output_dir / FINISHED_FILE).is_file()


def check_output_dir(output_dir: Path) -> None:
    """ValueError unless ``output_dir`` is a directory (or a path to create) a run may start in:
    not a file, not a finished run, and holding nothing but what an unfinished run left."""
    _reject_file(output_dir)
    if not output_dir.is_dir():
        return
    if final_model_saved(output_dir):
        raise ValueError(
            f"{output_dir} holds the final model of an earlier run; choose another --output-dir "
            "(or delete that run first). To train further from that model, pass it as --model"
        )
    pushed = _pushed_to_hub(output_dir)
    others = sorted(
        (path for path in output_dir.iterdir() if not _left_by_a_run(path, pushed)),
        key=lambda path: path.name,
    )
    if not others:
        return
    shown = ", ".join(path.name for path in others[:5]) + (", ..." if len(others) > 5 else "")
    if any(is_model_file(path) for path in others):
        raise ValueError(
            f"{output_dir} holds a model ({shown}) that no unfinished infosft run left there; "
            "choose another --output-dir (or delete it first). To train further from that "
            "model, pass it as --model"
        )
    raise ValueError(
        f"{output_dir} is not empty and is not an infosft run directory (it holds {shown}); "
        "choose a new or empty --output-dir"
    )


def _left_by_a_run(path: Path, pushed: bool) -> bool:
    """Whether ``path`` (in an output directory) is what an unfinished run leaves: its
    bookkeeping, the model card TRL writes at every checkpoint and, when the run pushed to the
    Hub, the files the Trainer copies to the top at every checkpoint."""
    name = path.name
    if name in RESTARTABLE or name.startswith(".") or name.endswith(INCOMPLETE_SUFFIX):
        return True
    if name.partition("-")[0] == PREFIX_CHECKPOINT_DIR and path.is_dir():
        return True
    if name == CARD_FILE and path.is_file():
        from infosft.training.model_card import is_infosft_card

        return is_infosft_card(path.parent)
    return pushed and path.is_file()


def _pushed_to_hub(output_dir: Path) -> bool:
    """Whether the run recorded in ``output_dir``'s run_config.json pushed to the Hub."""
    args = read_run_config(output_dir).get("args")
    return isinstance(args, dict) and bool(args.get("push_to_hub"))


def read_run_config(output_dir: Path) -> dict[str, Any]:
    """The run_config.json a run of :func:`infosft.training.train` wrote in ``output_dir``;
    {} when there is none (a trainer built otherwise) or it is unreadable."""
    try:
        record = json.loads(Path(output_dir, RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def checkpoint_to_resume(output_dir: Path, resume: bool | str | os.PathLike) -> str | None:
    """The checkpoint directory to continue from, or None for a fresh run.

    A fresh run refuses an output_dir that already holds checkpoints, so two runs never mix.
    ``resume=True`` continues from the last complete ``checkpoint-N``; incomplete ones (a save
    cut off mid-way) are renamed ``checkpoint-N.incomplete`` with a warning, and when none is
    complete the run starts over. A path resumes from that checkpoint. A run whose final model
    is saved is finished: resuming it is an error.
    """
    _reject_file(output_dir)
    if resume and final_model_saved(output_dir):
        raise ValueError(
            f"the run in {output_dir} is finished (its final model is saved); nothing to resume. "
            "To train further from that model, pass it as --model with a new --output-dir"
        )
    if resume and not isinstance(resume, bool):
        if read_trainer_state(resume) is None:
            raise FileNotFoundError(
                f"{resume} is not a complete Trainer checkpoint (no readable trainer_state.json)"
            )
        return os.fspath(resume)
    found = checkpoints(output_dir)
    if not resume:
        if found:
            raise ValueError(
                f"{output_dir} already holds checkpoints of an earlier run ({found[-1].name}); "
                "pass --resume to continue it, or choose another --output-dir"
            )
        check_output_dir(output_dir)
        return None
    if not found:
        raise FileNotFoundError(
            f"nothing to resume: {output_dir} holds no checkpoint-N directory; "
            "run without --resume, or set save_steps so that checkpoints are written"
        )
    complete = [path for path in found if read_trainer_state(path) is not None]
    for path in found:
        if path not in complete:
            aside = path.with_name(path.name + INCOMPLETE_SUFFIX)
            os.replace(path, aside)
            logger.warning("%s was cut off while it was saved; moved it to %s", path, aside.name)
    if not complete:
        logger.warning("no complete checkpoint in %s; training starts over", output_dir)
        return None
    return str(complete[-1])


def _reject_file(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file; give a directory")


def training_finished(checkpoint: str | None) -> bool:
    """Whether ``checkpoint`` was saved at the last step of its run (its max_steps)."""
    if checkpoint is None:
        return False
    state = read_trainer_state(checkpoint) or {}
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def save_final_model(trainer: Any, output_dir: Path) -> None:
    """Write the trained model and tokenizer at the top of ``output_dir``, file by file
    atomically, then the marker that the run is finished (:data:`FINISHED_FILE`).

    A LoRA model is saved twice: the adapter in ``adapter/`` and the adapter merged into the
    base weights at the top, which ``from_pretrained`` and vLLM load without PEFT. The model
    card (README.md, see :mod:`infosft.training.model_card`) is written with it. Model files at
    the top that the final model does not have (the Trainer's copies of a LoRA checkpoint's
    adapter, when it pushed to the Hub) are deleted: ``from_pretrained`` would load them.
    """
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        # The model card (README.md) moves in with the model; written before a LoRA merge.
        trainer.create_model_card(output_dir=str(staging))
        model = trainer.accelerator.unwrap_model(trainer.model)
        # _internal_call: save_model would otherwise push_to_hub before the model is in place.
        if hasattr(model, "merge_and_unload"):
            trainer.save_model(str(staging / ADAPTER_DIR), _internal_call=True)
            if trainer.is_world_process_zero():
                merged = model.merge_and_unload()
                merged.save_pretrained(staging)
                trainer.processing_class.save_pretrained(staging)
        else:
            trainer.save_model(str(staging), _internal_call=True)
        if trainer.is_world_process_zero():
            for path in output_dir.iterdir():
                if path.is_file() and is_model_file(path) and not (staging / path.name).exists():
                    path.unlink()
            for item in staging.iterdir():
                target = output_dir / item.name
                if item.is_dir() and target.is_dir():
                    shutil.rmtree(target)
                os.replace(item, target)
            state = trainer.state
            write_json_atomic(
                output_dir / FINISHED_FILE,
                {"global_step": state.global_step, "max_steps": state.max_steps},
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
