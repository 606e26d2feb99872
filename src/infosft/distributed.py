"""Measuring one model on every process of an ``accelerate launch``: each rank takes whole
batches, the results are gathered in item order.

Under ``accelerate launch`` (or ``torchrun``) every rank holds the same weights once a cell is
trained. A measurement loop that forms its batches as one process would and runs
``for batch in my_batches(batches)`` computes each batch exactly as one process does (same
rows, same padding, same seeds), so gathering the per-batch results in batch order gives one
process's results. Splitting is switched on only inside :func:`splitting` (every rank runs the
same measurement there, so the gathers match); elsewhere, and in one process, the loops run
every batch as before.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
_SPLITTING = [False]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside a distributed launch), as
    the launcher (``accelerate launch``, ``torchrun``) set them."""
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process writes files (rank 0; the only process outside a launch)."""
    return rank_and_world()[0] == 0


def _state() -> Any:
    """accelerate's PartialState, which joins the launch's process group the first time: on
    the CPU (gloo) where the trainer will be (no GPU: infosft's ``use_cpu`` default), else on
    the GPUs. The trainer sets it up again later on the same process group."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def device() -> Any:
    """The device this rank's models live on (its own GPU under a launch)."""
    return _state().device


def from_main(make: Callable[[], T]) -> T:
    """``make()`` on the main process, its result (or its exception) sent to every rank.

    For what only one process may do or decide (read the output directory, which another job
    may be writing, and write it): every rank then acts on the same answer."""
    if rank_and_world()[1] == 1:
        return make()
    result, error, message = None, None, None
    if is_main():
        try:
            result = make()
        except Exception as err:  # said to the other ranks, then raised here
            error, message = err, f"{type(err).__name__}: {err}"
    result, message = send((result, message))
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"the main process failed: {message}")
    return result


def send(value: Any = None) -> Any:
    """The main process's ``value`` on every rank (each must call it, in the same order)."""
    if rank_and_world()[1] == 1:
        return value
    import torch.distributed as dist

    _state()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def splitting() -> Iterator[None]:
    """Inside: the measurement loops split their batches across the ranks (every rank must run
    the same measurements, in the same order)."""
    before = _SPLITTING[0]
    _SPLITTING[0] = rank_and_world()[1] > 1
    try:
        yield
    finally:
        _SPLITTING[0] = before


def my_batches(batches: Sequence[T]) -> list[tuple[int, T]]:
    """``(index, batch)`` of the batches this rank runs: every ``world``-th from its rank while
    :func:`splitting`, else all of them."""
    rank, world = rank_and_world() if _SPLITTING[0] else (0, 1)
    return [(i, batch) for i, batch in enumerate(batches) if i % world == rank]


def shares(items: Sequence[T]) -> list[list[T]]:
    """``items`` cut into as many contiguous shares as ranks split the work (while
    :func:`splitting`; else one share of all), for :func:`my_batches`: for work that runs
    best in one call per process (a pool of sandboxes)."""
    parts = rank_and_world()[1] if _SPLITTING[0] else 1
    size = -(-len(items) // parts) if items else 1
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def gather(results: list[tuple[int, T]]) -> list[T]:
    """Every rank's ``(batch index, result)`` pairs, as one list in batch order (a no-op
    outside :func:`splitting`)."""
    if _SPLITTING[0]:
        import torch.distributed as dist

        _state()
        parts: list[Any] = [None] * rank_and_world()[1]
        dist.all_gather_object(parts, results)
        results = [pair for part in parts for pair in part]
    return [result for _, result in sorted(results, key=lambda pair: pair[0])]


def whole_model(trained: Any, like: Any) -> Any:
    """``trained`` as a plain model that each rank can run alone: under ZeRO-3 or FSDP2 its
    weights are sharded across the ranks (a forward pass is a collective, so ranks measuring
    different batches would wait on each other), so they are gathered into a copy of ``like``
    (the base model, same architecture); otherwise ``trained`` itself."""
    params = dict(trained.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            state = {name: p.detach().clone() for name, p in params.items()}
    else:
        from torch.distributed.tensor import DTensor

        if not any(isinstance(p, DTensor) for p in params.values()):
            return trained
        state = {
            name: p.full_tensor().detach() if isinstance(p, DTensor) else p.detach()
            for name, p in params.items()
        }
    model = copy.deepcopy(like)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if name in dict(model.named_parameters())]:
        raise ValueError(
            "the trained model's weights do not match the base model's parameters "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); a sharded run (ZeRO-3, "
            "FSDP2) of a LoRA grid is not supported, train it with DDP or ZeRO-2"
        )
    return model.eval()
