"""Regimes a grid task can be turned into: noisy demonstrations and the model's own answers."""

import json

import pytest

from infosft.experiments import grid_runner
from infosft.experiments.demonstrations import split_row
from infosft.experiments.grid import read_grid
from test_compare import write_grid

SUMS = {"name": "sums", "data": "train.jsonl", "eval": "new_task.yaml"}


def plan_of(tmp_path, tiny_model_dir, task, seeds=(0,)):
    grid = {"methods": ["nll"], "learning_rates": [1e-3], "seeds": list(seeds)}
    path = write_grid(tmp_path, tiny_model_dir, tasks=[task], grid=grid)
    return grid_runner.Plan(read_grid(path))


def answers(plan, seed=0):
    cell = next(c for c in plan.spec.cells() if c.seed == seed)
    return [split_row(row)[1] for row in plan.data(cell.task, cell.seed).to_list()]


def test_noise_corrupts_the_share_of_answers_each_seed_its_own(tmp_path, tiny_model_dir):
    clean = answers(plan_of(tmp_path / "a", tiny_model_dir, SUMS))
    noisy = plan_of(tmp_path / "b", tiny_model_dir, {**SUMS, "noise": {"share": 0.5}}, seeds=(0, 1))
    for seed in (0, 1):
        changed = [a != b for a, b in zip(clean, answers(noisy, seed), strict=True)]
        assert sum(changed) == 2
    assert answers(noisy, 0) != answers(noisy, 1)


def test_the_noise_share_is_part_of_a_cells_training_fingerprint(tmp_path, tiny_model_dir):
    prints = []
    for share in (0.25, 0.5):
        plan = plan_of(tmp_path / str(share), tiny_model_dir, {**SUMS, "noise": {"share": share}})
        prints.append(plan.training_fingerprint(plan.spec.cells()[0])["training data"])
    assert prints[0] != prints[1]


def own_answers(answer):
    """A stand-in for generate(): every prompt gets the samples [" wrong", answer]."""

    def generate(model, tokenizer, prompts, settings, progress, sample_keys):
        assert settings.n == 2 and settings.temperature == 0.5 and len(sample_keys) == len(prompts)
        return [[" wrong", answer] for _ in prompts]

    return generate


NEAR = {**SUMS, "near_policy": {"samples": 2, "temperature": 0.5, "scorer": "exact"}}


def test_near_policy_trains_on_the_models_accepted_answers_and_keeps_them(
    tmp_path, tiny_model_dir, monkeypatch
):
    import infosft.evaluation

    plan = plan_of(tmp_path, tiny_model_dir, NEAR)
    # Only the row whose demonstration is " 5" (2 + 3) agrees with a sample of " 5".
    monkeypatch.setattr(infosft.evaluation, "generate", own_answers(" 5"))
    plan.make_own_answers(None, None, tmp_path / "demonstrations", lambda line: None)
    assert answers(plan) == [" 5"]
    stored = json.loads((tmp_path / "demonstrations" / "sums,seed0.json").read_text())
    assert stored["counts"] == {"rows": 4, "kept": 1, "samples": 8, "accepted": 1}

    again = plan_of(tmp_path / "again", tiny_model_dir, NEAR)
    monkeypatch.setattr(infosft.evaluation, "generate", None)  # reused, not sampled again
    again.make_own_answers(None, None, tmp_path / "demonstrations", lambda line: None)
    assert answers(again) == [" 5"]


