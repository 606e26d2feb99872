"""InfoSFTConfig / InfoSFTTrainer, built through build_trainer: SGD updates checked against a
float64 reference, the loss schedule, static weights, the dataset preparation, bad settings."""

import copy
import logging
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosft.training import InfoSFTConfig, NonFiniteLossError, RunSpec, build_trainer
from infosft.training.preparation import drop_examples_without_targets

P_BAR = 0.93

# Token-id examples of different lengths; the first PROMPT_LENGTH labels are masked like a prompt.
PROMPT_LENGTH = 3
TEXTS = [
    "What is 12 + 7? Let's think step by step. 12 + 7 = 19.",
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
    "Question: which is larger, 3 or 5? Answer: 5 is larger than 3.",
]
SGD = {
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "optim": "sgd",
    "learning_rate": 1.0,
    "lr_scheduler_type": "constant",
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,
    "max_steps": 1,
    "per_device_train_batch_size": 4,
    "train_sampling_strategy": "sequential",
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "disable_tqdm": True,
    "method": "infosft",
    "p_bar": P_BAR,
}


def reference_weights(log_q: torch.Tensor, method: str) -> torch.Tensor:
    """w(q) in float64, written from the paper's formula (arXiv 2605.14967)."""
    q = log_q.exp()
    if method == "nll":
        return torch.ones_like(q)
    if method == "dft":
        return q
    c = math.log(P_BAR / (1 - P_BAR))
    logit = log_q - torch.log1p(-q)
    return q * (1 - logit / c).clamp(min=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def examples(tokenizer):
    rows = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        rows.append({"input_ids": ids, "labels": [-100] * PROMPT_LENGTH + ids[PROMPT_LENGTH:]})
    return rows


def load_model(model_dir, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def build(model_dir, tokenizer, rows, tmp_path, model=None, **options):
    """build_trainer on ``rows`` (any TRL format) with the SGD settings and ``options``."""
    values = {**SGD, "output_dir": str(tmp_path / "out"), **options}
    spec = RunSpec.from_dict({**values, "data": Dataset.from_list(rows)})
    return build_trainer(spec, model=model or load_model(model_dir), tokenizer=tokenizer)


def train(trainer):
    """Train; return the trainer and the change of every parameter (float64)."""
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    return trainer, {name: after[name].detach().double() - before[name] for name in before}


def target_log_q(model, row):
    """[N] float64 log q of the row's target tokens (labels != -100 after the shift), the row
    run alone through ``model`` with full logits."""
    targets = torch.tensor(row["labels"][1:])
    log_probs = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
    log_probs = log_probs.double().log_softmax(-1)
    mask = targets != -100
    return log_probs[mask].gather(-1, targets[mask, None]).squeeze(-1)


def reference_loss(model, rows, method, base_log_q=None):
    """(weighted loss, nll) over all rows: sum over targets / target count.

    ``base_log_q[i]`` (float64, one value per target of row i) replaces the current log q in
    the weight.
    """
    total, nll, count = 0.0, 0.0, 0
    for index, row in enumerate(rows):
        log_q = target_log_q(model, row)
        source = log_q.detach() if base_log_q is None else base_log_q[index]
        total = total - (reference_weights(source, method) * log_q).sum()
        nll = nll - log_q.detach().sum()
        count += len(log_q)
    return total / count, nll / count


def reference_update(model_dir, rows, method):
    """Parameter change of one SGD step at lr 1: minus the float64 reference gradient."""
    model = load_model(model_dir, torch.float64)
    loss, _ = reference_loss(model, rows, method)
    loss.backward()
    return {name: -p.grad for name, p in model.named_parameters()}


def assert_updates_close(actual, expected):
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def default_runs(tiny_model_dir, tokenizer, examples, tmp_path_factory):
    """One SGD step with the default settings per method, trained on first use, shared."""
    runs = {}

    def run(method):
        if method not in runs:
            path = tmp_path_factory.mktemp(method)
            runs[method] = train(build(tiny_model_dir, tokenizer, examples, path, method=method))
        return runs[method]

    return run


@pytest.fixture(scope="module")
def reference_updates(tiny_model_dir, examples):
    """The float64 reference update per method, computed on first use, shared."""
    updates = {}

    def update(method):
        if method not in updates:
            updates[method] = reference_update(tiny_model_dir, examples, method)
        return updates[method]

    return update


@pytest.mark.parametrize("method", ["nll", "dft", "infosft"])
def test_one_sgd_step_matches_float64_reference(default_runs, reference_updates, method):
    _, update = default_runs(method)
    assert_updates_close(update, reference_updates(method))


def test_accumulation_gives_the_same_update_as_one_batch(
    tiny_model_dir, tokenizer, examples, tmp_path, reference_updates
):
    trainer = build(
        tiny_model_dir,
        tokenizer,
        examples,
        tmp_path,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        activation_checkpointing=True,
    )
    _, update = train(trainer)
    assert_updates_close(update, reference_updates("infosft"))


def test_padding_free_gives_the_same_update(
    tiny_model_dir, tokenizer, examples, tmp_path, reference_updates
):
    trainer = build(
        tiny_model_dir, tokenizer, examples, tmp_path, padding_free=True, max_length=None
    )
    _, update = train(trainer)
    assert_updates_close(update, reference_updates("infosft"))


def test_method_changes_the_update(default_runs):
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
    assert logged["method"] == "infosft"
    assert 0 < logged["mean_q"] < 1 and 0 < logged["mean_weight"] < 1
    assert logged["entropy"] > 0 and logged["tokens_per_second"] > 0
    assert logged["zero_weight_share"] == 0  # a random model is never confident


def test_lora_trains_only_the_adapter(tiny_model_dir, tokenizer, examples, tmp_path):
    lora = {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    trainer, update = train(build(tiny_model_dir, tokenizer, examples, tmp_path, lora=lora))
    changed = {name for name, delta in update.items() if delta.abs().max() > 0}
    assert changed and all("lora_" in name for name in changed)
    # LoRA starts as the identity, so the first step's loss is the base model's.
    loss, _ = reference_loss(load_model(tiny_model_dir, torch.float64), examples, "infosft")
    assert trainer.state.log_history[0]["loss"] == pytest.approx(float(loss), rel=1e-4)


def test_a_deep_copy_of_the_model_after_build_trainer_trains_on_its_own(
    tiny_model_dir, tokenizer, examples, tmp_path
):
    """TRL's SFTTrainer patches the forward of the model it is given with a closure over that
    model; a copy taken after build_trainer must still run (and train) its own weights."""
    model = load_model(tiny_model_dir)
    build(tiny_model_dir, tokenizer, examples, tmp_path / "first", model=model)
    twin = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, update = train(build(tiny_model_dir, tokenizer, examples, tmp_path / "twin", model=twin))
    assert update["model.embed_tokens.weight"].abs().max() > 0
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_evaluation_reports_weighted_loss_and_nll_in_one_forward_pass(
    tiny_model_dir, tokenizer, examples, tmp_path
):
    model = load_model(tiny_model_dir)
    calls = []
    model.model.register_forward_hook(lambda *args: calls.append(1))
    spec = RunSpec.from_dict(
        {
            **SGD,
            "output_dir": str(tmp_path),
            "per_device_eval_batch_size": 4,
            "data": Dataset.from_list(examples),
            "eval_data": Dataset.from_list(examples),
        }
    )
    metrics = build_trainer(spec, model=model, tokenizer=tokenizer).evaluate()
    loss, nll = reference_loss(load_model(tiny_model_dir, torch.float64), examples, "infosft")
    assert metrics["eval_loss"] == pytest.approx(float(loss), rel=1e-4)
    assert metrics["eval_nll"] == pytest.approx(float(nll), rel=1e-4)
    assert len(calls) == 1  # one batch of 4, one forward


def test_static_weights_give_the_update_of_the_frozen_base_weights(
    tiny_model_dir, tokenizer, examples, tmp_path
):
    """weight_source: base over 3 SGD steps equals a float64 reference whose weights come
    from the initial model, and differs measurably from weight_source: current."""
    lr, steps = 20.0, 3
    options = {"weight_source": "base", "max_steps": steps, "learning_rate": lr}
    trainer = build(tiny_model_dir, tokenizer, examples, tmp_path, **options)
    assert len(list((tmp_path / "out" / "_base_log_probs").glob("*/shard-*.npz"))) == 1
    _, update = train(trainer)

    def reference_sgd(weight_source):
        model = load_model(tiny_model_dir, torch.float64)
        initial = {name: p.detach().clone() for name, p in model.named_parameters()}
        with torch.no_grad():
            frozen = [target_log_q(model, row) for row in examples]
        for _ in range(steps):
            base = frozen if weight_source == "base" else None
            loss, _ = reference_loss(model, examples, "infosft", base)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for param in model.parameters():
                    param -= lr * param.grad
        return {name: p.detach() - initial[name] for name, p in model.named_parameters()}

    expected, current = reference_sgd("base"), reference_sgd("current")
    gap = max(float((expected[k] - current[k]).abs().max()) for k in expected)
    assert gap > 1e-4  # the two weight sources lead to measurably different models
    for name, value in expected.items():
        torch.testing.assert_close(update[name], value, rtol=0, atol=gap / 20, msg=name)


def schedule_run(model_dir, tokenizer, examples, path, schedule, resume=None, **options):
    """Two epochs of one-row steps (4 steps per epoch) under ``schedule``, checkpointing every
    step; returns the trainer after training (from ``resume`` if given)."""
    settings = {
        "loss_schedule": schedule,
        "max_steps": -1,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 1,
        "learning_rate": 0.1,
        "save_strategy": "steps",
        "save_steps": 1,
        **options,
    }
    trainer = build(model_dir, tokenizer, examples, path, **settings)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if "method" in h]


@pytest.mark.parametrize(
    "schedule",
    [
        [{"method": "nll", "until_epoch": 0.5}, {"method": "infosft"}],
        [{"method": "nll", "until_step": 2}, {"method": "infosft"}],
    ],
    ids=["until_epoch_0.5", "until_step_2"],
)
def test_loss_schedule_switches_within_an_epoch_and_resumes_at_the_switch(
    tiny_model_dir, tokenizer, examples, tmp_path, schedule
):
    trainer = schedule_run(tiny_model_dir, tokenizer, examples, tmp_path / "a", schedule)
    assert logged(trainer, "method") == ["nll"] * 2 + ["infosft"] * 6
    for entry in trainer.state.log_history[:2]:  # w = 1: the loss is the plain NLL
        assert entry["loss"] == pytest.approx(entry["nll"], rel=1e-5)

    checkpoint = str(tmp_path / "a" / "out" / "checkpoint-2")
    resumed = schedule_run(
        tiny_model_dir, tokenizer, examples, tmp_path / "a", schedule, resume=checkpoint
    )
    assert logged(resumed, "method") == logged(trainer, "method")
    assert logged(resumed, "loss") == pytest.approx(logged(trainer, "loss"))


def test_schedule_entry_is_chosen_by_epoch_or_step(tmp_path):
    config = InfoSFTConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        loss_schedule=[
            {"method": "nll", "until_epoch": 0.25},
            {"method": "dft", "until_epoch": 1.5},
            {"method": "infosft"},
        ],
    )
    epochs = [None, 0.0, 0.24, 0.25, 1.49, 1.5, 7.0]
    assert [config.schedule_entry(e, 0).method for e in epochs] == [
        "nll",
        "nll",
        "nll",
        "dft",
        "dft",
        "infosft",
        "infosft",
    ]
    by_step = InfoSFTConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        loss_schedule=[{"method": "nll", "until_step": 30}, {"method": "infosft"}],
    )
    assert [by_step.schedule_entry(0.9, s).method for s in (0, 29, 30)] == [
        "nll",
        "nll",
        "infosft",
    ]


