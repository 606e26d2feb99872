"""`infosft train`: options, outputs, losses, resume, LoRA and bad input, on a tiny Llama."""

import json
import math
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosft.cli import main
from infosft.training import run as run_module
from infosft.training.run import LoraSpec, device_defaults, train

ROWS = [{"prompt": f"What is {i} + 7?", "completion": f" {i + 7}."} for i in range(16)]
LONG_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}. " * 4
TINY = {
    "per_device_train_batch_size": 4,
    "max_length": 64,
    "logging_steps": 1,
    "save_strategy": "no",
    "learning_rate": 1e-2,
    "report_to": "none",
    "disable_tqdm": True,
}


class Stop(Exception):
    """Raised by a spy to end a command once it has captured what the test needs."""


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def sets(options):
    """{"max_steps": 2} -> ["--set", "max_steps=2"]."""
    return [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_losses(records):
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def state_dict(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {k: v.clone() for k, v in model.state_dict().items()}


def reference_loss(model_dir, rows, method, p_bar=0.93):
    """Token-weighted NLL of the rows' completions (+ eos) under the saved model, in float64,
    averaged over all completion tokens: what the first logged loss of a one-step run over
    exactly these rows must be."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    c = math.log(p_bar / (1 - p_bar))
    total, count = 0.0, 0
    for row in rows:
        prompt = tokenizer(text=row["prompt"]).input_ids
        ids = tokenizer(text=row["prompt"] + row["completion"] + tokenizer.eos_token).input_ids
        assert ids[: len(prompt)] == prompt
        with torch.no_grad():
            log_probs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        for t in range(len(prompt), len(ids)):
            log_q = log_probs[t - 1, ids[t]].item()
            q = math.exp(log_q)
            weight = {
                "nll": 1.0,
                "dft": q,
                "infosft": q * max(0.0, 1 - (log_q - math.log1p(-q)) / c),
            }[method]
            total -= weight * log_q
            count += 1
    return total / count


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP's spin-waiting makes
    two threads many times slower than one (measured: ~2x for the SmolLM2 test, more for the
    tiny model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", ROWS)


def test_train_writes_a_loadable_checkpoint_config_and_metrics(
    tiny_model_dir, data_file, tmp_path, capsys
):
    out = tmp_path / "run"
    eval_file = write_jsonl(tmp_path / "eval.jsonl", ROWS[:4])
    code = main(
        [
            *("train", "--model", str(tiny_model_dir), "--data", data_file),
            *("--eval-data", eval_file, "--output-dir", str(out)),
            *sets({**TINY, "max_steps": 2}),
        ]
    )
    assert code == 0
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file()
    before, after = state_dict(tiny_model_dir), state_dict(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    tokenizer, original = (
        AutoTokenizer.from_pretrained(out),
        AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    assert tokenizer.chat_template == original.chat_template
    assert tokenizer("What is 3 + 7?").input_ids == original("What is 3 + 7?").input_ids

    config = json.loads((out / "run_config.json").read_text())
    assert config["model"] == str(tiny_model_dir) and config["data"] == [data_file]
    assert config["args"]["loss_type"] == "infosft" and config["args"]["max_steps"] == 2
    assert config["args"]["use_cpu"] is True and config["args"]["bf16"] is False

    records = read_metrics(out / "metrics.jsonl")
    assert sorted(train_losses(records)) == [1, 2]
    assert any("eval_loss" in r for r in records)
    printed = capsys.readouterr().out
    assert str(out / "metrics.jsonl") in printed and str(out / "run_config.json") in printed


@pytest.mark.parametrize("method", ["nll", "dft", "infosft"])
def test_loss_flag_sets_the_weighting_of_the_trained_loss(tiny_model_dir, tmp_path, method):
    rows = ROWS[:8]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / method
    options = {**TINY, "max_steps": 1, "per_device_train_batch_size": len(rows)}
    code = main(
        [
            *("train", "--model", str(tiny_model_dir), "--data", data, "--output-dir", str(out)),
            *("--loss", method, *sets(options)),
        ]
    )
    assert code == 0
    logged = train_losses(read_metrics(out / "metrics.jsonl"))[1]
    assert logged == pytest.approx(reference_loss(tiny_model_dir, rows, method), rel=1e-4)


def test_resumed_run_reproduces_the_uninterrupted_losses(tiny_model_dir, data_file, tmp_path):
    options = {**TINY, "max_steps": 6, "save_strategy": "steps", "save_steps": 3}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    base = ["train", "--model", str(tiny_model_dir), "--data", data_file, "--seed", "3"]
    assert main([*base, "--output-dir", str(full), *sets(options)]) == 0
    # The state of a run interrupted after step 3: its checkpoint and a log that went further.
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(full / "metrics.jsonl", resumed / "metrics.jsonl")
    assert main([*base, "--output-dir", str(resumed), "--resume", *sets(options)]) == 0

    expected = train_losses(read_metrics(full / "metrics.jsonl"))
    got = train_losses(read_metrics(resumed / "metrics.jsonl"))
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [got[s] for s in range(1, 7)] == pytest.approx([expected[s] for s in range(1, 7)])
    final_full, final_resumed = state_dict(full), state_dict(resumed)
    for key in final_full:
        torch.testing.assert_close(final_resumed[key], final_full[key])


def test_lora_saves_the_adapter_and_a_merged_model_that_matches_it(
    tiny_model_dir, data_file, tmp_path
):
    from peft import PeftModel

    out = tmp_path / "lora"
    code = main(
        [
            *("train", "--model", str(tiny_model_dir), "--data", data_file),
            *("--output-dir", str(out), "--lora", "--lora-rank", "4", "--lora-alpha", "8"),
            *sets({**TINY, "max_steps": 2}),
        ]
    )
    assert code == 0
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out / "adapter")
    input_ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids).logits, adapted(input_ids).logits, atol=1e-5, rtol=1e-5
        )
    before, after = state_dict(tiny_model_dir), merged.state_dict()
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q_proj], after[q_proj])


def test_examples_truncated_to_no_target_are_dropped_with_a_count(tiny_model_dir, tmp_path, caplog):
    rows = ROWS[:4] + [{"prompt": LONG_PROMPT, "completion": " 42."}] * 2
    with caplog.at_level("WARNING", logger="infosft.training.data"):
        result = train(
            str(tiny_model_dir),
            write_jsonl(tmp_path / "d.jsonl", rows),
            output_dir=tmp_path / "run",
            overrides={**TINY, "max_steps": 1, "max_length": 24},
        )
    assert result.num_train_examples == 4
    assert "2 of 6 training examples have no target token within max_length=24" in caplog.text


def test_assistant_only_loss_works_with_smollm2s_template_and_saves_it_unchanged(
    tiny_model_dir, tmp_path
):
    from infosft.models import SMOLLM2_CHAT_TEMPLATE

    model_dir = tmp_path / "smollm2-template"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE  # no {% generation %} markers
    tokenizer.save_pretrained(model_dir)
    rows = [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]
        }
        for r in ROWS[:4]
    ]
    out = tmp_path / "run"
    options = {**TINY, "max_steps": 1, "max_length": 128, "assistant_only_loss": True}
    result = train(
        str(model_dir), write_jsonl(tmp_path / "d.jsonl", rows), output_dir=out, overrides=options
    )
    assert result.num_train_examples == 4
    assert AutoTokenizer.from_pretrained(out).chat_template == SMOLLM2_CHAT_TEMPLATE


def test_non_finite_loss_stops_with_a_message_and_a_checkpoint(
    tiny_model_dir, data_file, tmp_path, capsys
):
    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(broken)
    out = tmp_path / "run"
    code = main(
        [
            *("train", "--model", str(broken), "--data", data_file, "--output-dir", str(out)),
            *sets({**TINY, "max_steps": 2}),
        ]
    )
    assert code != 0
    assert "non-finite training loss" in capsys.readouterr().err
    assert (out / "checkpoint-0" / "model.safetensors").is_file()


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path, monkeypatch):
    captured = {}
    real_build_config = run_module.build_config

    def spy(output_dir, values):
        captured["args"] = real_build_config(output_dir, values)
        raise Stop

    monkeypatch.setattr(run_module, "build_config", spy)
    recipe = {"loss_type": "dft", "p_bar": 0.9, "learning_rate": 1e-3, "max_steps": 5}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "data": "d.jsonl"}))
    with pytest.raises(Stop):
        main(
            [
                *("train", "--config", str(tmp_path / "r.yaml")),
                *("--output-dir", str(tmp_path / "o"), "--loss", "nll", "--set", "max_steps=7"),
            ]
        )
    args = captured["args"]
    assert (args.loss_type, args.max_steps) == ("nll", 7)  # flags
    assert (args.p_bar, args.learning_rate) == (0.9, 1e-3)  # config file
    assert args.weight_decay == 0.0  # default


def test_config_file_recipe_keys_reach_the_recipe(tmp_path, monkeypatch):
    captured = {}

    def spy(**kwargs):
        captured.update(kwargs)
        raise Stop

    monkeypatch.setattr(run_module, "train", spy)
    recipe = {
        "model": "some/model",
        "data": ["a.jsonl", "b.jsonl"],
        "eval_data": "e.jsonl",
        "data_format": "numina_math_cot",
        "lora": True,
        "lora_rank": 32,
        "lora_alpha": 64,
        "output_dir": "from-file",
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(Stop):
        main(["train", "--config", str(tmp_path / "r.yaml"), "--lora-alpha", "16"])
    assert captured["model"] == "some/model"
    assert captured["data"] == ["a.jsonl", "b.jsonl"] and captured["eval_data"] == ["e.jsonl"]
    assert captured["data_format"] == "numina_math_cot"
    assert captured["lora"] == LoraSpec(rank=32, alpha=16.0)
    assert captured["output_dir"] == "from-file" and captured["overrides"] == {}


def test_config_values_are_read_as_yaml_1_2(tmp_path):
    (tmp_path / "r.yaml").write_text("save_strategy: no\nlearning_rate: 1e-5\nbf16: false\n")
    values = run_module.read_config_file(tmp_path / "r.yaml")
    assert values == {"save_strategy": "no", "learning_rate": 1e-5, "bf16": False}


def test_unknown_config_key_is_an_error_naming_the_nearest_field(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("learning_rat: 0.1\n")
    code = main(["train", "--config", str(tmp_path / "r.yaml"), "--output-dir", str(tmp_path)])
    assert code == 2
    assert "'learning_rat' (did you mean learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("p_bar", ["0", "1", "1.5", "-0.2"])
def test_p_bar_outside_the_unit_interval_is_an_error(tmp_path, capsys, p_bar):
    code = main(["train", "--data", "d.jsonl", "--output-dir", str(tmp_path), "--p-bar", p_bar])
    assert code == 2
    assert "p_bar must lie strictly between 0 and 1" in capsys.readouterr().err


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    code = main(["train", "--data", "d.jsonl", "--output-dir", str(tmp_path), "--resume"])
    assert code == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path, capsys):
    (tmp_path / "checkpoint-3").mkdir()
    code = main(["train", "--data", "d.jsonl", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "pass --resume" in capsys.readouterr().err


def test_malformed_data_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    code = main(
        [
            *("train", "--model", str(tiny_model_dir), "--data", str(path)),
            *("--output-dir", str(tmp_path / "o")),
        ]
    )
    assert code == 2
    assert f"{path}:2: malformed JSON" in capsys.readouterr().err


def test_cpu_defaults_apply_only_to_keys_the_user_left_unset(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_defaults({}) == {
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,
    }
    assert device_defaults({"bf16": True, "gradient_checkpointing": True}) == {"use_cpu": True}


@pytest.mark.slow
def test_embedded_smollm2_converts_once_and_trains(tmp_path, monkeypatch):
    from infosft.models import SMOLLM2_CHAT_TEMPLATE, default_model_dir

    monkeypatch.setenv("INFOSFT_CACHE_DIR", str(tmp_path / "cache"))
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + 2?"},
                {"role": "assistant", "content": f"{i + 2}"},
            ]
        }
        for i in range(4)
    ]
    out = tmp_path / "run"
    options = {
        **TINY,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-5,
        "assistant_only_loss": True,
    }
    code = main(
        [
            *("train", "--data", write_jsonl(tmp_path / "d.jsonl", rows)),
            *("--output-dir", str(out), *sets(options)),
        ]
    )
    assert code == 0
    cached = default_model_dir()
    config = json.loads((cached / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    assert (cached / "chat_template.jinja").read_text() == SMOLLM2_CHAT_TEMPLATE
    losses = train_losses(read_metrics(out / "metrics.jsonl"))
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    trained = AutoModelForCausalLM.from_pretrained(out)
    assert trained.config.vocab_size == 49152
    assert not hasattr(trained.config, "quantization_config")
    assert AutoTokenizer.from_pretrained(out).chat_template == SMOLLM2_CHAT_TEMPLATE