def test_a_shipped_near_policy_set_stands_in_only_for_its_own_recipe(
    tmp_path, tiny_model_dir, monkeypatch
):
    import infosft.evaluation

    shipped = tmp_path / "shipped"
    monkeypatch.setattr(grid_runner, "SHIPPED_DEMONSTRATIONS", shipped)
    plan = plan_of(tmp_path / "made", tiny_model_dir, NEAR)
    monkeypatch.setattr(infosft.evaluation, "generate", own_answers(" 5"))
    plan.make_own_answers(None, None, shipped, lambda line: None)
    made = shipped / "sums,seed0.json"
    made.rename(shipped / f"sums,seed0,{json.loads(made.read_text())['recipe']}.json")

    monkeypatch.setattr(infosft.evaluation, "generate", None)  # used, not sampled again
    same = plan_of(tmp_path / "same", tiny_model_dir, NEAR)
    lines = []
    same.make_own_answers(None, None, tmp_path / "same" / "demonstrations", lines.append)
    assert answers(same) == [" 5"] and "shipped" in lines[0]
    assert (tmp_path / "same" / "demonstrations" / "sums,seed0.json").is_file()

    # Another recipe (more samples per prompt) samples its own.
    more = {**NEAR["near_policy"], "samples": 3}
    other = plan_of(tmp_path / "other", tiny_model_dir, {**NEAR, "near_policy": more})
    with pytest.raises(TypeError):
        other.make_own_answers(None, None, tmp_path / "other" / "demonstrations", print)


def test_near_policy_with_no_accepted_answer_says_what_to_change(
    tmp_path, tiny_model_dir, monkeypatch
):
    import infosft.evaluation

    plan = plan_of(tmp_path, tiny_model_dir, NEAR)
    monkeypatch.setattr(infosft.evaluation, "generate", own_answers(" nothing"))
    with pytest.raises(ValueError, match=r"none of the model's 8 samples .* near_policy.samples"):
        plan.make_own_answers(None, None, tmp_path / "demonstrations", lambda line: None)


def test_a_built_in_task_can_be_drawn_twice_under_two_names(tmp_path, tiny_model_dir):
    tasks = [
        {"name": "word_problems", "n_train": 8, "n_test": 4},
        {
            "name": "noisy-words",
            "generator": "word_problems",
            "n_train": 8,
            "n_test": 4,
            "noise": {"share": 0.25},
        },
    ]
    grid = {"methods": ["nll"], "learning_rates": [1e-3], "seeds": [0]}
    plan = grid_runner.Plan(read_grid(write_grid(tmp_path, tiny_model_dir, tasks=tasks, grid=grid)))
    clean, noisy = (
        [split_row(r)[1] for r in plan.data(c.task, c.seed).to_list()] for c in plan.spec.cells()
    )
    assert sum(a != b for a, b in zip(clean, noisy, strict=True)) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"noise": {"share": 0}},
            r"noise.share must be a finite number in \(0, 1\], got 0 \(the share of answers",
        ),
        ({"noise": {"share": 0.2, "kind": "typo"}}, r"noise.kind must be one of"),
        ({"noise": {"share": 0.2, "rate": 1}}, r"noise"),
        ({"noise": 0.25}, r"noise must be a mapping"),
        ({"near_policy": {}}, r"near_policy.scorer must be one of .*\(how a sample is checked"),
        (
            {"near_policy": {"scorer": "math", "temperature": 0}},
            r"temperature must be a finite number in \(0, 5\]",
        ),
        ({"near_policy": {"scorer": "math", "samples": 0}}, r"near_policy.samples must be"),
        (
            {"noise": {"share": 0.2}, "near_policy": {"scorer": "math"}},
            r"sets both noise and near_policy",
        ),
    ],
)
def test_bad_regime_options_are_refused_in_one_line(tmp_path, tiny_model_dir, change, message):
    path = write_grid(tmp_path, tiny_model_dir, tasks=[{**SUMS, **change}])
    with pytest.raises(ValueError, match=message):
        read_grid(path)


def test_an_unknown_generator_is_named(tmp_path, tiny_model_dir):
    path = write_grid(tmp_path, tiny_model_dir, tasks=[{"name": "x", "generator": "nope"}])
    with pytest.raises(ValueError, match=r"tasks\[0\].generator: 'nope' is not a built-in task"):
        read_grid(path)


