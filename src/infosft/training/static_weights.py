"""Static weights (``weight_source: base``): log q of every target token under the frozen base
model, computed once before training and stored next to the tokenized dataset.

With ``weight_source: current`` (the paper's) the weight w(q) is recomputed from the model being
trained at every step, so it follows the training trajectory. With ``weight_source: base`` the
weight of each token is fixed by the base model: ``w = token_weights(base_log_probs)``, while the
gradient still flows through the current model's log q. The cost is one extra forward pass of
the base model per training token in total (not per epoch), paid here.

The pass runs over the dataset that TRL's ``SFTTrainer`` prepared (columns ``input_ids`` and
``labels``, labels -100 where no loss applies, already truncated to ``max_length``), so the new
column is aligned with ``labels`` token for token:

    base_log_probs[t] = log p_base(labels[t] | input_ids[:t])   where labels[t] != -100 and t > 0
                        0.0                                     elsewhere

Results are cached under ``cache_dir/<model fingerprint>-<dataset fingerprint>/`` in shards of
``shard_size`` rows, each written atomically, so an interrupted pass resumes where it stopped and
a second run with the same model and data only reads the cache. Under ``torch.distributed`` the
shards are split round-robin over the ranks that hold real weights, then every rank reads all of
them (``cache_dir`` must be on a filesystem all ranks see). Under DeepSpeed ZeRO-3 the
parameters are gathered for the pass (``deepspeed.zero.GatheredParameters``); that path, like
every multi-GPU one, is outside the CPU test suite.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from infosft.losses import target_log_probs
from infosft.models import eval_mode
from infosft.training.data import pad_tokenized

COLUMN = "base_log_probs"
"""Name of the dataset column and of the batch key the trainer reads."""

_SAMPLE_PER_TENSOR = 4096


def dataset_fingerprint(dataset: Any) -> str:
    """sha256 of the ``input_ids`` and ``labels`` of every row, in order (content, not history)."""
    digest = hashlib.sha256()
    for batch in dataset.select_columns(["input_ids", "labels"]).iter(batch_size=1024):
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            digest.update(np.asarray(ids, dtype=np.int64).tobytes())
            digest.update(b"|")
            digest.update(np.asarray(labels, dtype=np.int64).tobytes())
            digest.update(b"\n")
    return digest.hexdigest()


@torch.no_grad()
def sampled_model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the config, every parameter's name/shape/dtype and a strided sample of its values.

    Sampling (at most 4096 values per tensor) keeps this to seconds for 8B models; two models that
    differ only off the sampled positions would collide, which fine-tuned checkpoints do not.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode("utf-8"))
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        if param.device.type == "meta" or param.numel() == 0:
            continue
        flat = param.detach().reshape(-1)
        stride = max(1, flat.numel() // _SAMPLE_PER_TENSOR)
        digest.update(flat[::stride].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _check_prepared(dataset: Any) -> None:
    columns = set(dataset.column_names)
    if not {"input_ids", "labels"} <= columns:
        raise ValueError(
            f"compute_base_log_probs needs the tokenized dataset with 'input_ids' and 'labels' "
            f"(the one SFTTrainer prepares: trainer.train_dataset); got columns {sorted(columns)}"
        )
    if "seq_lengths" in columns:
        raise ValueError(
            "weight_source='base' does not support packing (packed rows mix documents); "
            "set packing: false"
        )


def _computing_ranks(has_weights: bool, world: int) -> list[int]:
    """Ranks whose model holds real (non-meta) weights, e.g. only rank 0 under FSDP's
    cpu_ram_efficient_loading."""
    if world == 1:
        return [0] if has_weights else []
    flags: list[Any] = [None] * world
    torch.distributed.all_gather_object(flags, has_weights)
    return [r for r, ok in enumerate(flags) if ok]


def _zero3_partitioned(model: torch.nn.Module) -> bool:
    """True when DeepSpeed ZeRO-3 has partitioned the parameters (each holds a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _full_parameters(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Every parameter whole while active: under ZeRO-3 they are gathered on each rank (the
    full model in memory once, fine up to ~8B on an 80 GB GPU); otherwise nothing to do."""
    if not _zero3_partitioned(model):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


@contextlib.contextmanager
def _frozen_base_model(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` as its base model (a PEFT model with its adapters disabled), whole, in eval
    mode and on this rank's GPU (if there is one) while active; its mode and device are
    restored after."""
    original_device = next(model.parameters()).device
    device = None
    # ZeRO-3 keeps its partitions on the GPU and gathers them there.
    if torch.cuda.is_available() and not _zero3_partitioned(model):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device is not None:
        model.to(device)
    try:
        disable_adapter = getattr(model, "disable_adapter", None)
        base_context = disable_adapter() if callable(disable_adapter) else contextlib.nullcontext()
        with eval_mode(model), _full_parameters(model), base_context:
            yield model.get_base_model() if hasattr(model, "get_base_model") else model
    finally:
        if device is not None:
            model.to(original_device)


def _batches(rows: list[dict], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of similar length (longest first), to limit padding."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def _compute_shard(
    model: torch.nn.Module, rows: list[dict], batch_size: int, pad_token_id: int
) -> list[np.ndarray]:
    device = next(model.parameters()).device
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(rows)
    for index in _batches(rows, batch_size):
        input_ids, attention_mask, labels = pad_tokenized([rows[i] for i in index], pad_token_id)
        lp = target_log_probs(
            model, input_ids.to(device), attention_mask.to(device), labels.to(device)
        )
        lp = lp.cpu().numpy()
        for b, i in enumerate(index):
            out[i] = lp[b, : len(rows[i]["input_ids"])].copy()
    return out


def _save_shard(path: Path, arrays: list[np.ndarray]) -> None:
    """Write values + lengths atomically: a crash leaves either no shard or a whole one."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    values = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, values=values.astype(np.float32), lengths=lengths)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["values"], data["lengths"]


def compute_base_log_probs(
    model: torch.nn.Module,
    dataset: Any,
    *,
    cache_dir: str | os.PathLike,
    batch_size: int = 4,
    shard_size: int = 256,
    pad_token_id: int = 0,
) -> Any:
    """Add a ``base_log_probs`` column ([T] float32 per row, aligned with ``labels``) to
    ``dataset``, computed with ``model`` frozen, cached and resumable.

    Args:
        model: the base causal LM before any training step (a PEFT model is evaluated with its
            adapters disabled). It is put in eval mode, on this rank's GPU if there is one, for
            the pass and restored after.
        dataset: the tokenized ``datasets.Dataset`` SFTTrainer trains on (``input_ids``,
            ``labels``; no packing).
        cache_dir: where shards are kept; reuse it to skip or resume the pass.
        batch_size: rows per forward pass.
        shard_size: rows per cache file (the unit of resumption).
        pad_token_id: id used to right-pad batches (masked out by the attention mask).

    Returns:
        ``dataset`` with the extra column (rows in the same order).
    """
    _check_prepared(dataset)
    if COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(COLUMN)
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    has_weights = all(p.device.type != "meta" for p in model.parameters())
    with _full_parameters(model):
        model_key = sampled_model_fingerprint(model)[:16]
    cache = Path(cache_dir) / f"{model_key}-{dataset_fingerprint(dataset)[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    num_shards = (len(dataset) + shard_size - 1) // shard_size
    paths = [cache / f"shard-{i:05d}.npz" for i in range(num_shards)]

    workers = _computing_ranks(has_weights, world)
    if not workers:
        raise ValueError(
            "no process holds the model's weights (all on the meta device); load the base model "
            "normally (e.g. fsdp_cpu_ram_efficient_loading: false) to compute static weights"
        )
    mine = [i for i in range(num_shards) if not paths[i].exists()]
    mine = [i for i in mine if rank in workers and workers[i % len(workers)] == rank]
    if mine:
        columns = dataset.select_columns(["input_ids", "labels"])
        with _frozen_base_model(model) as base:
            for i in mine:
                stop = min(len(dataset), (i + 1) * shard_size)
                rows = columns.select(range(i * shard_size, stop))
                _save_shard(paths[i], _compute_shard(base, list(rows), batch_size, pad_token_id))
    if world > 1:
        torch.distributed.barrier()

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"static-weight shards missing after the pass: {missing[:3]}")
    return _attach(dataset, paths)


def _attach(dataset: Any, paths: list[Path]) -> Any:
    """Concatenate the shards into one Arrow list column without a Python list per token."""
    import pyarrow as pa

    values, lengths = zip(*(_load_shard(p) for p in paths), strict=True) if paths else ((), ())
    flat = np.concatenate(values) if values else np.zeros(0, np.float32)
    sizes = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if len(sizes) != len(dataset):
        raise ValueError(
            f"static-weight cache holds {len(sizes)} rows but the dataset has {len(dataset)}; "
            "delete the cache directory and rerun"
        )
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))
    return dataset.add_column(COLUMN, column)


def pad_base_log_probs(examples: list[dict], batch: dict[str, Tensor]) -> Tensor:
    """[B, T] float32 batch of the examples' ``base_log_probs``, shaped like ``batch["labels"]``.

    Right-padded with 0 (TRL pads right, and pads to a multiple when asked); a padding-free batch
    ([1, sum of lengths]) gets the rows concatenated.
    """
    rows = [torch.as_tensor(np.asarray(e[COLUMN], dtype=np.float32)) for e in examples]
    labels = batch["labels"]
    if labels.shape[0] == 1 and len(rows) > 1:
        rows = [torch.cat(rows)]
    if len(rows) != labels.shape[0] or any(len(r) > labels.shape[1] for r in rows):
        raise ValueError(
            f"base_log_probs rows {[len(r) for r in rows]} do not fit labels of shape "
            f"{tuple(labels.shape)}; were they computed on this tokenized dataset?"
        )
    out = torch.zeros(labels.shape, dtype=torch.float32)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


def _collate_with_base_log_probs(
    collator: Callable[[list[dict]], dict], examples: list[dict]
) -> dict:
    if COLUMN not in examples[0]:
        return collator(examples)
    stripped = [{k: v for k, v in e.items() if k != COLUMN} for e in examples]
    batch = collator(stripped)
    batch[COLUMN] = pad_base_log_probs(examples, batch)
    return batch


def with_base_log_probs(collator: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """Wrap a collator (TRL's drops unknown keys) so ``base_log_probs`` reaches the batch.

    A ``functools.partial`` rather than a closure, so DataLoader workers can pickle it.
    """
    return functools.partial(_collate_with_base_log_probs, collator)
