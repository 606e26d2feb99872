"""How many target rows the fused loss projects at a time: the chunk plan.

The fused loss (:mod:`infosft.losses.fused`) walks over the N target rows in chunks of C rows;
per chunk it holds float32 logits [C, V] (on CUDA also their gradient in the matmul dtype) and
streams the head weight W [V, H] twice and the float32 grad_W [V, H] once. Fewer, taller chunks
are faster; shorter ones hold less. The plan, a pure function of the shape unless memory is
scarce:

- a chunk may hold a floor of logits bytes whatever N is (below it the memory is negligible and
  splitting only costs time): 96 MiB on CPU (512 rows at V = 49152), 256 MiB on CUDA;
- above the floor it grows with N, up to a quarter of the [N, V] float32 logits that a
  full-logits loss would hold (so its memory stays a fraction of theirs at every N), and up to a
  cap (1 GiB) and an eighth of the memory free on the device;
- the rows are then split into equal chunks (N = 512 at V = 151936 gives 4 x 128 rather than
  3 x 165 + 17), rounded up to a multiple of 8 on CUDA.

``benchmarks/loss_bench.py`` times plans against the full-logits loss; ``benchmarks/gpu_suite.py``
also times other chunk heights on CUDA.
"""

from __future__ import annotations

import math

import torch

# Logits bytes a chunk may always hold (float32 [C, V]).
CPU_CHUNK_BYTES = 96 * 2**20
CUDA_CHUNK_BYTES = 256 * 2**20
# Upper limit of one chunk's float32 logits, whatever N.
MAX_CHUNK_BYTES = 2**30
# A chunk holds at most this share of the [N, V] float32 logits (above the floor).
LOGITS_SHARE = 0.25
# ... and at most this share of the memory free on its device.
FREE_MEMORY_SHARE = 0.125
# Rows moved at a time when zero-weight rows are squeezed out of a CPU chunk in place.
CPU_BLOCK_BYTES = 2 * 2**20


def free_memory(device: torch.device) -> int | None:
    """Bytes that could still be allocated on ``device`` (None if unknown).

    CUDA: free device memory plus what PyTorch's caching allocator holds unused. CPU: the
    kernel's MemAvailable (Linux).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rows_per_chunk(
    num_rows: int,
    vocab_size: int,
    device: torch.device,
    available_bytes: int | None = None,
) -> int:
    """Target rows per chunk for N = ``num_rows`` rows of a [V, H] head (see the module doc); the
    plan does not depend on H (the head's own streams and the chunk's matmuls both scale with it).

    Args:
        num_rows: target rows of the whole call (the loop never needs more than these).
        vocab_size: V, columns of each logits row.
        device: where the chunks are computed.
        available_bytes: free memory on ``device``; None reads it (:func:`free_memory`).

    Returns:
        At least 1 and at most ``max(num_rows, 1)``.
    """
    num_rows = max(num_rows, 1)
    row_bytes = 4 * vocab_size
    cuda = device.type == "cuda"
    floor = CUDA_CHUNK_BYTES if cuda else CPU_CHUNK_BYTES
    budget = min(MAX_CHUNK_BYTES, max(floor, LOGITS_SHARE * num_rows * row_bytes))
    if available_bytes is None:
        available_bytes = free_memory(device)
    if available_bytes is not None:
        budget = min(budget, FREE_MEMORY_SHARE * available_bytes)
    max_rows = max(8, int(budget // row_bytes))
    rows = math.ceil(num_rows / math.ceil(num_rows / max_rows))
    if cuda:
        rows = 8 * math.ceil(rows / 8)
    return min(rows, num_rows)


def rows_per_block(vocab_size: int) -> int:
    """Rows moved at a time when zero-weight rows are squeezed out of a CPU chunk in place."""
    return max(1, CPU_BLOCK_BYTES // (4 * vocab_size))
