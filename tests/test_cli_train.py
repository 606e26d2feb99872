"""`infosft train`: how flags, --set and the config file resolve into one run spec, what a run
writes, resume, LoRA, and bad input (one clear line each), on a tiny Llama."""

import json
import math
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosft.cli import build_parser, main
from infosft.cli.train import spec_from_args
from infosft.training import LoraSpec, RunSpec
from infosft.training.spec import checkpointing_field, device_defaults

ROWS = [{"prompt": f"What is {i} + 7?", "completion": f" {i + 7}."} for i in range(16)]
TINY = {
    "per_device_train_batch_size": 4,
    "max_length": 64,
    "logging_steps": 1,
    "save_strategy": "no",
    "learning_rate": 1e-2,
    "report_to": "none",
    "disable_tqdm": True,
}


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


def resolved(argv):
    """The run spec an ``infosft train`` command line resolves to."""
    return spec_from_args(build_parser().parse_args(["train", *argv]))


def same_spec(a: RunSpec, b: RunSpec) -> bool:
    return a.to_dict() == b.to_dict() and a.args.to_dict() == b.args.to_dict()


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


# --- one run spec from flags, --set and the file ----------------------------------------------


def test_flags_override_set_which_overrides_the_file_which_overrides_defaults(tmp_path):
    recipe = {"method": "dft", "p_bar": 0.9, "learning_rate": 1e-3, "max_steps": 5, "seed": 1}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "data": "d.jsonl"}))
    spec = resolved(
        [
            *("--config", str(tmp_path / "r.yaml"), "--output-dir", str(tmp_path / "o")),
            *("--method", "nll", "--set", "max_steps=7", "--set", "seed=2", "--seed", "3"),
        ]
    )
    expected = RunSpec.from_dict(
        {
            "data": "d.jsonl",
            "output_dir": str(tmp_path / "o"),
            "method": "nll",  # flag over file
            "seed": 3,  # flag over --set over file
            "max_steps": 7,  # --set over file
            "p_bar": 0.9,  # file
            "learning_rate": 1e-3,  # file
        }
    )
    assert same_spec(spec, expected)
    assert spec.args.weight_decay == 0.0  # default


