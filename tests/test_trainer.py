"""InfoSFTConfig / InfoSFTTrainer: one SGD step checked against a float64 reference update."""

import json
import math

import pytest
import torch
from datasets import Dataset

from infosft.training import InfoSFTConfig, InfoSFTTrainer, NonFiniteLossError

P_BAR = 0.93

# Token-id examples of different lengths; the first PROMPT_LENGTH labels are masked like a prompt.
PROMPT_LENGTH = 3
TEXTS = [
    "What is 12 + 7? Let's think step by step. 12 + 7 = 19.",
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
    "Question: which is larger, 3 or 5? Answer: 5 is larger than 3.",
]


def reference_weights(log_q: torch.Tensor, loss_type: str) -> torch.Tensor:
    """w(q) in float64, written from the paper's formula (reference.md §1)."""
    q = log_q.exp()
    if loss_type == "nll":
        return torch.ones_like(q)
    if loss_type == "dft":
        return q
    c = math.log(P_BAR / (1 - P_BAR))
    logit = log_q - torch.log1p(-q)
    return q * (1 - logit / c).clamp(min=0)


@pytest.fixture(scope="module")
def examples(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        rows.append({"input_ids": ids, "labels": [-100] * PROMPT_LENGTH + ids[PROMPT_LENGTH:]})
    return rows


def load_model(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def reference_loss(model, rows, loss_type, base_log_probs=None):
    """(weighted loss, nll) over all rows, each row run alone: sum over targets / target count.

    ``base_log_probs[i][t]`` (aligned with labels) replaces the current log q in the weight.
    """
    total, nll, count = 0.0, 0.0, 0
    for index, row in enumerate(rows):
        ids = torch.tensor(row["input_ids"])[None]
        targets = torch.tensor(row["labels"][1:])
        log_probs = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        mask = targets != -100
        log_q = log_probs[mask].gather(-1, targets[mask, None]).squeeze(-1)
        if base_log_probs is None:
            weights = reference_weights(log_q.detach(), loss_type)
        else:
            base = torch.tensor(base_log_probs[index][1:], dtype=torch.float64)[mask]
            weights = reference_weights(base, loss_type)
        total = total - (weights * log_q).sum()
        nll = nll - log_q.detach().sum()
        count += int(mask.sum())
    return total / count, nll / count


def reference_update(model_dir, rows, loss_type, base_log_probs=None):
    """Parameter change of one SGD step at lr 1: minus the float64 reference gradient."""
    model = load_model(model_dir, torch.float64)
    loss, _ = reference_loss(model, rows, loss_type, base_log_probs)
    loss.backward()
    return {name: -p.grad for name, p in model.named_parameters()}


def make_config(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "optim": "sgd",
        "learning_rate": 1.0,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "loss_type": "infosft",
        "p_bar": P_BAR,
    }
    settings.update(overrides)
    return InfoSFTConfig(**settings)


def train(model_dir, rows, config, **trainer_kwargs):
    """Train with ``config``; return the trainer and the change of every parameter."""
    trainer = InfoSFTTrainer(
        model=load_model(model_dir),
        args=config,
        train_dataset=Dataset.from_list(rows),
        **trainer_kwargs,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    return trainer, {name: after[name].detach().double() - before[name] for name in before}


def assert_updates_close(actual, expected):
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def default_runs(tiny_model_dir, examples, tmp_path_factory):
    """One SGD step with the default settings per loss type, trained on first use, shared."""
    runs = {}

    def run(loss_type):
        if loss_type not in runs:
            config = make_config(tmp_path_factory.mktemp(loss_type), loss_type=loss_type)
            runs[loss_type] = train(tiny_model_dir, examples, config)
        return runs[loss_type]

    return run


@pytest.fixture(scope="module")
def reference_updates(tiny_model_dir, examples):
    """The float64 reference update per loss type, computed on first use, shared."""
    updates = {}

    def update(loss_type):
        if loss_type not in updates:
            updates[loss_type] = reference_update(tiny_model_dir, examples, loss_type)
        return updates[loss_type]

    return update


@pytest.mark.parametrize("loss_type", ["nll", "dft", "infosft"])
def test_one_sgd_step_matches_float64_reference(default_runs, reference_updates, loss_type):
    _, update = default_runs(loss_type)
    assert_updates_close(update, reference_updates(loss_type))


def test_accumulation_gives_the_same_update_as_one_batch(
    tiny_model_dir, examples, tmp_path, reference_updates
):
    config = make_config(
        tmp_path,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        gradient_checkpointing=True,
    )
    _, update = train(tiny_model_dir, examples, config)
    assert_updates_close(update, reference_updates("infosft"))


def test_padding_free_gives_the_same_update(tiny_model_dir, examples, tmp_path, reference_updates):
    config = make_config(tmp_path, padding_free=True, max_length=None)
    _, update = train(tiny_model_dir, examples, config)
    assert_updates_close(update, reference_updates("infosft"))


def test_loss_type_changes_the_update(default_runs):
    _, nll = default_runs("nll")
    _, infosft = default_runs("infosft")
    assert not torch.allclose(nll["lm_head.weight"], infosft["lm_head.weight"], rtol=0.1)


def test_logs_weighted_loss_nll_and_token_statistics(tiny_model_dir, examples, default_runs):
    trainer, _ = default_runs("infosft")
    logged = trainer.state.log_history[0]
    model = load_model(tiny_model_dir, torch.float64)
    loss, nll = reference_loss(model, examples, "infosft")
    assert logged["loss"] == pytest.approx(float(loss), rel=1e-4)
    assert logged["nll"] == pytest.approx(float(nll), rel=1e-4)
    assert logged["loss_type"] == "infosft"
    assert 0 < logged["mean_q"] < 1 and 0 < logged["mean_weight"] < 1
    assert logged["entropy"] > 0 and logged["tokens_per_second"] > 0
    assert logged["zero_weight_share"] == 0  # a random model is never confident


def test_lora_trains_only_the_adapter(tiny_model_dir, examples, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer, update = train(
        tiny_model_dir,
        examples,
        make_config(tmp_path, gradient_checkpointing=True),
        peft_config=peft_config,
    )
    changed = {name for name, delta in update.items() if delta.abs().max() > 0}
    assert changed and all("lora_" in name for name in changed)
    # LoRA starts as the identity, so the first step's loss is the base model's.
    loss, _ = reference_loss(load_model(tiny_model_dir, torch.float64), examples, "infosft")
    assert trainer.state.log_history[0]["loss"] == pytest.approx(float(loss), rel=1e-4)


def test_evaluation_reports_weighted_loss_and_nll(tiny_model_dir, examples, tmp_path):
    model = load_model(tiny_model_dir)
    config = make_config(tmp_path, per_device_eval_batch_size=4)
    trainer = InfoSFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(examples),
    )
    metrics = trainer.evaluate()
    loss, nll = reference_loss(load_model(tiny_model_dir, torch.float64), examples, "infosft")
    assert metrics["eval_loss"] == pytest.approx(float(loss), rel=1e-4)
    assert metrics["eval_nll"] == pytest.approx(float(nll), rel=1e-4)


def test_base_weights_come_from_base_log_probs(tiny_model_dir, examples, tmp_path):
    from torch.nn.utils.rnn import pad_sequence
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    generator = torch.Generator().manual_seed(1)
    base_log_probs = []
    rows = []
    for row in examples:
        values = -3 * torch.rand(len(row["labels"]), generator=generator, dtype=torch.float64)
        values[:PROMPT_LENGTH] = float("nan")  # arbitrary where labels are ignored
        base_log_probs.append(values.tolist())
        rows.append({**row, "base_log_probs": values.tolist()})
    collate_tokens = DataCollatorForLanguageModeling(pad_token_id=0)

    def collate(batch):
        base = [torch.tensor(example.pop("base_log_probs")) for example in batch]
        out = collate_tokens(batch)
        out["base_log_probs"] = pad_sequence(base, batch_first=True, padding_value=0.0)
        return out

    config = make_config(tmp_path, weight_source="base")
    _, update = train(tiny_model_dir, rows, config, data_collator=collate)
    expected = reference_update(tiny_model_dir, examples, "infosft", base_log_probs)
    assert_updates_close(update, expected)


def test_base_weights_without_the_column_fail_clearly(tiny_model_dir, examples, tmp_path):
    config = make_config(tmp_path, weight_source="base")
    with pytest.raises(ValueError, match="base_log_probs"):
        train(tiny_model_dir, examples, config)


def test_loss_schedule_switches_at_the_epoch_and_resumes(tiny_model_dir, examples, tmp_path):
    schedule = [{"until_epoch": 1, "loss_type": "nll"}, {"loss_type": "infosft"}]
    config = make_config(
        tmp_path, loss_schedule=json.dumps(schedule), max_steps=-1, num_train_epochs=2
    )
    config.save_strategy, config.save_steps = "steps", 1
    trainer, _ = train(tiny_model_dir, examples, config)
    logged = [h["loss_type"] for h in trainer.state.log_history if "loss_type" in h]
    assert logged == ["nll", "infosft"]

    resumed = InfoSFTTrainer(
        model=load_model(tiny_model_dir), args=config, train_dataset=Dataset.from_list(examples)
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert [h["loss_type"] for h in resumed.state.log_history if "loss_type" in h] == [
        "nll",
        "infosft",
    ]


def test_non_finite_loss_saves_a_checkpoint_and_stops(tiny_model_dir, examples, tmp_path):
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    trainer = InfoSFTTrainer(
        model=model, args=make_config(tmp_path), train_dataset=Dataset.from_list(examples)
    )
    with pytest.raises(NonFiniteLossError, match="checkpoint-0"):
        trainer.train()
    assert (tmp_path / "out" / "checkpoint-0" / "trainer_state.json").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("loss_type", "focal", "not a weighting scheme"),
        ("p_bar", 1.5, "p_bar"),
        ("p_bar", 0.3, "p_bar > 0.5|0.5 < p_bar"),
        ("weight_source", "reference", "weight_source"),
        ("loss_schedule", [{"loss_type": "nll", "until_epoch": 1}], "last entry"),
        ("loss_schedule", [{"until_epoch": 1, "loss_type": "nll"}, {"loss": "dft"}], "unknown"),
        (
            "loss_schedule",
            [{"until_epoch": 2, "loss_type": "nll"}, {"until_epoch": 1, "loss_type": "dft"}, {}],
            "greater than",
        ),
        ("loss_schedule", "[{", "not valid JSON"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        InfoSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{field: value})


def test_loss_schedule_resolves_the_loss_type_by_epoch(tmp_path):
    config = InfoSFTConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        loss_schedule=[
            {"until_epoch": 1, "loss_type": "nll"},
            {"until_epoch": 1.5, "loss_type": "dft"},
            {"loss_type": "infosft"},
        ],
    )
    epochs = [None, 0.0, 0.99, 1.0, 1.49, 1.5, 7.0]
    assert [config.loss_type_at(e) for e in epochs] == [
        "nll",
        "nll",
        "nll",
        "dft",
        "dft",
        "infosft",
        "infosft",
    ]
