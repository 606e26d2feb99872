"""One bad sample fails alone: content that cannot be scored (a completion that is not text,
that UTF-8 cannot encode, too large, a task whose test code breaks the program builder) gets
status "rejected" and its reason, the rest are scored, and the summary counts each status.
Only a sandbox that cannot start stops the evaluation, and says so."""

import json
from pathlib import Path

import pytest

from infosft.cli import main
from infosft.evaluation import runner, sandbox
from infosft.evaluation.runner import score_samples, summarize_records
from infosft.evaluation.sandbox import DEFAULT_MAX_FILE_BYTES, SandboxError
from infosft.evaluation.tasks import Task

SOLUTION = "def add(a, b):\n    return a + b\n"


def add_task(test: object = "assert add(2, 3) == 5\n") -> Task:
    """A code task with one item: the program is the completion followed by the item's test."""
    return Task(
        name="add",
        items=[{"id": "add", "test": test}],
        prompt=lambda item: "",
        scorer="code",
        program=lambda item, completion: completion + "\n" + item["test"],
    )


def score(task: Task, completions: list) -> list[dict]:
    samples = [{"task_id": "add", "completion": c} for c in completions]
    return score_samples(task, samples, progress=False)


UNSCORABLE = {
    "a lone surrogate (valid JSON)": ('x = "\ud800"', "cannot be encoded as UTF-8: '\\ud800'"),
    "a lone low surrogate": ("def add(a, b):\n    return a + b  # \udc80\n", "UTF-8"),
    "70 MiB": ("#" * (70 * 2**20), f"larger than the {DEFAULT_MAX_FILE_BYTES} bytes"),
    "a number": (123, "the completion is not text but int"),
    "null": (None, "the completion is not text but NoneType"),
    "a list": (["def add(a, b): ..."], "the completion is not text but list"),
}


@pytest.mark.parametrize("case", UNSCORABLE, ids=list(UNSCORABLE))
def test_an_unscorable_completion_fails_alone_with_its_reason(case):
    completion, reason = UNSCORABLE[case]
    bad, good = score(add_task(), [completion, SOLUTION])
    assert (bad["passed"], bad["status"], bad["returncode"]) == (False, "rejected", None)
    assert reason in bad["detail"]
    assert (good["passed"], good["status"]) == (True, "passed")


def test_test_code_the_builder_cannot_join_rejects_the_sample():
    (record,) = score(add_task(test=None), [SOLUTION])
    assert (record["passed"], record["status"]) == (False, "rejected")
    assert record["detail"].startswith("its program could not be built: TypeError(")


def test_test_code_that_utf8_cannot_encode_rejects_the_sample():
    (record,) = score(add_task(test="assert add(2, 3) == 5  # \ud800\n"), [SOLUTION])
    assert (record["status"], record["passed"]) == ("rejected", False)
    assert "cannot be encoded as UTF-8" in record["detail"]


def test_a_program_that_prints_without_end_or_not_utf8_fails_alone():
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    not_utf8 = "import os\nos.write(1, b'\\xff\\xfe')\nraise ValueError('bad')\n"
    flooded, garbled, good = score(add_task(), [flood, not_utf8, SOLUTION])
    assert (flooded["status"], garbled["status"], good["status"]) == (
        "output_limit",
        "failed",
        "passed",
    )
    assert "\ufffd\ufffd" in garbled["output"]


def test_the_summary_counts_the_samples_of_each_status():
    completions = [SOLUTION, 'x = "\ud800"', 123, "1 / 0\n", SOLUTION.replace("+", "-")]
    records = score(add_task(), completions)
    metrics = summarize_records(records, greedy=False)
    counts = {key: value for key, value in metrics.items() if key.startswith("num_")}
    assert counts == {
        "num_problems": 1,
        "num_samples": 5,
        "num_failed": 2,
        "num_passed": 1,
        "num_rejected": 2,
    }


def test_a_text_task_rejects_a_completion_that_is_not_text():
    task = Task(
        name="capital",
        items=[{"id": "add", "answer": "Paris"}],
        prompt=lambda item: "",
        scorer="exact",
        reference=lambda item: item["answer"],
    )
    samples = [{"task_id": "add", "completion": c} for c in ({"a": 1}, "Paris")]
    bad, good = score_samples(task, samples, progress=False)
    assert (bad["passed"], bad["status"]) == (False, "rejected")
    assert bad["detail"] == "the completion is not text but dict"
    assert good["passed"] is True


def test_a_sandbox_that_cannot_start_stops_the_run_and_says_so(monkeypatch):
    """Infrastructure: the sandbox worked for the check, then cannot fork for the samples."""
    mode = sandbox.check_sandbox("auto")
    monkeypatch.setattr(runner, "check_sandbox", lambda *args: mode)

    def no_fork(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(sandbox.subprocess, "Popen", no_fork)
    with pytest.raises(SandboxError, match="could not run 2 of 2 programs, so nothing was scored"):
        score(add_task(), [SOLUTION, SOLUTION, 123])


def test_infosft_eval_scores_the_rest_of_a_samples_file(tmp_path, capsys):
    rows = [
        {"task_id": "HumanEval/0", "completion": 'x = "\ud800"'},
        {"task_id": "HumanEval/0", "completion": 42},
        {"task_id": "HumanEval/0", "completion": "    return False\n"},
    ]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out.json"
    code = main(["eval", "--task", "humaneval", "--samples", str(samples), "--output", str(out)])
    assert code == 0
    results = json.loads(Path(out).read_text())
    assert [s["status"] for s in results["samples"]] == ["rejected", "rejected", "failed"]
    assert results["samples"][0]["completion"] == 'x = "\ud800"'
    assert (results["metrics"]["num_rejected"], results["metrics"]["num_failed"]) == (2, 1)
    assert "num_rejected" in capsys.readouterr().out
