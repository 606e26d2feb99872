"""The paper's recipes in configs/: they parse, carry the paper's hyperparameters
(arXiv 2605.14967), and run one training step on the tiny model with synthetic rows shaped like
the real datasets."""

import json
from pathlib import Path

import pytest
import yaml

from infosft.cli import main
from infosft.training.formats import explode_toolalpaca
from test_formats import (
    numina_row,
    openr1_row,
    sciq_row,
    toolalpaca_api,
    ultrafeedback_row,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = CONFIGS / "recipes"
PAPER_GPUS = 4  # the recipes' global batch assumes 4 data-parallel GPUs

# The paper's hyperparameters (arXiv 2605.14967), written out independently of the YAML files.
PAPER = {
    "math_numina.yaml": {
        "model": "Qwen/Qwen2.5-Math-1.5B",
        "learning_rate": 5e-5,
        "num_train_epochs": 1,
        "global_batch": 256,
        "max_length": 4096,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
    },
    "math_numina_qwen7b.yaml": {
        "model": "Qwen/Qwen2.5-Math-7B",
        "learning_rate": 2e-5,
        "num_train_epochs": 1,
        "global_batch": 256,
        "max_length": 4096,
    },
    "math_numina_llama8b.yaml": {
        "model": "meta-llama/Llama-3.1-8B",
        "learning_rate": 2e-5,
        "num_train_epochs": 1,
        "global_batch": 256,
        "max_length": 4096,
    },
    "code_ultrafeedback.yaml": {
        "model": "meta-llama/Llama-3.1-8B",
        "learning_rate": 2e-5,
        "num_train_epochs": 1,
        "global_batch": 32,
        "lora": {"rank": 32, "alpha": 64, "dropout": 0.05, "target_modules": "all-linear"},
    },
    "longcot_openr1.yaml": {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "learning_rate": 5e-6,
        "num_train_epochs": 2,
        "global_batch": 64,
        "loss_schedule": [{"method": "nll", "until_epoch": 1}, {"method": "infosft"}],
    },
    "forgetting_science.yaml": {"model": "Qwen/Qwen2.5-7B-Instruct"},
    "forgetting_toolalpaca.yaml": {"model": "Qwen/Qwen2.5-7B-Instruct"},
}


def read_recipe(name):
    from infosft.files import read_yaml

    return read_yaml(RECIPES / name)


def test_every_recipe_file_is_checked():
    assert sorted(p.name for p in RECIPES.glob("*.yaml") if "grid" not in p.name) == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_resolves_to_a_run_spec(name, tmp_path):
    from infosft.training import resolve_spec

    spec = resolve_spec(RECIPES / name, flags={"output_dir": str(tmp_path)})
    assert spec.args.p_bar == 0.93
    assert spec.args.weight_source == "current"
    assert spec.model == PAPER[name]["model"]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_has_the_papers_hyperparameters(name):
    values = read_recipe(name)
    expected = dict(PAPER[name])
    global_batch = expected.pop("global_batch", None)
    if global_batch is not None:
        per_step = values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
        assert per_step * PAPER_GPUS == global_batch
    for key, value in expected.items():
        assert values[key] == value, key
    assert values.get("bf16") is True
    assert values.get("activation_checkpointing") is True


@pytest.mark.parametrize(
    ("name", "distributed_type", "key", "value"),
    [
        ("ddp.yaml", "MULTI_GPU", None, None),
        ("fsdp2.yaml", "FSDP", "fsdp_config", {"fsdp_version": 2}),
        ("deepspeed_zero2.yaml", "DEEPSPEED", "deepspeed_config", {"zero_stage": 2}),
        ("deepspeed_zero3.yaml", "DEEPSPEED", "deepspeed_config", {"zero_stage": 3}),
    ],
)
def test_accelerate_config(name, distributed_type, key, value):
    config = yaml.safe_load((CONFIGS / "accelerate" / name).read_text())
    assert config["distributed_type"] == distributed_type
    assert config["mixed_precision"] == "bf16"
    if key is not None:
        assert value.items() <= config[key].items()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# Raw rows shaped like each recipe's real dataset (a few copies: one step needs one batch).
DRY_RUN_ROWS = {
    "math_numina.yaml": lambda: [numina_row()] * 2,
    "code_ultrafeedback.yaml": lambda: [ultrafeedback_row()] * 2,
    "longcot_openr1.yaml": lambda: [openr1_row(), openr1_row(with_messages=False)],
    "forgetting_science.yaml": lambda: [sciq_row()] * 2,
    "forgetting_toolalpaca.yaml": lambda: explode_toolalpaca([toolalpaca_api()]),
}


@pytest.mark.parametrize("name", sorted(DRY_RUN_ROWS))
def test_recipe_dry_run_trains_one_step(name, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", DRY_RUN_ROWS[name]())
    out = tmp_path / "run"
    small = {
        "max_steps": 1,
        "bf16": False,
        "activation_checkpointing": False,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_length": 256,
        "save_strategy": "no",
        "logging_steps": 1,
        "chat_template_path": None,
    }
    if "loss_schedule" in read_recipe(name):
        # train refuses a schedule that never switches: switch after the first of two steps.
        switch = [{"method": "nll", "until_step": 1}, read_recipe(name)["loss_schedule"][-1]]
        small.update(max_steps=2, loss_schedule=switch)
    sets = [f"--set={key}={json.dumps(value)}" for key, value in small.items()]
    argv = ["train", "--config", str(RECIPES / name), "--model", str(tiny_model_dir)]
    code = main([*argv, "--data", str(data), "--output-dir", str(out), *sets])
    assert code == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in logged if "loss" in row]
    assert len(losses) == small["max_steps"] and all(loss == loss for loss in losses)  # finite
    assert (out / "model.safetensors").is_file()
