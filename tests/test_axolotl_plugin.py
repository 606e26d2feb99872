"""The axolotl plugin, run by axolotl itself: its own `axolotl train` CLI in its own environment
(.venv-axolotl, built by `make venv-axolotl`: axolotl 0.19.0 with its pins plus our core).

Skipped when that environment is missing, unless INFOSFT_REQUIRE_FRAMEWORKS=1 (then failed).
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from infosft.losses import IGNORE_INDEX

VENV = Path(__file__).resolve().parents[1] / ".venv-axolotl"
REQUIRED = os.environ.get("INFOSFT_REQUIRE_FRAMEWORKS") == "1"
PLUGIN = "infosft.integrations.axolotl.InfoSFTPlugin"
P_BAR = 0.9
PROMPT_LENGTHS = (2, 3, 5, 7)
ROW_LENGTH = 10

pytestmark = [
    pytest.mark.framework,
    pytest.mark.skipif(
        not (VENV / "bin" / "axolotl").exists() and not REQUIRED,
        reason=f"no axolotl environment at {VENV}; build it with `make venv-axolotl`",
    ),
]


def axolotl_env() -> dict[str, str]:
    """The environment of an activated .venv-axolotl (axolotl execs `accelerate` from PATH)."""
    if not (VENV / "bin" / "axolotl").exists():
        pytest.fail(f"INFOSFT_REQUIRE_FRAMEWORKS=1 but {VENV} has no axolotl: make venv-axolotl")
    return {
        **os.environ,
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": "",  # the venv's own editable install of infosft, not the caller's path
        "AXOLOTL_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def write_rows(path: Path, vocab_size: int) -> list[dict]:
    """Four pre-tokenized rows of 10 tokens, each with a prompt (no targets) of its own length."""
    gen = torch.Generator().manual_seed(1)
    rows = []
    for prompt in PROMPT_LENGTHS:
        ids = torch.randint(3, vocab_size, (ROW_LENGTH,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        rows.append({"input_ids": ids, "attention_mask": [1] * ROW_LENGTH, "labels": labels})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def sgd_config(model_dir: Path, work: Path) -> dict:
    """One SGD step (lr 1, no clipping or decay) over all four rows in two micro-batches of two,
    so the weight change is minus the gradient of the step's loss."""
    return {
        "base_model": str(model_dir),
        "datasets": [{"path": str(work / "rows.jsonl"), "ds_type": "json", "type": None}],
        "dataset_prepared_path": str(work / "prepared"),
        "output_dir": str(work / "out"),
        "sequence_len": 16,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 1,
        "num_epochs": 1,
        "learning_rate": 1.0,
        "lr_scheduler": "constant",
        "optimizer": "sgd",
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,
        "warmup_steps": 0,
        "val_set_size": 0,
        "save_strategy": "no",
        "logging_steps": 1,
        "bf16": False,
        "fp16": False,
        "seed": 0,
        "plugins": [PLUGIN],
        "infosft_method": "infosft",
        "infosft_p_bar": P_BAR,
    }


