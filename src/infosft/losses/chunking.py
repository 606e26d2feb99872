"""How many target rows the fused loss projects at a time: the chunk plan.

The fused loss (:mod:`infosft.losses.fused`) walks over the target rows in chunks; per chunk it
holds float32 logits [rows, V] (and on some paths a second buffer of the same shape). Taller
chunks stream the LM head fewer times (faster), shorter ones hold less memory.
"""

from __future__ import annotations

import torch

# Float32 logits per chunk. On CPU each chunk streams W twice and grad_W once, so taller chunks
# are faster: 512 rows at V = 49152 ran about 10% faster than 256 (benchmarks/loss_bench.py
# --chunk-sizes) at 0.2x the full-logits memory. The GPU needs tall chunks for its tensor cores.
CPU_CHUNK_BYTES = 96 * 2**20
CUDA_CHUNK_BYTES = 256 * 2**20
# Rows moved at a time when zero-weight rows are squeezed out of a CPU chunk in place.
CPU_BLOCK_BYTES = 2 * 2**20


def rows_per_chunk(num_rows: int, vocab_size: int, hidden_size: int, device: torch.device) -> int:
    """Target rows per chunk such that one chunk of float32 logits fits the device's budget.

    Args:
        num_rows: target rows of the whole batch (the loop never needs more than these).
        vocab_size: V, columns of each logits row.
        hidden_size: H of the LM head (not used by today's plan).
        device: where the chunks are computed; CUDA gets a larger budget.

    Returns:
        At least 1 and at most ``max(num_rows, 1)``.
    """
    budget = CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    return max(1, min(max(num_rows, 1), max(8, budget // (4 * vocab_size))))


def rows_per_block(vocab_size: int) -> int:
    """Rows moved at a time when zero-weight rows are squeezed out of a CPU chunk in place."""
    return max(1, CPU_BLOCK_BYTES // (4 * vocab_size))