def test_a_task_with_its_own_epochs_runs_those_lengths_and_the_others_the_grids(
    tmp_path, tiny_model_dir
):
    tasks = [SUMS, {**SUMS, "name": "few", "epochs": [1, 4, 16]}]
    grid = {"methods": ["nll"], "learning_rates": [1e-3], "epochs": [2], "seeds": [0]}
    spec = read_grid(write_grid(tmp_path, tiny_model_dir, tasks=tasks, grid=grid))
    lengths = {(c.task, c.epochs) for c in spec.cells()}
    assert lengths == {("sums", 2.0), ("few", 1.0), ("few", 4.0), ("few", 16.0)}
    assert spec.size().startswith("4 = 4 (task, length) pair(s) of 2 task(s) x 1 method(s)")


def test_a_tasks_own_epochs_leave_the_cells_of_the_grids_lengths_as_they_were(
    tmp_path, tiny_model_dir
):
    """A cell of the same length is the same cell, with or without the task's own list."""
    grid = {"methods": ["nll"], "learning_rates": [1e-3], "epochs": [1], "seeds": [0]}
    prints = []
    for task in (SUMS, {**SUMS, "epochs": [1, 4]}):
        path = write_grid(tmp_path / str(len(task)), tiny_model_dir, tasks=[task], grid=grid)
        plan = grid_runner.Plan(read_grid(path))
        cell = next(c for c in plan.spec.cells() if c.epochs == 1)
        prints.append(plan.cell_fingerprint(cell))
    assert prints[0] == prints[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": [1, 0]}, r"tasks\[0\]\.epochs\[1\] must be a positive finite number of epochs"),
        ({"epochs": [4, 4.0]}, r"tasks\[0\].epochs lists 4 twice"),
        ({"epochs": []}, r"tasks\[0\].epochs must list at least one"),
    ],
)
def test_bad_task_epochs_are_refused_in_one_line(tmp_path, tiny_model_dir, change, message):
    path = write_grid(tmp_path, tiny_model_dir, tasks=[{**SUMS, **change}])
    with pytest.raises(ValueError, match=message):
        read_grid(path)


def test_task_epochs_and_max_steps_together_are_refused(tmp_path, tiny_model_dir):
    path = write_grid(
        tmp_path,
        tiny_model_dir,
        tasks=[{**SUMS, "epochs": [2]}],
        grid={"methods": ["nll"], "learning_rates": [1e-3]},
        training={"per_device_train_batch_size": 2, "max_length": 64, "max_steps": 3},
    )
    with pytest.raises(ValueError, match=r"set their own epochs; keep one"):
        read_grid(path)


def test_the_base_answers_the_held_out_items_two_regimes_share_once(
    tmp_path, tiny_model_dir, monkeypatch
):
    from infosft.experiments import measure
    from infosft.models import load_model_and_tokenizer

    words = {"generator": "word_problems", "n_train": 8, "n_test": 2}
    tasks = [
        {**words, "name": "words"},
        {**words, "name": "words-noisy", "noise": {"share": 0.25}},
        {**words, "name": "words-fewer", "n_test": 1},  # other items: answered on their own
    ]
    plan = grid_runner.Plan(read_grid(write_grid(tmp_path, tiny_model_dir, tasks=tasks)))
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    real, answered = measure.score, []

    def counting(model, tokenizer, source, suite, only=None):
        answered.append(source.name)
        return real(model, tokenizer, source, suite, only)

    monkeypatch.setattr(measure, "score", counting)
    base = measure.measure_base(model, tokenizer, plan.suite)
    assert answered == ["words", "words-fewer", "probes"]
    for task in ("words", "words-noisy", "words-fewer"):
        alone = real(model, tokenizer, plan.suite.new_tasks[task][0], plan.suite)[0]
        assert base["new_tasks"][task]["correct"] == alone
        assert all(key.startswith(f"{task}/") for key in alone)