def test_non_finite_loss_with_finite_weights_saves_the_state_before_the_step(
    tiny_model_dir, tokenizer, examples, tmp_path
):
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.fill_(3e38)  # finite weights whose logits overflow to inf
    trainer = build(tiny_model_dir, tokenizer, examples, tmp_path, model=model)
    with pytest.raises(NonFiniteLossError, match=r"checkpoint-0.*--resume"):
        trainer.train()
    assert (tmp_path / "out" / "checkpoint-0" / "trainer_state.json").exists()


def test_non_finite_weights_stop_training_without_a_checkpoint(
    tiny_model_dir, tokenizer, examples, tmp_path
):
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    trainer = build(tiny_model_dir, tokenizer, examples, tmp_path, model=model)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was saved"):
        trainer.train()
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def kl_to(base, model, row):
    """[N] float64 KL(p_base || p_model) over the vocabulary at each target of ``row``."""
    ids = torch.tensor([row["input_ids"]])
    mask = torch.tensor(row["labels"][1:]) != -100
    with torch.no_grad():
        log_base = base(input_ids=ids).logits[0, :-1].double().log_softmax(-1)[mask]
    log_model = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)[mask]
    return (log_base.exp() * (log_base - log_model)).sum(-1)


def test_kl_to_base_adds_the_anchor_to_the_float64_reference_update(
    tiny_model_dir, tokenizer, examples, tmp_path
):
    """Two SGD steps (the KL and its gradient are 0 at the first, when the model is the base)."""
    lr, beta = 20.0, 0.5
    options = {"max_steps": 2, "learning_rate": lr, "kl_to_base": beta}
    trainer, update = train(build(tiny_model_dir, tokenizer, examples, tmp_path, **options))
    assert trainer.state.log_history[0]["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
    assert trainer.state.log_history[1]["kl_to_base"] > 0

    base = load_model(tiny_model_dir, torch.float64)
    model = load_model(tiny_model_dir, torch.float64)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(2):
        loss, _ = reference_loss(model, examples, "infosft")
        kl = torch.cat([kl_to(base, model, row) for row in examples])
        model.zero_grad()
        (loss + beta * kl.sum() / len(kl)).backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= lr * param.grad
    for name, param in model.named_parameters():
        torch.testing.assert_close(
            update[name], param.detach() - initial[name], rtol=1e-4, atol=1e-6, msg=name
        )


def test_kl_to_base_with_lora_measures_against_the_adapters_switched_off(
    tiny_model_dir, tokenizer, examples, tmp_path
):
    from peft import PeftModel

    lora = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    options = {"max_steps": 2, "learning_rate": 20.0, "kl_to_base": 0.5, "lora": lora}
    options |= {"save_strategy": "steps", "save_steps": 1}
    trainer, _ = train(build(tiny_model_dir, tokenizer, examples, tmp_path, **options))
    logged = trainer.state.log_history[1]["kl_to_base"]  # under the weights after step 1

    base = load_model(tiny_model_dir, torch.float64)
    after_one = PeftModel.from_pretrained(
        load_model(tiny_model_dir, torch.float64), tmp_path / "out" / "checkpoint-1"
    ).eval()
    kl = torch.cat([kl_to(base, after_one, row).detach() for row in examples])
    assert float(kl.mean()) > 1e-6
    assert logged == pytest.approx(float(kl.mean()), rel=1e-3)


PROMPTS = [{"prompt": f"What is {i} + 7?", "completion": f" {i + 7}."} for i in range(4)]
LONG_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}. " * 4


