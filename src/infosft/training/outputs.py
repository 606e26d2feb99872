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
every checkpoint), so an interrupted run holds them too; only ``--resume`` continues such a
directory, as model files at the top may as well be a finished run whose marker was not
uploaded (a clone of a pushed run). ``push_to_hub`` uploads the directory
as the Trainer does, leaving out names starting with ``_`` and ``checkpoint-``: the model, the
tokenizer, the card, ``adapter/``, ``run_config.json`` (with the paths as the run was given
them), ``metrics.jsonl``, TensorBoard's ``runs/`` and the Trainer's ``training_args.bin`` go up;
the marker and the base log-prob cache (large, and recomputed from the model and data) do not.

Nothing is overwritten by accident: a fresh run refuses a directory that holds a finished run,
any model, tokenizer or weights file, or unrelated files (such as a project's README.md when
``--output-dir`` points at the working directory); a resumed run refuses a directory whose
run_config.json records a different run (see :data:`MAY_CHANGE_ON_RESUME`); and an output path
that is a file, a dangling symbolic link or not writable is refused before anything is written.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from infosft.files import append_jsonl, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from infosft.training.spec import RunSpec

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
# Anything else a fresh run refuses as someone's model: weights in any format, tokenizers.
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
MAY_CHANGE_ON_RESUME = (
    "output_dir",
    "logging_",
    "log_",
    "disable_tqdm",
    "report_to",
    "run_name",
    "project",
    "trackio_",
    "include_num_input_tokens_seen",
    "skip_memory_metrics",
    "save_",
    "enable_jit_checkpoint",
    "push_to_hub",
    "hub_",
    "resume_from_checkpoint",
    "eval_",
    "per_device_eval_batch_size",
    "prediction_loss_only",
    "include_for_metrics",
    "batch_eval_metrics",
    "bf16_full_eval",
    "fp16_full_eval",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context",
    "ddp_",
    "local_rank",
    "activation_checkpointing",
    "gradient_checkpointing",
    "activation_offloading",
    "torch_empty_cache_steps",
    "torch_compile",
    "use_cpu",
    "tf32",
    "dataset_num_proc",
    "do_",
    "debug",
)
"""InfoSFTConfig fields (names or name prefixes) a resumed run may set differently from the run
it continues: logging, tracking, saving and uploading, evaluation cadence, and how the same
computation is carried out (workers, devices, compilation, activation checkpointing). Every
other field, and the model, its loading, the data, eval data, data format and LoRA, define
the run: a resume that changes one is refused, or its metrics and model card would describe a
run that never happened."""


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


def holds_weights(path: Path) -> bool:
    """Whether ``path`` is a model's, a tokenizer's or a checkpoint's file (or a LoRA run's
    ``adapter/``): something a run must never overwrite unless it wrote it itself."""
    name = path.name
    return (
        is_model_file(path)
        or name in TOKENIZER_FILES
        or name.lower().endswith(WEIGHTS_SUFFIXES)
        or name.partition("-")[0] == PREFIX_CHECKPOINT_DIR
    )


def check_output_dir(output_dir: Path) -> None:
    """ValueError unless ``output_dir`` is a directory (or a path to create) a fresh run may
    start in: not a file, not a finished run, holding no model, tokenizer or weights file and
    nothing but the bookkeeping an unfinished run left (see :func:`check_output_path`)."""
    check_output_path(output_dir)
    if not output_dir.is_dir():
        return
    if final_model_saved(output_dir):
        raise ValueError(
            f"{output_dir} holds the final model of an earlier run; choose another --output-dir "
            "(or delete that run first). To train further from that model, pass it as --model"
        )
    # Paths of one directory sort by their names.
    others = sorted(path for path in output_dir.iterdir() if not _left_by_a_run(path))
    if not others:
        return
    models = [path for path in others if holds_weights(path)]
    shown = ", ".join(path.name for path in (models or others)[:5])
    shown += ", ..." if len(models or others) > 5 else ""
    if models:
        raise ValueError(
            f"{output_dir} holds a model ({shown}); a fresh run would overwrite it. Choose "
            "another --output-dir (or delete those files first); to continue an interrupted "
            "run there pass --resume, to train further from that model pass it as --model"
        )
    raise ValueError(
        f"{output_dir} is not empty and is not an infosft run directory (it holds {shown}); "
        "choose a new or empty --output-dir"
    )


def _left_by_a_run(path: Path) -> bool:
    """Whether ``path`` (in an output directory) is the bookkeeping an unfinished run leaves
    (its config, log, TensorBoard logs, cache, the model card TRL writes at every checkpoint,
    checkpoints set aside as incomplete), which a fresh run may start over on."""
    name = path.name
    if name in RESTARTABLE or name.startswith(".") or name.endswith(INCOMPLETE_SUFFIX):
        return True
    return name == CARD_FILE and path.is_file() and is_infosft_card(path.parent)