def axolotl_train(config: dict, work: Path) -> subprocess.CompletedProcess:
    path = work / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(VENV / "bin" / "axolotl"), "train", str(path)],
        cwd=work,
        env=axolotl_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def infosft_gradients(model_dir: Path, rows: list[dict]) -> dict[str, torch.Tensor]:
    """float64 gradients of sum_t w(q_t) * -log q_t / N over all rows (N: their targets),
    w(q) = q * max(0, 1 - logit(q) / logit(p_bar)) detached, written out from full logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).double()
    input_ids = torch.tensor([row["input_ids"] for row in rows])
    labels = torch.tensor([row["labels"] for row in rows])[:, 1:]
    logits = model(input_ids=input_ids).logits
    log_q = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    mask = labels != IGNORE_INDEX
    q = log_q.detach().exp()
    w = q * torch.clamp(1 - (torch.log(q) - torch.log1p(-q)) / math.log(P_BAR / (1 - P_BAR)), min=0)
    (-(w * log_q)[mask].sum() / mask.sum()).backward()
    return {name: param.grad for name, param in model.named_parameters()}


# Packed: two rows per 20-token pack, one pack per micro-batch; SDPA through axolotl's varlen
# path keeps each row's attention to itself, so the step is that of the unpacked rows.
LAYOUTS = {
    "padded": {},
    "packed": {
        "sample_packing": True,
        "pad_to_sequence_len": True,
        "attn_implementation": "sdpa",
        "sequence_len": 20,
        "micro_batch_size": 1,
    },
}


@pytest.fixture(scope="module", params=LAYOUTS)
def trained(request, tiny_model_dir, tmp_path_factory):
    """One `axolotl train` run with the plugin: (its work directory, rows, the CLI's result)."""
    work = tmp_path_factory.mktemp(f"axolotl-train-{request.param}")
    vocab_size = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    rows = write_rows(work / "rows.jsonl", vocab_size)
    config = sgd_config(tiny_model_dir, work) | LAYOUTS[request.param]
    result = axolotl_train(config, work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, rows, result


def test_axolotl_train_with_the_plugin_takes_the_exact_infosft_step_padded_or_packed(
    trained, tiny_model_dir
):
    from safetensors.torch import load_file

    work, rows, _ = trained
    expected = infosft_gradients(tiny_model_dir, rows)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(work / "out" / "model.safetensors")
    for name, gradient in expected.items():
        step = (before[name] - after[name]).double()
        torch.testing.assert_close(step, gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_axolotl_logs_the_plugin_token_statistics(trained):
    _, _, result = trained
    output = result.stdout + result.stderr
    for name in ("mean_q", "mean_weight", "zero_weight_share"):
        assert f"'infosft/{name}'" in output


def test_axolotl_trains_a_lora_adapter_with_the_kl_anchor_and_logs_it_in_training_and_eval(
    tiny_model_dir, tmp_path
):
    vocab_size = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    write_rows(tmp_path / "rows.jsonl", vocab_size)
    config = sgd_config(tiny_model_dir, tmp_path) | {
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_linear": True,
        # axolotl switches its Triton LoRA kernels on by default; they need CUDA
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "infosft_kl_to_base": 0.1,
        "val_set_size": 0.5,
        "eval_strategy": "steps",
        "eval_steps": 1,
    }
    result = axolotl_train(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "'infosft/kl_to_base'" in output and "'eval_infosft/kl_to_base'" in output


def test_axolotl_train_refuses_another_loss_in_one_line_before_the_model_loads(
    tiny_model_dir, tmp_path
):
    write_rows(tmp_path / "rows.jsonl", 600)
    config = sgd_config(tiny_model_dir, tmp_path)
    config["plugins"].append("axolotl.integrations.liger.LigerPlugin")
    config["liger_fused_linear_cross_entropy"] = True
    result = axolotl_train(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    [line] = [line for line in output.splitlines() if f"{PLUGIN} refuses" in line]
    assert "liger_fused_linear_cross_entropy" in line and "remove it" in line
    assert "Loading weights" not in output


# Config changes on top of sgd_config -> a word the refusal must contain ("ok": accepted).
CASES = {
    "liger_fused_linear_cross_entropy": (
        {"plugins": [PLUGIN, "axolotl.integrations.liger.LigerPlugin"]}
        | {"liger_fused_linear_cross_entropy": True},
        "liger_fused_linear_cross_entropy",
    ),
    "liger_cross_entropy": (
        {"plugins": [PLUGIN, "axolotl.integrations.liger.LigerPlugin"]}
        | {"liger_cross_entropy": True},
        "liger_cross_entropy",
    ),
    "liger_kernels_that_leave_the_loss_alone": (
        {"plugins": [PLUGIN, "axolotl.integrations.liger.LigerPlugin"]} | {"liger_rms_norm": True},
        "ok",
    ),
    "cut_cross_entropy": (
        {"plugins": [PLUGIN, "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]}
        | {"bf16": True},
        "cut_cross_entropy",
    ),
    "cut_cross_entropy_switched_off": (
        {"plugins": [PLUGIN, "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]}
        | {"cut_cross_entropy": False},
        "ok",
    ),
    "knowledge_distillation": (
        {"plugins": [PLUGIN, "axolotl.integrations.kd.KDPlugin"]},
        "axolotl.integrations.kd.KDPlugin",
    ),
    "chunked_cross_entropy": ({"chunked_cross_entropy": True}, "chunked_cross_entropy"),
    "eaft": ({"use_eaft": True}, "use_eaft"),
    "rl": ({"rl": "dpo"}, "rl"),
    "context_parallelism": ({"context_parallel_size": 2}, "context_parallel_size"),
    "misspelt_key": ({"infosft_pbar": 0.8}, "infosft_pbar"),
    "p_bar_out_of_range": ({"infosft_p_bar": 1.5}, "infosft_p_bar"),
    "unknown_method": ({"infosft_method": "no_such_method"}, "no_such_method"),
    "negative_kl_anchor": ({"infosft_kl_to_base": -1.0}, "infosft_kl_to_base"),
    "sample_packing": ({"sample_packing": True}, "ok"),
    "another_scheme": ({"infosft_method": "eaft"}, "ok"),
    "gemma4": ({"model_config_type": "gemma4"}, "gemma4"),
}


@pytest.fixture(scope="module")
def outcomes(tiny_model_dir, tmp_path_factory):
    """Every case validated as `axolotl train` validates its config, in one process."""
    work = tmp_path_factory.mktemp("axolotl-configs")
    base = sgd_config(tiny_model_dir, work)
    cases = {name: base | change for name, (change, _) in CASES.items()}
    (work / "cases.json").write_text(json.dumps(cases))
    script = Path(__file__).with_name("axolotl_check_configs.py")
    result = subprocess.run(
        [str(VENV / "bin" / "python"), str(script), str(work / "cases.json")],
        env=axolotl_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_the_plugin_config_is_refused_with_its_reason_or_accepted(outcomes, case):
    expected = CASES[case][1]
    if expected == "ok":
        assert outcomes[case] == "ok"
    else:
        assert expected in outcomes[case] and "\n" not in outcomes[case]