def test_examples_truncated_to_no_target_are_dropped_with_a_count(
    tiny_model_dir, tokenizer, tmp_path, caplog
):
    rows = PROMPTS + [{"prompt": LONG_PROMPT, "completion": " 42."}] * 2
    with caplog.at_level(logging.WARNING, logger="infosft.training.preparation"):
        trainer = build(tiny_model_dir, tokenizer, rows, tmp_path, max_length=24)
    assert len(trainer.train_dataset) == 4
    assert "2 of 6 train examples have no target token within max_length=24" in caplog.text


def test_examples_cut_at_max_length_are_counted_in_a_warning(
    tiny_model_dir, tokenizer, tmp_path, caplog
):
    rows = [*PROMPTS, {"prompt": "What is 1 + 1?", "completion": " two" * 40}]
    with caplog.at_level(logging.WARNING, logger="infosft.training.preparation"):
        trainer = build(tiny_model_dir, tokenizer, rows, tmp_path, max_length=32)
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) == 32
    assert "1 of 5 train examples reach max_length=32 tokens" in caplog.text


def test_examples_without_a_target_after_the_shift_are_dropped(caplog):
    # Position 0 is never predicted, so a label there alone is no target (causal shift).
    labels = [[-100, 5, 6], [5, -100, -100], [-100, -100, -100], [-100, -100, 7]]
    prepared = Dataset.from_dict({"input_ids": [[1, 5, 6]] * 4, "labels": labels})
    with caplog.at_level(logging.WARNING, logger="infosft.training.preparation"):
        kept = drop_examples_without_targets(prepared, 5, "train", 8)
    assert kept["labels"] == [[-100, 5, 6], [-100, -100, 7]]
    assert "3 of 5 train examples have no target token within max_length=8" in caplog.text


