"""Through the real CLI on the tiny model: the loss schedule switches at the epoch boundary and
survives a resume there; static weights (weight_source: base) give the update of a float64
reference whose weights come from the frozen initial model."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from infosft.cli import main
from infosft.objectives import token_weights

SCHEDULE = [{"until_epoch": 1, "loss_type": "nll"}, {"loss_type": "infosft"}]


def write_rows(path, count):
    rows = [
        {
            "prompt": f"What is {i} + {i + 2}?",
            "completion": f"The answer is {2 * i + 2}." * (1 + i % 3),
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def cli_args(model_dir, data, out, **options):
    args = ["train", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out)]
    return [*args, *[f"--set={key}={json.dumps(value)}" for key, value in options.items()]]


def logged_steps(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]


SCHEDULED = {
    "loss_schedule": SCHEDULE,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 4,
    "train_sampling_strategy": "sequential",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 1,
    "max_length": 64,
    "learning_rate": 1e-3,
}


def test_schedule_switches_at_the_epoch_boundary_and_survives_resume(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "data.jsonl", 8)  # 2 steps per epoch, 4 steps in all
    out = tmp_path / "run"
    assert main(cli_args(tiny_model_dir, data, out, **SCHEDULED)) == 0
    steps = logged_steps(out)
    assert [row["loss_type"] for row in steps] == ["nll", "nll", "infosft", "infosft"]
    for row in steps[:2]:  # w = 1: the loss is the plain NLL of the same tokens
        assert row["loss"] == pytest.approx(row["nll"], rel=1e-5)
    for row in steps[2:]:
        assert row["loss"] < 0.5 * row["nll"]

    # Interrupt exactly at the boundary: keep checkpoint-2 (epoch 1.0), resume from it.
    for name in ("checkpoint-3", "checkpoint-4"):
        shutil.rmtree(out / name)
    assert main([*cli_args(tiny_model_dir, data, out, **SCHEDULED), "--resume"]) == 0
    resumed = logged_steps(out)
    assert [row["loss_type"] for row in resumed] == [row["loss_type"] for row in steps]
    assert [row["loss"] for row in resumed] == pytest.approx([row["loss"] for row in steps])


def prepared_rows(model_dir, data, tmp_path):
    """input_ids / labels exactly as the trainer tokenizes them (same TRL preparation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infosft.training.config import InfoSFTConfig
    from infosft.training.data import load_data
    from infosft.training.trainer import InfoSFTTrainer

    args = InfoSFTConfig(
        output_dir=str(tmp_path / "prep"),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        max_length=64,
    )
    trainer = InfoSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=load_data(str(data)),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    return list(trainer.train_dataset)


def reference_sgd(model, rows, lr, steps, weight_source):
    """float64 SGD on one full batch: loss = sum over targets of -sg(w) log q / N, with w from
    the frozen initial model (base) or the model of the current step (current)."""
    model = copy.deepcopy(model).double()
    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = (
            torch.tensor(row["input_ids"]),
            torch.tensor(row["labels"]),
            1,
        )
    targets = labels[:, 1:]
    keep = targets != -100

    def target_log_q(m):
        log_probs = m(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
        return log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep]

    with torch.no_grad():
        base = target_log_q(model)
    for _ in range(steps):
        log_q = target_log_q(model)
        q_for_weights = base if weight_source == "base" else log_q.detach()
        weights = token_weights(q_for_weights, "infosft").double()
        loss = -(weights * log_q).sum() / keep.sum()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= lr * param.grad
    return {name: p.detach() for name, p in model.named_parameters()}


def test_static_weights_give_the_update_of_the_frozen_base_weights(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_rows(tmp_path / "data.jsonl", 4)
    lr, steps = 20.0, 3
    options = {
        "weight_source": "base",
        "loss_type": "infosft",
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "optim": "sgd",
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,  # no clipping
        "train_sampling_strategy": "sequential",
        "save_strategy": "no",
        "max_length": 64,
    }
    out = tmp_path / "run"
    # Evaluation batches need the column too: the held-out set gets its own pass.
    eval_data = write_rows(tmp_path / "eval.jsonl", 2)
    args = [*cli_args(tiny_model_dir, data, out, **options), "--eval-data", str(eval_data)]
    assert main(args) == 0
    assert len(list((out / "base_log_probs").glob("*/shard-*.npz"))) == 2
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in row for row in logged)
    trained = load_file(out / "model.safetensors")

    rows = prepared_rows(tiny_model_dir, data, tmp_path)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = reference_sgd(base_model, rows, lr, steps, "base")
    current = reference_sgd(base_model, rows, lr, steps, "current")
    gap = max(float((expected[k] - current[k]).abs().max()) for k in expected)
    assert gap > 1e-4  # the two weight sources lead to measurably different models
    for name, value in expected.items():
        torch.testing.assert_close(trained[name].double(), value, rtol=0, atol=gap / 20, msg=name)