def test_run_keys_of_the_file_map_onto_the_spec_and_lora_flags_merge_into_its_mapping(tmp_path):
    recipe = {
        "model": "some/model",
        "data": ["a.jsonl", "b.jsonl"],
        "eval_data": "e.jsonl",
        "data_format": "numina_math_cot",
        "lora": {"rank": 32, "alpha": 64},
        "output_dir": "from-file",
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    spec = resolved(["--config", str(tmp_path / "r.yaml"), "--lora-alpha", "16"])
    assert spec.model == "some/model"
    assert spec.data == ["a.jsonl", "b.jsonl"] and spec.eval_data == ["e.jsonl"]
    assert spec.data_format == "numina_math_cot" and spec.args.output_dir == "from-file"
    assert spec.lora == LoraSpec(rank=32, alpha=16.0)


def test_lora_flag_alone_gives_the_default_adapter_and_no_flag_none(tmp_path):
    base = ["--data", "d.jsonl", "--output-dir", str(tmp_path)]
    assert resolved([*base, "--lora"]).lora == LoraSpec()
    assert resolved([*base, "--lora-rank", "8"]).lora == LoraSpec(rank=8)
    assert resolved(base).lora is None


def test_cpu_defaults_apply_only_to_keys_the_user_left_unset(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_defaults({}) == {"use_cpu": True, "bf16": False, checkpointing_field(): False}
    assert device_defaults({"bf16": True, "gradient_checkpointing": True}) == {"use_cpu": True}


@pytest.mark.parametrize("name", ["activation_checkpointing", "gradient_checkpointing"])
def test_either_name_of_activation_checkpointing_sets_the_installed_field(tmp_path, name):
    """transformers 5.23 renamed gradient_checkpointing; a config may use either name."""
    spec = RunSpec.from_dict({"data": "d.jsonl", "output_dir": str(tmp_path), name: True})
    assert getattr(spec.args, checkpointing_field()) is True
    assert spec.args.gradient_checkpointing is True  # 5.23+ keeps the old name in step


def test_the_two_names_of_activation_checkpointing_must_agree(tmp_path, capsys):
    argv = ["train", "--data", "d.jsonl", "--output-dir", str(tmp_path)]
    both = ["--set", "activation_checkpointing=true", "--set", "gradient_checkpointing=false"]
    assert "one setting under two names" in error_of([*argv, *both], capsys)


# --- what a run writes ---------------------------------------------------------------------


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
    assert config["args"]["method"] == "infosft" and config["args"]["max_steps"] == 2
    assert config["args"]["use_cpu"] is True and config["args"]["bf16"] is False
    assert config["environment"]["versions"]["trl"]

    records = read_metrics(out / "metrics.jsonl")
    assert sorted(train_losses(records)) == [1, 2]
    assert any("eval_loss" in r for r in records)
    printed = capsys.readouterr().out
    assert str(out / "metrics.jsonl") in printed and str(out / "run_config.json") in printed


@pytest.mark.parametrize("method", ["nll", "dft", "infosft"])
def test_method_flag_sets_the_weighting_of_the_trained_loss(tiny_model_dir, tmp_path, method):
    rows = ROWS[:8]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / method
    options = {**TINY, "max_steps": 1, "per_device_train_batch_size": len(rows)}
    code = main(
        [
            *("train", "--model", str(tiny_model_dir), "--data", data, "--output-dir", str(out)),
            *("--method", method, *sets(options)),
        ]
    )
    assert code == 0
    logged = train_losses(read_metrics(out / "metrics.jsonl"))[1]
    assert logged == pytest.approx(reference_loss(tiny_model_dir, rows, method), rel=1e-4)


RESUMABLE = {**TINY, "max_steps": 6, "save_strategy": "steps", "save_steps": 3}


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, data_file, tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("full") / "run"
    base = ["train", "--model", str(tiny_model_dir), "--data", data_file, "--seed", "3"]
    assert main([*base, "--output-dir", str(out), *sets(RESUMABLE)]) == 0
    return base, out


def interrupted_copy(full, path, checkpoints, metrics=False):
    """A run directory holding ``checkpoints`` of the full run, the run_config.json written
    when it started (and its metrics.jsonl)."""
    path.mkdir()
    shutil.copy(full / "run_config.json", path / "run_config.json")
    for name in checkpoints:
        shutil.copytree(full / name, path / name)
    if metrics:
        shutil.copy(full / "metrics.jsonl", path / "metrics.jsonl")
    return path


def resume_and_compare(base, full, resumed):
    """Resume ``resumed``; assert its final model equals the full run's; return its losses."""
    assert main([*base, "--output-dir", str(resumed), "--resume", *sets(RESUMABLE)]) == 0
    final_full, final_resumed = state_dict(full), state_dict(resumed)
    for key in final_full:
        torch.testing.assert_close(final_resumed[key], final_full[key])
    return train_losses(read_metrics(resumed / "metrics.jsonl"))


def test_resumed_run_reproduces_the_uninterrupted_losses(full_run, tmp_path):
    base, full = full_run
    # The state of a run interrupted after step 3: its checkpoint and a log that went further.
    resumed = interrupted_copy(full, tmp_path / "resumed", ["checkpoint-3"], metrics=True)
    got = resume_and_compare(base, full, resumed)
    expected = train_losses(read_metrics(full / "metrics.jsonl"))
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [got[s] for s in range(1, 7)] == pytest.approx([expected[s] for s in range(1, 7)])


def test_a_checkpoint_cut_off_mid_save_is_set_aside_and_the_last_complete_one_resumed(
    full_run, tmp_path
):
    base, full = full_run
    resumed = interrupted_copy(full, tmp_path / "resumed", ["checkpoint-3", "checkpoint-6"])
    state = resumed / "checkpoint-6" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # killed while writing the state
    assert sorted(resume_and_compare(base, full, resumed)) == [4, 5, 6]
    assert (resumed / "checkpoint-6.incomplete").is_dir()


def test_a_run_whose_final_save_was_cut_off_saves_its_last_checkpoint_without_training(
    full_run, tmp_path
):
    base, full = full_run
    resumed = interrupted_copy(full, tmp_path / "resumed", ["checkpoint-6"])
    weights = (full / "model.safetensors").read_bytes()
    (resumed / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # cut off
    assert not resume_and_compare(base, full, resumed)


def test_resuming_a_finished_run_is_an_error_and_changes_nothing(full_run, capsys):
    base, full = full_run
    before = (full / "model.safetensors").read_bytes()
    assert main([*base, "--output-dir", str(full), "--resume", *sets(RESUMABLE)]) == 2
    assert "is finished" in capsys.readouterr().err
    assert (full / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--method", "dft"], "method 'infosft' recorded, 'dft' now"),
        (["--p-bar", "0.8"], "p_bar 0.93 recorded, 0.8 now"),
        (["--data", "other.jsonl"], "data"),
        (["--set", "learning_rate=0.5"], "learning_rate"),
        (["--set", "loss_schedule=[{method: nll, until_step: 2}, {method: dft}]"], "loss_sched"),
        (["--lora"], "lora"),
    ],
    ids=["method", "p_bar", "data", "learning-rate", "schedule", "lora"],
)
def test_resume_refuses_settings_that_differ_from_the_recorded_run(
    full_run, tmp_path, capsys, flags, named
):
    base, full = full_run
    resumed = interrupted_copy(full, tmp_path / "resumed", ["checkpoint-3"], metrics=True)
    argv = [*base, "--output-dir", str(resumed), "--resume", *sets(RESUMABLE), *flags]
    err = error_of(argv, capsys)
    assert "other settings" in err and named in err
    assert (resumed / "checkpoint-3").is_dir() and not (resumed / "model.safetensors").exists()


def test_resume_may_change_logging_and_saving(full_run, tmp_path):
    base, full = full_run
    resumed = interrupted_copy(full, tmp_path / "resumed", ["checkpoint-3"])
    changed = {**RESUMABLE, "logging_steps": 2, "save_steps": 2}
    assert main([*base, "--output-dir", str(resumed), "--resume", *sets(changed)]) == 0
    assert (resumed / "_finished.json").is_file()


def test_resume_refuses_checkpoints_without_the_run_config_of_their_run(full_run, tmp_path, capsys):
    base, full = full_run
    resumed = interrupted_copy(full, tmp_path / "resumed", ["checkpoint-3"])
    (resumed / "run_config.json").unlink()
    argv = [*base, "--output-dir", str(resumed), "--resume", *sets(RESUMABLE)]
    assert "no readable run_config.json" in error_of(argv, capsys)


def test_a_fresh_run_starts_over_what_an_interrupted_run_left_beside_its_checkpoints(
    full_run, tiny_model_dir, data_file, tmp_path
):
    """TRL writes the model card at every checkpoint; once the user deletes the checkpoints of
    an interrupted run, its card, config and log do not block a fresh start there."""
    _, full = full_run
    left = tmp_path / "left"
    left.mkdir()
    for name in ("README.md", "run_config.json", "metrics.jsonl"):
        shutil.copy(full / name, left / name)
    argv = ["train", "--model", str(tiny_model_dir), "--data", data_file]
    assert main([*argv, "--output-dir", str(left), *sets({**TINY, "max_steps": 1})]) == 0
    assert sorted(train_losses(read_metrics(left / "metrics.jsonl"))) == [1]


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


# --- bad input: one line naming what is wrong, nothing overwritten -------------------------


def error_of(argv, capsys):
    """The one-line error of a command that must fail with exit code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("infosft train: error:") and "\n" not in err
    return err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rat: 0.1\n", "'learning_rat' (did you mean learning_rate"),
        ("max_steps: ten\n", "max_steps must be a whole number, got 'ten'"),
        ("max_steps: 1.5\n", "max_steps must be a whole number, got 1.5"),
        ("learning_rate: fast\n", "learning_rate must be a number (finite), got 'fast'"),
        ("model: [a, b]\n", "model must be one name"),
        ("lora_rank: 8\n", "lora: {rank: 32"),
        ("loss_type: dft\n", "method='dft'"),
        ("lora: {rank: 0}\n", "lora.rank must be a positive whole number, got 0"),
        ("a: [1, 2\n", "r.yaml:2: not valid YAML"),
    ],
)
def test_bad_config_values_are_one_line_errors_naming_the_key(tmp_path, capsys, text, message):
    (tmp_path / "r.yaml").write_text("data: d.jsonl\n" + text)
    argv = ["train", "--config", str(tmp_path / "r.yaml"), "--output-dir", str(tmp_path / "o")]
    assert message in error_of(argv, capsys)


def test_a_config_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys):
    (tmp_path / "r.yaml").write_bytes(b"data: d.jsonl\nmodel: caf\xe9\n")
    argv = ["train", "--config", str(tmp_path / "r.yaml"), "--output-dir", str(tmp_path / "o")]
    assert "r.yaml:2: not UTF-8" in error_of(argv, capsys)


@pytest.mark.parametrize("p_bar", ["0", "1", "1.5", "-0.2"])
def test_p_bar_outside_the_unit_interval_is_an_error(tmp_path, capsys, p_bar):
    argv = ["train", "--data", "d.jsonl", "--output-dir", str(tmp_path), "--p-bar", p_bar]
    assert "p_bar must lie strictly between 0 and 1" in error_of(argv, capsys)


def test_an_empty_output_dir_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "no output directory" in error_of(
        ["train", "--data", "d.jsonl", "--output-dir", ""], capsys
    )


PUSHED_RUN_CONFIG = json.dumps({"args": {"push_to_hub": True}})


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"config.json": "{}", "_finished.json": "{}"}, "final model of an earlier run"),
        ({"README.md": "mine", "config.json": "{}"}, "holds a model"),
        ({"README.md": "mine", "src": None}, "not an infosft run directory"),
        ({"README.md": "mine", "run_config.json": "{}"}, "not an infosft run directory"),
        ({"checkpoint-3": None}, "pass --resume"),
        ({"adapter": None, "run_config.json": "{}"}, "holds a model"),
        # A clone of a pushed run: its run_config.json, no checkpoints and no marker.
        (
            {"run_config.json": PUSHED_RUN_CONFIG, "config.json": "{}", "model.safetensors": "w"},
            "holds a model",
        ),
        ({"weights.pt": "w"}, "holds a model (weights.pt)"),
        ({"model-00001-of-00002.safetensors": "w"}, "holds a model"),
        ({"best.ckpt": "w", "notes.txt": "mine"}, "holds a model (best.ckpt)"),
        ({"tokenizer.json": "{}"}, "holds a model (tokenizer.json)"),
        ({"checkpoint-final.bin": "w"}, "holds a model"),
    ],
    ids=[
        "finished-run",
        "a-model",
        "foreign-files",
        "a-readme",
        "checkpoints",
        "lora-adapter",
        "clone-of-a-pushed-run",
        "torch-weights",
        "sharded-safetensors",
        "lightning-checkpoint",
        "a-tokenizer",
        "checkpoint-file",
    ],
)
def test_a_fresh_run_refuses_a_directory_it_would_clobber(tmp_path, capsys, layout, message):
    for name, text in layout.items():
        if text is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text(text)
    argv = ["train", "--data", "d.jsonl", "--output-dir", str(tmp_path)]
    assert message in error_of(argv, capsys)
    for name, text in layout.items():
        assert text is None or (tmp_path / name).read_text() == text


def test_an_output_dir_that_is_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    argv = ["train", "--data", "d.jsonl", "--output-dir", str(tmp_path / "f")]
    assert "is a file" in error_of(argv, capsys)


def test_an_output_dir_that_is_a_dangling_symlink_is_an_error(tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    argv = ["train", "--data", "d.jsonl", "--output-dir", str(tmp_path / "link")]
    assert "is a symbolic link to" in error_of(argv, capsys)


def test_an_output_dir_under_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    argv = ["train", "--data", "d.jsonl", "--output-dir", str(tmp_path / "f" / "run")]
    assert "cannot be created" in error_of(argv, capsys)
    assert (tmp_path / "f").read_text() == "x"


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    argv = ["train", "--data", "d.jsonl", "--output-dir", str(tmp_path), "--resume"]
    assert "nothing to resume" in error_of(argv, capsys)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "ok"}\n{"text": \n', ":2: malformed JSON"),
        (b'{"text": "\xff"}\n', ":1: not UTF-8"),
    ],
    ids=["malformed", "not-utf8"],
)
def test_bad_data_is_a_one_line_error_naming_file_and_line(
    tiny_model_dir, tmp_path, capsys, content, message
):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(path)]
    assert f"{path}{message}" in error_of([*argv, "--output-dir", str(tmp_path / "o")], capsys)


@pytest.mark.parametrize(
    ("ids", "message"),
    [([1, 10**6], "= 1000000 is outside the model's vocabulary"), ([1, -3], "negative token id")],
    ids=["beyond-the-vocabulary", "negative"],
)
def test_tokenized_ids_the_model_cannot_embed_are_refused_before_it_loads(
    tiny_model_dir, tmp_path, capsys, monkeypatch, ids, message
):
    import infosft.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(infosft.models, "load_model_and_tokenizer", no_loading)
    path = write_jsonl(tmp_path / "tok.jsonl", [{"input_ids": [1, 2]}, {"input_ids": ids}])
    argv = ["train", "--model", str(tiny_model_dir), "--data", path]
    err = error_of([*argv, "--output-dir", str(tmp_path / "o")], capsys)
    assert f"{path}:2: invalid tokenized example: 'input_ids'[1] " in err and message in err


@pytest.mark.parametrize(
    ("setting", "absent", "message"),
    [
        (
            "optim=adamw_bnb_8bit",
            "bitsandbytes",
            "optim: adamw_bnb_8bit needs the package bitsandbytes",
        ),
        ("optim=paged_lion_8bit", "bitsandbytes", "pip install bitsandbytes"),
        ("optim=galore_adamw", "galore_torch", "pip install galore-torch"),
        ("report_to=wandb", "wandb", "report_to: wandb needs the package wandb"),
        ("report_to=[tensorboard, mlflow]", "mlflow", "pip install mlflow"),
        ("report_to=comet_ml", "comet_ml", "pip install comet-ml"),
        (
            "model_init_kwargs={attn_implementation: flash_attention_2}",
            "flash_attn",
            "attn_implementation: flash_attention_2 needs the package flash-attn",
        ),
        ("model_init_kwargs={load_in_4bit: true}", "bitsandbytes", "pip install bitsandbytes"),
        ("deepspeed=ds.json", "deepspeed", "deepspeed: ds.json needs the package deepspeed"),
        ("use_liger_kernel=true", "liger_kernel", "pip install liger-kernel"),
    ],
)
def test_a_setting_that_needs_a_missing_package_names_it_before_data_or_model_load(
    tmp_path, capsys, monkeypatch, setting, absent, message
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == absent else find_spec(name, *a),
    )
    argv = ["train", "--data", "missing.jsonl", "--output-dir", str(tmp_path / "o")]
    assert message in error_of([*argv, "--set", setting], capsys)


def test_a_setting_whose_package_is_installed_passes(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: find_spec("json" if name == "wandb" else name, *a),
    )
    spec = resolved(["--data", "d.jsonl", "--output-dir", "o", "--set", "report_to=wandb"])
    assert spec.args.report_to == ["wandb"]


@pytest.mark.parametrize(
    ("length", "schedule", "message"),
    [
        ("max_steps=4", "{method: nll, until_step: 4}", "switches at step 4, but the run trains 4"),
        ("num_train_epochs=1", "{method: nll, until_epoch: 1}", "at epoch 1, but the run trains 1"),
    ],
    ids=["steps", "epochs"],
)
def test_a_loss_schedule_switch_at_or_after_the_end_is_refused_before_data_is_read(
    tmp_path, capsys, length, schedule, message
):
    argv = ["train", "--data", "missing.jsonl", "--output-dir", str(tmp_path / "o")]
    argv += ["--set", length, "--set", f"loss_schedule=[{schedule}, {{method: dft}}]"]
    assert message in error_of(argv, capsys)


def test_a_switch_in_epochs_beyond_a_run_in_steps_is_refused_before_training(
    tiny_model_dir, data_file, tmp_path, capsys
):
    # 16 rows in batches of 4: 4 optimizer steps per epoch, so 2 steps are half an epoch.
    out = tmp_path / "o"
    argv = ["train", "--model", str(tiny_model_dir), "--data", data_file, "--output-dir", str(out)]
    argv += sets({**TINY, "max_steps": 2})
    argv += ["--set", "loss_schedule=[{method: nll, until_epoch: 0.5}, {method: dft}]"]
    assert main(argv) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "switches at epoch 0.5, but the run trains 0.5 epoch(s)" in last_line
    assert not (out / "run_config.json").exists()


@pytest.mark.parametrize(
    ("broken", "message"),
    [("config.json", "not a valid JSON"), ("model.safetensors", "no file named model.safetensors")],
)
def test_a_broken_model_directory_is_a_one_line_error(
    tiny_model_dir, data_file, tmp_path, capsys, broken, message
):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    if broken == "config.json":
        (model_dir / broken).write_text("{not json")
    else:
        (model_dir / broken).unlink()
    argv = ["train", "--model", str(model_dir), "--data", data_file]
    err = error_of([*argv, "--output-dir", str(tmp_path / "o")], capsys)
    assert "could not be loaded" in err and message in err


def test_a_model_directory_without_a_tokenizer_says_so(tiny_model_dir, data_file, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_model_dir / name, model_dir / name)
    argv = ["train", "--model", str(model_dir), "--data", data_file]
    err = error_of([*argv, "--output-dir", str(tmp_path / "o")], capsys)
    assert "no tokenizer" in err and "sentencepiece" not in err


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
