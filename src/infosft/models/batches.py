"""Token id lists as model inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None
) -> tuple[Any, Any]:
    """Token id lists -> (input_ids [B, T] int64, attention_mask [B, T] int64), right-padded."""
    return _padded(sequences, pad_id, device, left=False)


def pad_left(
    sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None
) -> tuple[Any, Any]:
    """As :func:`pad_right`, padded on the left, as a decoder-only model's ``generate`` takes a
    batch (every row's next token is at the last position)."""
    return _padded(sequences, pad_id, device, left=True)


def _padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device: Any, left: bool
) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        columns = slice(width - len(s), width) if left else slice(0, len(s))
        ids[row, columns] = torch.tensor(list(s), dtype=torch.long)
        mask[row, columns] = 1
    return ids.to(device), mask.to(device)
