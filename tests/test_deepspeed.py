"""DeepSpeed ZeRO-2 and ZeRO-3, launched with the shipped accelerate configs, reproduce one process.

``accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml -m infosft train``
against ``infosft train`` in one process, same global batch: same logged losses and same saved
weights (ZeRO-3 gathers its sharded parameters, the LM head included, into the checkpoint).

Without a GPU, DeepSpeed picks its CPU accelerator and gloo (oneCCL is not needed): 2 processes.
Its first use on a machine JIT-compiles a small shared-memory op (about 100 s on 2 cores, cached
in ~/.cache/torch_extensions). On a CUDA machine (benchmarks/gpu_suite.py runs this file) one
process per GPU, at most 2: on one GPU that still runs the ZeRO engine and its parameter hooks.
Skipped when deepspeed is not installed (``pip install -e .[deepspeed]``).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infosft.cli import main
from test_distributed import logged_losses, sft_rows, train_args

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
    ),
]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
GLOBAL_BATCH = 4  # per optimizer micro-step, over all processes (2 accumulation steps each)


def num_processes() -> int:
    return min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 2


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The reference run: ``infosft train`` in this process, the whole batch on one rank."""
    work = tmp_path_factory.mktemp("one-process")
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in sft_rows()))
    assert main(train_args(tiny_model_dir, data, work / "out", GLOBAL_BATCH)) == 0
    return data, work / "out"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch(config: Path, args: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # The shipped configs say bf16 (the recipes' setting); the reference run is float32.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--num_processes", str(num_processes()), "--mixed_precision", "no"]
    # A free port, not accelerate's fixed 29500: other distributed runs may share the machine.
    command += ["--main_process_port", str(free_port())]
    done = subprocess.run(
        [*command, "-m", "infosft", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_reproduces_one_process_losses_and_weights(
    stage, one_process, tiny_model_dir, tmp_path
):
    data, one = one_process
    per_device = GLOBAL_BATCH // num_processes()
    args = train_args(tiny_model_dir, data, tmp_path / "zero", per_device)
    accelerate_launch(CONFIGS / f"deepspeed_zero{stage}.yaml", args, tmp_path)

    # The Trainer ran under DeepSpeed at this stage (not a silent fall-back to DDP).
    saved_args = torch.load(tmp_path / "zero" / "training_args.bin", weights_only=False)
    assert saved_args.deepspeed_plugin.zero_stage == stage
    one_losses, zero_losses = logged_losses(one), logged_losses(tmp_path / "zero")
    assert len(one_losses) == 3
    assert zero_losses == pytest.approx(one_losses, rel=1e-5)
    start = load_file(tiny_model_dir / "model.safetensors")
    expected = load_file(one / "model.safetensors")
    got = load_file(tmp_path / "zero" / "model.safetensors")
    assert max(float((expected[k] - start[k]).abs().max()) for k in start) > 1e-3  # it trained
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=2e-6, msg=name)