def is_infosft_card(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` holds a model card written by infosft (tagged ``infosft``)."""
    from huggingface_hub import ModelCard

    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return False
    tags = ModelCard.load(path, ignore_metadata_errors=True).data.tags or []
    return "infosft" in tags


def check_output_path(output_dir: Path) -> None:
    """ValueError unless ``output_dir`` is a writable directory or a path where one can be
    created: not a file, not a dangling symbolic link, under a writable directory."""
    try:
        if output_dir.is_symlink() and not output_dir.exists():
            raise ValueError(
                f"output_dir {output_dir} is a symbolic link to {os.readlink(output_dir)}, which "
                "does not exist; create that directory or give another --output-dir"
            )
        if output_dir.exists():
            if not output_dir.is_dir():
                raise ValueError(f"output_dir {output_dir} is a file; give a directory")
            if not os.access(output_dir, os.W_OK | os.X_OK):
                raise ValueError(
                    f"output_dir {output_dir} is not writable; give a directory you may write in"
                )
            return
        parent = output_dir.absolute().parent
        while not os.path.lexists(parent):
            parent = parent.parent
        if not parent.is_dir():
            what = "a dangling symbolic link" if parent.is_symlink() else "a file"
            raise ValueError(
                f"output_dir {output_dir} cannot be created: {parent} is {what}, not a directory"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(
                f"output_dir {output_dir} cannot be created: {parent} is not writable; give "
                "another --output-dir"
            )
    except OSError as err:
        # A name too long, a loop of symbolic links: the path itself is unusable.
        raise ValueError(f"output_dir {output_dir} is not a usable path ({err.strerror})") from None


def read_run_config(output_dir: Path) -> dict[str, Any]:
    """The run_config.json a run of :func:`infosft.training.train` wrote in ``output_dir``;
    {} when there is none (a trainer built otherwise) or it is unreadable."""
    try:
        record = json.loads(Path(output_dir, RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def checkpoint_to_resume(
    output_dir: Path, resume: bool | str | os.PathLike, spec: RunSpec | None = None
) -> str | None:
    """The checkpoint directory to continue from, or None for a fresh run; the one check of an
    output directory before a run writes to it.

    A fresh run refuses an output_dir that already holds checkpoints, so two runs never mix,
    and anything :func:`check_output_dir` refuses. ``resume=True`` continues from the last
    complete ``checkpoint-N``, once the run_config.json beside it shows that it is a run of
    ``spec`` (:func:`check_same_run`); incomplete checkpoints (a save cut off mid-way) are
    renamed ``checkpoint-N.incomplete`` with a warning, and when none is complete the run
    starts over. A path resumes from that checkpoint (checked against the run_config.json of
    its directory, where there is one). A run whose final model is saved is finished:
    resuming it is an error.
    """
    check_output_path(output_dir)
    if resume and final_model_saved(output_dir):
        raise ValueError(
            f"the run in {output_dir} is finished (its final model is saved); nothing to resume. "
            "To train further from that model, pass it as --model with a new --output-dir"
        )
    found = checkpoints(output_dir)
    if resume and not isinstance(resume, bool):
        checkpoint = Path(resume)
        if read_trainer_state(checkpoint) is None:
            raise FileNotFoundError(
                f"{resume} is not a complete Trainer checkpoint (no readable trainer_state.json)"
            )
        run_dir = checkpoint.resolve().parent
        if spec is not None:
            check_same_run(run_dir, spec, required=False)
        if run_dir != output_dir.resolve():
            _check_fresh(output_dir, found)
        return os.fspath(resume)
    if not resume:
        _check_fresh(output_dir, found)
        return None
    if not found:
        raise FileNotFoundError(
            f"nothing to resume: {output_dir} holds no checkpoint-N directory; "
            "run without --resume, or set save_steps so that checkpoints are written"
        )
    if spec is not None:
        check_same_run(output_dir, spec, required=True)
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


def _check_fresh(output_dir: Path, found: list[Path]) -> None:
    """ValueError unless a run that starts from its first step may write into ``output_dir``,
    which holds the checkpoints ``found``."""
    if found:
        raise ValueError(
            f"{output_dir} already holds checkpoints of an earlier run ({found[-1].name}); "
            "pass --resume to continue it, or choose another --output-dir"
        )
    check_output_dir(output_dir)


def check_same_run(run_dir: Path, spec: RunSpec, required: bool = True) -> None:
    """ValueError unless ``run_dir``'s run_config.json records a run of ``spec``: the same
    model, data, weighting and training settings, all but :data:`MAY_CHANGE_ON_RESUME`.

    Without a readable run_config.json nothing shows whose checkpoints these are: an error when
    ``required``, accepted otherwise (a checkpoint the user named explicitly).
    """
    recorded = read_run_config(run_dir)
    if not recorded:
        if required:
            raise ValueError(
                f"--resume: {run_dir} holds checkpoints but no readable {RUN_CONFIG_FILE}, so "
                "they cannot be shown to be a run of these settings; start the run in another "
                "--output-dir, or name one checkpoint: --resume DIR/checkpoint-N"
            )
        return
    differences = run_differences(recorded, spec)
    if differences:
        shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
        raise ValueError(
            f"--resume: the run in {run_dir} was started with other settings ({shown}); resume "
            f"it with the settings in its {RUN_CONFIG_FILE}, or start the changed run in a new "
            "--output-dir"
        )


def run_differences(recorded: dict[str, Any], spec: RunSpec) -> list[str]:
    """Each setting that defines a run (all but :data:`MAY_CHANGE_ON_RESUME`) on which the
    run_config.json record ``recorded`` and ``spec`` differ, as "KEY OLD recorded, NEW now"."""
    from infosft.files import to_json

    current = json.loads(to_json({**spec.to_dict(), "args": spec.args.to_dict()}))
    recorded_args = recorded.get("args") if isinstance(recorded.get("args"), dict) else {}
    pairs = [(key, recorded[key], value) for key, value in current.items() if key in recorded]
    pairs += [
        (key, recorded_args[key], value)
        for key, value in current["args"].items()
        if key in recorded_args and not key.startswith(MAY_CHANGE_ON_RESUME)
    ]
    return [
        f"{key} {old!r:.60} recorded, {new!r:.60} now"
        for key, old, new in pairs
        if key != "args" and old != new
    ]


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
