"""One tuned model measured against its base by ``infosft eval --base-model`` and by a grid cell
of ``infosft compare`` reports the same keys with the same values: both paths go through
:func:`infosft.evaluation.forgetting.compare_to_base`, with the same built-in general prompts
and texts."""

import json

import pytest
import torch
import yaml

from infosft.cli import main
from infosft.evaluation import generate, load_task
from infosft.evaluation.forgetting import KLReference
from infosft.experiments.grid import read_grid
from infosft.experiments.measure import build_suite, measure_base, measure_tuned
from infosft.models import load_model_and_tokenizer

PAIRS = [(2, 3), (1, 1), (4, 5), (7, 2), (6, 6), (3, 8)]
ITEMS = [{"id": str(i), "q": f"{a} + {b}"} for i, (a, b) in enumerate(PAIRS)]
FORGETTING_KEYS = {
    "accuracy",
    "accuracy_base",
    "accuracy_delta",
    "retention",
    "retention_ci_low",
    "retention_ci_high",
    "base_correct",
    "kl_base_tuned",
    "kl_tokens",
    "general_nll",
    "general_nll_base",
    "general_nll_delta",
    "general_tokens",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_model_dir):
    """A task whose answers are the base model's own greedy answers (so the base model gets
    every item right and retention is defined), a tuned model (the base with its weights
    nudged, saved) and a grid that trains on anything and measures that task as both its new
    task and its prior capability, with the built-in general prompts and texts."""
    tmp = tmp_path_factory.mktemp("parity")
    task_yaml = {
        "data": "items.jsonl",
        "prompt": "Q: {q}?\nA:",
        "answer_field": "answer",
        "scorer": "exact",
        "generation": {"max_new_tokens": 3},
    }
    (tmp / "task.yaml").write_text(yaml.safe_dump(task_yaml))
    write_jsonl(tmp / "items.jsonl", [{**item, "answer": "?"} for item in ITEMS])
    base, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    task = load_task(str(tmp / "task.yaml"))
    answers = generate(base, tokenizer, [task.prompt(i) for i in task.items], task.generation)
    pairs = zip(ITEMS, answers, strict=True)
    rows = [{**item, "answer": answer[0].strip().split("\n")[0]} for item, answer in pairs]
    write_jsonl(tmp / "items.jsonl", rows)

    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for weight in base.parameters():
            weight.add_(0.1 * weight.std() * torch.randn(weight.shape, generator=generator))
    base.save_pretrained(tmp / "tuned")
    tokenizer.save_pretrained(tmp / "tuned")

    write_jsonl(tmp / "train.jsonl", [{"prompt": "Q: 1 + 2?\nA:", "completion": " 3"}])
    grid = {
        "model": str(tiny_model_dir),
        "tasks": [{"name": "sums", "data": "train.jsonl", "eval": "task.yaml"}],
        "prior_tasks": ["task.yaml"],
        "grid": {"methods": ["nll"], "learning_rates": [1e-3], "seeds": [0]},
    }
    (tmp / "grid.yaml").write_text(yaml.safe_dump(grid))
    return tmp


@pytest.fixture(scope="module")
def eval_forgetting(setting, tiny_model_dir):
    out = setting / "eval.json"
    argv = ["eval", "--task", str(setting / "task.yaml"), "--model", str(setting / "tuned")]
    argv += ["--base-model", str(tiny_model_dir), "--output", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    return json.loads(out.read_text())["forgetting"]


@pytest.fixture(scope="module")
def grid_cell(setting, tiny_model_dir):
    """What the grid engine measures for a cell whose fine-tune produced the tuned model."""
    suite = build_suite(read_grid(setting / "grid.yaml"))
    base_model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    tuned_model, _ = load_model_and_tokenizer(str(setting / "tuned"), device="cpu")
    base = measure_base(base_model, tokenizer, suite)
    reference = KLReference(base_model, tokenizer, suite.general_prompts, base["general_samples"])
    return measure_tuned(tuned_model, tokenizer, suite, "sums", base, reference)


def test_eval_reports_the_forgetting_keys_of_a_grid_cell(eval_forgetting, grid_cell):
    assert set(eval_forgetting) == FORGETTING_KEYS
    assert set(grid_cell) >= FORGETTING_KEYS


def test_eval_and_a_grid_cell_report_the_same_values_for_the_same_model(eval_forgetting, grid_cell):
    assert eval_forgetting == {key: grid_cell[key] for key in eval_forgetting}


def test_the_comparison_is_not_degenerate(eval_forgetting):
    # The base answers every item (its own answers): retention is defined on all of them.
    assert eval_forgetting["base_correct"] == len(ITEMS)
    assert eval_forgetting["accuracy_base"] == 1.0
    assert eval_forgetting["kl_base_tuned"] > 0
    assert eval_forgetting["general_nll_delta"] != 0
