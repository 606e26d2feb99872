"""The fused loss's chunk plan (infosft.losses.chunking.rows_per_chunk) as a specification.

The plan's contract, from the memory a chunk may use: the float32 logits of one chunk ([C, V],
4 C V bytes) fit the budget

    min(1 GiB, max(floor, a quarter of the [N, V] float32 logits), an eighth of the free memory)

with floor = 96 MiB on CPU and 256 MiB on CUDA; the rows are split into the fewest chunks that
fit it (never fewer than 8 rows a chunk), as equal as possible, rounded up to a multiple of 8
rows on CUDA. The expectations below are derived from that budget, not read from the module.
"""

import math

import pytest
import torch

from infosft.losses.chunking import rows_per_chunk

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
MiB, GiB = 2**20, 2**30
PLENTY = 2**40  # bytes free: the free-memory share does not bind
FLOOR = {"cpu": 96 * MiB, "cuda": 256 * MiB}
ROUNDING = {"cpu": 1, "cuda": 8}  # rows a chunk is rounded up to


def budget(num_rows, vocab, device, free=PLENTY):
    """The bytes of float32 logits one chunk may hold, as the contract above states it."""
    full_logits = 4 * num_rows * vocab
    return min(GiB, max(FLOOR[device.type], full_logits / 4), free / 8)


def fits(rows, vocab, device, limit):
    """A chunk of ``rows`` rows fits ``limit``, allowing the CUDA rounding and the 8-row minimum."""
    unrounded = rows - ROUNDING[device.type] + 1
    return 4 * unrounded * vocab <= limit or unrounded <= 8


@pytest.mark.parametrize("device", [CPU, CUDA])
@pytest.mark.parametrize("vocab", [1000, 49152, 151936, 256000])
@pytest.mark.parametrize("num_rows", [1, 7, 100, 512, 2048, 8192, 65536])
@pytest.mark.parametrize("free", [PLENTY, 4 * GiB, 512 * MiB])
def test_the_fewest_equal_chunks_whose_logits_fit_the_budget(device, vocab, num_rows, free):
    rows = rows_per_chunk(num_rows, vocab, device, available_bytes=free)
    limit = budget(num_rows, vocab, device, free)
    chunks = math.ceil(num_rows / rows)
    assert 1 <= rows <= num_rows
    assert fits(rows, vocab, device, limit)
    # Fewest: one chunk less would have to hold more than the budget.
    if chunks > 1:
        assert 4 * math.ceil(num_rows / (chunks - 1)) * vocab > limit
    # Equal: the last chunk is short by less than the rounding per chunk.
    assert rows * chunks - num_rows < ROUNDING[device.type] * chunks


def test_qwen_head_at_512_rows_takes_four_equal_chunks_on_cpu():
    # 512 rows of V = 151936 are 311 MB of logits; the 96 MiB floor holds 165 rows, so four
    # chunks are the fewest, and four equal ones hold 128 rows each (not 165, 165, 165, 17).
    assert rows_per_chunk(512, 151936, CPU, available_bytes=PLENTY) == 128


def test_smollm2_head_keeps_512_row_chunks_while_the_floor_binds():
    # 512 rows of V = 49152 are the 96 MiB floor; a quarter of the logits exceeds it only
    # above 2048 rows.
    for num_rows in (100, 512, 1024, 2048):
        rows = rows_per_chunk(num_rows, 49152, CPU, available_bytes=PLENTY)
        assert math.ceil(num_rows / rows) == math.ceil(num_rows / 512)


def test_taller_chunks_for_more_rows_up_to_one_gib():
    heights = [rows_per_chunk(n, 151936, CPU, available_bytes=PLENTY) for n in (2048, 8192)]
    assert heights[0] < heights[1]
    assert 4 * heights[1] * 151936 <= GiB


def test_scarce_free_memory_shrinks_the_chunk():
    roomy = rows_per_chunk(8192, 151936, CPU, available_bytes=PLENTY)
    scarce = rows_per_chunk(8192, 151936, CPU, available_bytes=GiB)
    assert 4 * scarce * 151936 <= GiB / 8 < 4 * roomy * 151936