def test_a_dataset_left_without_targets_is_an_error():
    prepared = Dataset.from_dict({"input_ids": [[5, 6]], "labels": [[5, -100]]})
    with pytest.raises(ValueError, match="raise max_length"):
        drop_examples_without_targets(prepared, 2, "train", 2)


def chat_rows(rows):
    return [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]
        }
        for r in rows
    ]


def test_assistant_only_loss_with_smollm2s_template_keeps_the_tokenizer_unchanged(
    tiny_model_dir, tokenizer, tmp_path
):
    from infosft.models import SMOLLM2_CHAT_TEMPLATE

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = SMOLLM2_CHAT_TEMPLATE  # no {% generation %} markers
    spec = RunSpec.from_dict(
        {
            **SGD,
            "output_dir": str(tmp_path),
            "assistant_only_loss": True,
            "data": Dataset.from_list(chat_rows(PROMPTS)),
        }
    )
    trainer = build_trainer(spec, model=load_model(tiny_model_dir), tokenizer=plain)
    assert plain.chat_template == SMOLLM2_CHAT_TEMPLATE
    assert trainer.processing_class is plain
    row = trainer.train_dataset[0]
    targets = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert plain.decode(targets) == PROMPTS[0]["completion"] + "<|im_end|>"


def test_assistant_only_loss_on_data_without_an_assistant_turn_is_an_error(
    tiny_model_dir, tokenizer, tmp_path
):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "?"}]}]
    with pytest.raises(ValueError, match="train example 0 has no assistant message"):
        build(tiny_model_dir, tokenizer, rows, tmp_path, assistant_only_loss=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "focal", "unknown scheme"),
        ("loss_type", "dft", "method='dft'"),
        ("p_bar", 1.5, "p_bar"),
        ("p_bar", 0.3, "p_bar > 0.5|0.5 < p_bar"),
        ("kl_to_base", -1.0, "kl_to_base must be a finite number >= 0, got -1.0"),
        ("weight_source", "reference", "weight_source must be one of current, base, got 'ref"),
        ("method_args", {"k": 2}, "takes no method_args"),
        ("method_args", {"top_k": 5}, "each entry its own method_args"),
        ("loss_schedule", [{"method": "nll", "until_epoch": 1}], "last entry"),
        ("loss_schedule", [{"method": "nll", "until_epoch": 1}, {"loss": "dft"}], "unknown"),
        ("loss_schedule", [{"loss_type": "nll", "until_epoch": 1}, {}], "'method' now"),
        (
            "loss_schedule",
            [{"method": "nll", "until_epoch": 2}, {"method": "dft", "until_epoch": 1}, {}],
            "later than",
        ),
        (
            "loss_schedule",
            [{"method": "nll", "until_epoch": 1}, {"method": "dft", "until_step": 9}, {}],
            "one unit",
        ),
        ("loss_schedule", [{"method": "nll", "until_step": 1.5}, {}], "whole number"),
        ("loss_schedule", [{"method": "nll", "until_epoch": 0}, {}], "positive"),
        ("loss_schedule", "[{", "not valid JSON"),
        ("gradient_accumulation_steps", 0, "must be a positive whole number, got 0"),
        ("per_device_train_batch_size", 0, "must be a positive whole number, got 0"),
        ("max_length", 0, r"max_length must be a positive whole number of tokens \(or null"),
        ("max_steps", -5, r"max_steps must be .*, got -5 \(or -1 to train num_train_epochs\)"),
        ("num_train_epochs", 0, "num_train_epochs must be a positive finite number of epochs"),
        ("learning_rate", -1e-4, "learning_rate must be a finite number >= 0"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value, message):
    extra = {"loss_schedule": [{"method": "eaft"}]} if value == {"top_k": 5} else {}
    with pytest.raises(ValueError, match=message):
        InfoSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{field: value}, **extra)


def test_static_weights_need_a_scheme_of_q_alone(tmp_path):
    with pytest.raises(ValueError, match="'eaft' also depends on"):
        InfoSFTConfig(output_dir=str(tmp_path), use_cpu=True, method="eaft", weight_source="base")


def test_a_config_pickles_and_resolves_its_schedule_again(tmp_path):
    import pickle

    schedule = [{"method": "nll", "until_step": 2}, {"method": "eaft", "method_args": {"top_k": 5}}]
    config = InfoSFTConfig(output_dir=str(tmp_path), use_cpu=True, loss_schedule=schedule)
    loaded = pickle.loads(pickle.dumps(config))
    assert loaded.loss_schedule == schedule
    assert loaded.schedule_entry(0.0, 5).scheme.top_k == 5
