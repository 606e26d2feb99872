"""Token id lists as model inputs."""

from __future__ import annotations

from typing import Any


def pad_right(sequences: list[list[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    """Token id lists -> (input_ids [B, T] int64, attention_mask [B, T] int64), right-padded."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids.to(device), mask.to(device)
