"""When a grid run may reuse a finished cell or the base measurement: only while everything that
defines it is unchanged. Each test changes one input of a grid and checks which parts of the
fingerprints (a digest per part, compared by `changed_parts`) change; no model is loaded."""

import dataclasses
import json

import pytest
import yaml

from infosft.evaluation.tasks import Task
from infosft.experiments.grid import read_grid
from infosft.experiments.grid_runner import Plan, changed_parts
from infosft.experiments.measure import task_content

ITEMS = [
    {"id": "a", "q": "def f():", "test": "assert f() == 5", "other": "5"},
    {"id": "b", "q": "def g():", "test": "assert g() == 2", "other": "2"},
]
TASK = {
    "data": "new.jsonl",
    "prompt": "Complete: {q}\n",
    "answer_field": "test",
    "scorer": "code",
    "include_prompt_in_program": False,
    "generation": {"max_new_tokens": 2},
}
EVAL_TASK = "evaluation task new_task of sums"


def write_grid(directory, task=None, items=ITEMS, rows=4, **changes):
    """A grid of one task (``sums``: a data file and the code task ``new_task``) with ``task``
    replacing keys of the task YAML (None values drop a key) and ``changes`` top-level keys."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "model"
    if not model.exists():
        # Written once: the model's identity includes its files' modification times.
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama"}')
    lines = [{"prompt": f"Q: {a} + 3?\nA:", "completion": f" {a + 3}"} for a in range(rows)]
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (directory / "new.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = {k: v for k, v in {**TASK, **(task or {})}.items() if v is not None}
    (directory / "new_task.yaml").write_text(yaml.safe_dump(spec))
    (directory / "prompts.txt").write_text(changes.pop("prompts", "Say hello.\n"))
    (directory / "text.txt").write_text(changes.pop("text", "The capital of France is Paris.\n"))
    grid = {
        "model": "model",
        "tasks": [{"name": "sums", "data": "train.jsonl", "eval": "new_task.yaml"}],
        "prior_tasks": ["probes"],
        "general_prompts": "prompts.txt",
        "heldout_text": "text.txt",
        "grid": {"methods": ["nll"], "learning_rates": [1e-3], "seeds": [0]},
        "training": {"per_device_train_batch_size": 2, "max_length": 64},
        **changes,
    }
    path = directory / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def plan(directory, **changes):
    return Plan(read_grid(write_grid(directory, **changes)))


def changes_between(before, after):
    """The fingerprint parts that differ: of the grid's first cell, and of the base."""
    cell = before.spec.cells()[0]
    return (
        changed_parts(before.cell_fingerprint(cell), after.cell_fingerprint(cell)),
        changed_parts(before.base_fingerprint(), after.base_fingerprint()),
    )


def test_the_same_grid_read_twice_has_the_same_fingerprints(tmp_path):
    assert changes_between(plan(tmp_path), plan(tmp_path)) == ([], [])


@pytest.mark.parametrize(
    "task",
    [
        {"include_prompt_in_program": True},
        {"scorer": "exact"},
        {"answer_field": "other"},
        {"prompt": "Write: {q}\n"},
        {"prompt": None, "messages": [{"role": "user", "content": "{q}"}]},
        {"id_field": "other"},
        {"name": "renamed"},
        {"generation": {"max_new_tokens": 3}},
        {"generation": {"max_new_tokens": 2, "stop": ["\n"]}},
        {"generation": {"max_new_tokens": 2, "temperature": 0.7, "n": 2}},
        {"generation": {"max_new_tokens": 2, "batch_size": 1}},
    ],
)
def test_a_changed_evaluation_task_field_makes_its_cells_and_the_base_stale(tmp_path, task):
    cell, base = changes_between(plan(tmp_path), plan(tmp_path, task=task))
    renamed = [f"evaluation task {task.get('name', 'new_task')} of sums"]
    assert set(cell) == set(base) == {EVAL_TASK, *renamed}


def test_changed_evaluation_data_makes_its_cells_and_the_base_stale(tmp_path):
    items = [{**ITEMS[0], "test": "assert f() == 6"}, ITEMS[1]]
    cell, base = changes_between(plan(tmp_path), plan(tmp_path, items=items))
    assert cell == base == [EVAL_TASK]


def test_a_field_added_to_evaluation_tasks_later_is_fingerprinted_too():
    @dataclasses.dataclass
    class TaskWithTolerance(Task):
        tolerance: float = 0.0

    def task(tolerance):
        return TaskWithTolerance(
            name="t", items=ITEMS, prompt=lambda item: item["q"], scorer="math", tolerance=tolerance
        )

    assert task_content(task(0.0)) == task_content(task(0.0))
    assert task_content(task(0.0)) != task_content(task(0.1))


@pytest.mark.parametrize(
    ("changes", "part"),
    [
        ({"model_init_kwargs": {"dtype": "bfloat16"}}, "model_init_kwargs"),
        ({"eval_limit": 1}, EVAL_TASK),
        ({"eval_batch_size": 1}, EVAL_TASK),
        ({"prompts": "Say goodbye.\n"}, "general_prompts"),
        ({"text": "The capital of Italy is Rome.\n"}, "heldout_text"),
        ({"prior_tasks": ["probes", "new_task.yaml"]}, "prior task new_task"),
        ({"lm_eval": {"num_fewshot": 2}}, "lm_eval"),
    ],
)
def test_a_changed_measurement_setting_makes_the_cells_and_the_base_stale(tmp_path, changes, part):
    cell, base = changes_between(plan(tmp_path), plan(tmp_path, **changes))
    assert part in cell and part in base


@pytest.mark.parametrize(
    "changes",
    [{"rows": 5}, {"training": {"per_device_train_batch_size": 2, "max_length": 32}}],
)
def test_changed_training_rows_make_the_cells_and_the_base_stale(tmp_path, changes):
    # The base records q under the base model of each task's first training rows.
    cell, base = changes_between(plan(tmp_path), plan(tmp_path, **changes))
    assert {"training data", "training settings"} & set(cell)
    assert base == ["training rows of sums"]


def test_a_changed_model_makes_the_cells_and_the_base_stale(tmp_path):
    before = plan(tmp_path)
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama", "vocab_size": 9}')
    cell, base = changes_between(before, plan(tmp_path))
    assert cell == base == ["model"]


def test_a_task_description_is_a_label_and_keeps_the_cells(tmp_path):
    tasks = [{"name": "sums", "data": "train.jsonl", "eval": "new_task.yaml", "about": "easy"}]
    assert changes_between(plan(tmp_path), plan(tmp_path, tasks=tasks)) == ([], [])


def test_a_finished_cell_fits_only_the_cell_it_was_made_for(tmp_path):
    # Two methods with the same settings train alike, but are two cells of the fronts.
    grid = {"methods": ["nll", {"name": "x-nll", "method": "nll"}], "learning_rates": [1e-3]}
    both = plan(tmp_path, grid=grid)
    nll, x_nll = both.spec.cells()
    assert changed_parts(both.cell_fingerprint(nll), both.cell_fingerprint(x_nll)) == ["cell"]
