"""One grid job on several processes: `accelerate launch -m infosft compare` with two gloo
processes on this CPU gives the cells and report of one process.

What must be equal, and why:

- the base's measurements, exactly: the same weights on every rank, and each measurement loop
  splits whole batches (the batches one process forms, so the same rows and the same padding)
  and sums per-batch totals in batch order;
- each cell's held-out and retention answers (greedy) exactly, and its KL, general-text NLL and
  training losses within ``DP_RTOL``. DDP all-reduces the ranks' gradients; with more than two
  ranks (or NCCL's chunked rings) that sums the float32 partial gradients in another order than
  one process accumulating its micro-batches, so the trained weights differ by float32 rounding
  (a few ulps per step) and so do the numbers measured from them; a greedy answer could flip
  only at a near-tie of two logits. With two gloo ranks the all-reduce adds the same two
  float32 values one process adds (a + b), and the results here come out bitwise equal.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_compare import write_grid

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("grid_job.py")
DDP_CONFIG = ROOT / "configs" / "accelerate" / "ddp.yaml"
GRID = {"methods": ["nll", "infosft"], "learning_rates": [1e-2], "seeds": [0]}
# Float32 rounding of differently ordered gradient sums, carried through a few optimizer steps.
DP_RTOL = 1e-4
# Wall times and who ran a cell differ between runs; the curve's loss and grad_norm carry the
# same rounding as the weights and are compared with the tolerance.
RUN_KEYS = {"train_seconds", "measure_seconds", "measure_seconds_by_part", "job", "curve_log"}
CLOSE_KEYS = {"kl_base_tuned", "general_nll", "general_nll_delta"}
PROMPTS = ["Say hello.", "Name a colour.", "Count to three.", "What is 2 + 2?", "Tell a joke."]
TEXTS = [
    "The capital of France is Paris.",
    "Water boils at one hundred degrees.",
    "def add(a, b): return a + b",
    "Cats sleep for most of the day, and dogs like to play.",
    "One, two, three.",
]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment():
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def grid_config(directory, model_dir, accumulation):
    """A 2-cell grid whose global batch is 4 rows: 2 per process times ``accumulation``. Its
    measurements run in several batches (7 held-out items in batches of 2, 5 general prompts
    and texts in batches of 4), so that two processes split them."""
    training = {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": accumulation,
        "max_length": 64,
        "max_steps": 3,
        "train_sampling_strategy": "sequential",
        # DDP re-wraps the outputs with it, which the LM-head loss check rejects.
        "ddp_find_unused_parameters": False,
    }
    config = write_grid(
        directory, model_dir, grid=GRID, training=training, eval_batch_size=2, eval_limit=8
    )
    items = [{"id": f"i{a}", "q": f"{a} + {a % 3}", "answer": str(a + a % 3)} for a in range(7)]
    (directory / "new.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (directory / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (directory / "text.txt").write_text("\n".join(TEXTS) + "\n")
    return config


def compare(config, out, *launch):
    """`infosft compare` (through tests/grid_job.py, which scores probes by a hash) in one
    process, or under ``accelerate launch`` with the ``launch`` options."""
    command = [sys.executable, str(WORKER)]
    if launch:
        command = [sys.executable, "-m", "accelerate.commands.launch", *launch, str(WORKER)]
    command += ["compare", "--config", str(config), "--output-dir", str(out)]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The grid run by one process (2 micro-batches accumulated) and by two gloo processes
    under `accelerate launch` with the repository's DDP config (1 micro-batch each). No GPU is
    visible, so accelerate's DDP runs on gloo (``--cpu`` would start one process)."""
    tmp = tmp_path_factory.mktemp("dp")
    alone = compare(grid_config(tmp / "one", tiny_model_dir, 2), tmp / "one" / "out")
    launch = [
        "--config_file",
        str(DDP_CONFIG),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    launched = compare(grid_config(tmp / "two", tiny_model_dir, 1), tmp / "two" / "out", *launch)
    return tmp, alone, launched


def results(tmp, name):
    return json.loads((tmp / name / "out" / "results.json").read_text())


def cell_files(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def test_two_processes_write_each_cell_and_the_report_once(runs):
    tmp, _, launched = runs
    one, two = results(tmp, "one"), results(tmp, "two")
    assert two["missing_cells"] == [] and len(two["cells"]) == 2
    # Only the main process logs: one line per cell, one report.
    assert launched.stderr.count(": training\n") == 2
    assert launched.stderr.count("writing results.json and the report") == 1
    # Cell names carry the training settings (the accumulation differs): the same cells by
    # task, method and learning rate.
    assert [c["curve"] for c in two["cells"]] == [c["curve"] for c in one["cells"]]
    assert len(cell_files(tmp / "two" / "out")) == 2
    assert (tmp / "two" / "out" / "report.md").is_file()
    assert not list((tmp / "two" / "out" / "claims").glob("*.json"))


def test_the_base_is_measured_exactly_as_one_process_measures_it(runs):
    tmp, _, _ = runs
    one, two = results(tmp, "one")["base"], results(tmp, "two")["base"]
    for key in ("new_tasks", "prior", "probe_correct", "general_samples", "general_nll"):
        assert two[key] == one[key], key
    # The held-out items were answered in 4 batches, split across the two processes.
    assert len(one["new_tasks"]["sums"]["correct"]) == 7
    assert 0 < one["retention_items"] < 8


def test_each_cell_equals_one_process_within_data_parallel_rounding(runs):
    tmp, _, _ = runs
    one, two = results(tmp, "one")["cells"], results(tmp, "two")["cells"]
    for a, b in zip(one, two, strict=True):
        exact = set(a) - RUN_KEYS - CLOSE_KEYS
        # The gradient accumulation differs by construction; the cell's name carries it.
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
        for key in CLOSE_KEYS:
            assert b[key] == pytest.approx(a[key], rel=DP_RTOL), key
        # Training moved the model (so the comparison above is not of two base models).
        assert a["kl_base_tuned"] > 1e-6
        losses = [row["loss"] for row in a["curve_log"]]
        assert [row["loss"] for row in b["curve_log"]] == pytest.approx(losses, rel=DP_RTOL)


def test_two_processes_give_the_report_of_one(runs):
    tmp, _, _ = runs

    def verdicts(name):
        text = (tmp / name / "out" / "report.md").read_text()
        return text[text.index("## Verdicts") : text.index("## Every setting")]

    assert verdicts("two") == verdicts("one")
