"""The fused loss's chunk plan (infosft.losses.chunking.rows_per_chunk) as a specification."""

import math

import pytest
import torch

from infosft.losses.chunking import (
    CPU_CHUNK_BYTES,
    CUDA_CHUNK_BYTES,
    LOGITS_SHARE,
    MAX_CHUNK_BYTES,
    rows_per_chunk,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PLENTY = 2**40  # bytes free: the memory cap does not bind


@pytest.mark.parametrize("device", [CPU, CUDA])
@pytest.mark.parametrize("vocab", [1000, 49152, 151936, 256000])
@pytest.mark.parametrize("num_rows", [1, 7, 100, 512, 2048, 8192, 65536])
def test_chunks_are_equal_and_hold_at_most_the_floor_or_a_quarter_of_the_logits(
    device, vocab, num_rows
):
    rows = rows_per_chunk(num_rows, vocab, 896, device, available_bytes=PLENTY)
    chunks = math.ceil(num_rows / rows)
    assert 1 <= rows <= num_rows
    # Equal chunks: the last is short by less than the CUDA rounding (8 rows) per chunk.
    assert rows * chunks - num_rows < (8 if device.type == "cuda" else 1) * chunks
    floor = CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    budget = min(MAX_CHUNK_BYTES, max(floor, LOGITS_SHARE * num_rows * 4 * vocab))
    assert rows * 4 * vocab <= budget + (8 * 4 * vocab if device.type == "cuda" else 0) or rows <= 8


def test_qwen_head_at_512_rows_takes_four_equal_chunks_on_cpu():
    assert rows_per_chunk(512, 151936, 896, CPU, available_bytes=PLENTY) == 128


def test_smollm2_head_keeps_one_512_row_chunk_budget_up_to_2048_rows():
    # As many chunks as the plan before it adapted to N (96 MiB of logits, 512 rows at V = 49152):
    # the default model's runs are split as before.
    for num_rows in (100, 512, 1024, 2048):
        rows = rows_per_chunk(num_rows, 49152, 576, CPU, available_bytes=PLENTY)
        assert math.ceil(num_rows / rows) == math.ceil(num_rows / 512)


def test_taller_chunks_for_more_rows_up_to_the_cap():
    heights = [rows_per_chunk(n, 151936, 896, CPU, available_bytes=PLENTY) for n in (2048, 8192)]
    assert heights[0] < heights[1] <= MAX_CHUNK_BYTES // (4 * 151936)


def test_scarce_free_memory_shrinks_the_chunk():
    roomy = rows_per_chunk(8192, 151936, 896, CPU, available_bytes=PLENTY)
    scarce = rows_per_chunk(8192, 151936, 896, CPU, available_bytes=2**30)
    assert scarce * 4 * 151936 <= 2**30 / 8 < roomy * 4 * 151936
