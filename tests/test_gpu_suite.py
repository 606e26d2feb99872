"""benchmarks/gpu_suite.py: its one-line refusal without CUDA, and every part's code on tiny CPU
shapes (``--device cpu --tiny``), so that its first run on a GPU does not die on a typo."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import infosft.losses
from infosft.objectives import available_schemes

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def load_suite(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_suite", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_suite(*args, env=None):
    return subprocess.run(
        [sys.executable, str(SUITE), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_without_cuda_it_prints_one_line_and_exits_nonzero(tmp_path):
    done = run_suite("--out", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA device" in lines[0]
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cpu_self_check_runs_every_part_and_writes_json_and_markdown(tmp_path):
    done = run_suite(
        "--device", "cpu", "--tiny", "--parts", "correctness,loss,train", "--out", str(tmp_path)
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (json_path,) = tmp_path.glob("gpu_suite_*_cpu-x*.json")
    parts = json.loads(json_path.read_text())["parts"]

    checks = parts["correctness"]["rows"]
    assert {row["method"] for row in checks} == set(available_schemes())
    assert {(row["dtype"], row["kl"]) for row in checks} == {
        (dtype, kl) for dtype in ("float32", "bfloat16") for kl in (0.0, 0.5)
    }
    assert all(row["status"] == "ok" for row in checks), checks

    timed = {row["candidate"]: row for row in parts["loss"]["rows"]}
    for name in ("3 GEMMs", "ours infosft", "full logits CE", "TRL chunked_logprob infosft"):
        assert timed[name]["status"] == "ok" and timed[name]["ms"] > 0, timed[name]
    assert timed["Liger FLCE dft"]["status"].startswith("skipped")

    runs = {row["run"]: row for row in parts["train"]["rows"]}
    assert set(runs) == {"InfoSFTTrainer infosft", "TRL SFTTrainer dft"}
    assert all(row["status"] == "ok" and row["tokens/s"] > 0 for row in runs.values()), runs

    text = json_path.with_suffix(".md").read_text()
    assert "## correctness" in text and "ours infosft" in text and "## train" in text


def test_correctness_check_flags_a_loss_that_is_off_by_one_percent(monkeypatch):
    suite = load_suite(monkeypatch)
    exact = infosft.losses.fused_weighted_nll_loss
    monkeypatch.setattr(
        infosft.losses, "fused_weighted_nll_loss", lambda *a, **k: 1.01 * exact(*a, **k)
    )
    import torch

    problem = suite.make_problem("cpu", torch.float32, tiny=True, seed=3)
    errors = suite.check_case(problem, "infosft", compiled=False, kl=0.0)
    assert min(errors.values()) > suite.TOLERANCE["float32"]
