"""Grid specs: the whole grid is checked before anything runs, and paths are relative to it."""

import math
import os

import pytest
import yaml

from infosft.experiments.fronts import exact_number
from infosft.experiments.grid import Cell, demo_spec_path, read_grid
from infosft.experiments.summary import setting_label

SWITCH_AT_1 = [{"method": "nll", "until_epoch": 1}]


def write_grid(tmp_path, **changes):
    """A valid grid over a data file and a task YAML next to it; ``changes`` replace or add
    top-level keys (a ``grid`` mapping is merged key by key)."""
    (tmp_path / "train.jsonl").write_text('{"prompt": "Q: 2 + 3?", "completion": " 5"}\n')
    (tmp_path / "new.jsonl").write_text('{"id": "a", "q": "2 + 3", "answer": "5"}\n')
    (tmp_path / "new_task.yaml").write_text(
        "data: new.jsonl\nprompt: 'Q: {q}?'\nanswer_field: answer\nscorer: exact\n"
    )
    grid = {"methods": ["nll", "infosft"], "learning_rates": [1e-4, 1e-3], "seeds": [0]}
    grid.update(changes.pop("grid", {}))
    values = {
        "tasks": [{"name": "mine", "data": "train.jsonl", "eval": "new_task.yaml"}],
        "grid": grid,
        "training": {"per_device_train_batch_size": 2},
        **changes,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_valid_grid_has_a_cell_per_task_method_rate_and_seed(tmp_path):
    spec = read_grid(write_grid(tmp_path, grid={"seeds": [0, 1]}))
    cells = spec.cells()
    assert len(cells) == len({c.name for c in cells}) == 2 * 2 * 2
    assert {(c.variant, c.learning_rate, c.seed) for c in cells} == {
        (m, lr, s) for m in ("nll", "infosft") for lr in (1e-4, 1e-3) for s in (0, 1)
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"learning_rate": 1e-4}, r"unknown key.*'learning_rate'"),
        ({"p_bar": 0.9}, r"p_bar and method belong to a method entry"),
        ({"grid": {"methods": ["nll", "sft2"]}}, r"methods\[1\].*sft2"),
        (
            {"grid": {"methods": [{"name": "lo", "method": "infosft", "p_bar": 0.3}]}},
            r"\(lo\).*p_bar",
        ),
        (
            {"grid": {"methods": [{"name": "e", "method": "eaft", "method_args": {"top_k": 0}}]}},
            r"\(e\).*top_k",
        ),
        (
            {"grid": {"methods": [{"name": "k", "method": "nll", "kl_to_base": -1}]}},
            r"grid.methods\[0\] \(k\): kl_to_base must be a finite number >= 0, got -1",
        ),
        ({"grid": {"methods": [{"method": "infosft", "p_bar": 0.9}]}}, r"give it a name"),
        ({"grid": {"methods": ["nll", {"name": "nll", "method": "dft"}]}}, r"names nll twice"),
        (
            {
                "grid": {
                    "methods": [
                        {"name": "s", "loss_schedule": [{"method": "nll"}, {"method": "dft"}]}
                    ]
                }
            },
            r"\(s\).*loss_schedule\[0\]",
        ),
        (
            {
                "grid": {
                    "methods": [{"name": "w", "loss_schedule": [*SWITCH_AT_1, {"method": "dft"}]}]
                }
            },
            r"\(w\).*switches at epoch 1, but cells train 1 epoch",
        ),
        ({"training": {"max_steps": "ten"}}, r"training: max_steps must be a whole number"),
        ({"training": {"learning_rat": 1e-4}}, r"learning_rat.*did you mean learning_rate"),
        ({"training": {"learning_rate": 1e-4}}, r"training.learning_rate.*grid.learning_rates"),
        ({"training": {"max_steps": 5}, "grid": {"epochs": [1]}}, r"max_steps and grid.epochs"),
        ({"training": "fast"}, r"training must be a mapping"),
        ({"grid": {"learning_rates": [math.nan]}}, r"learning_rates.*nan"),
        ({"grid": {"learning_rates": [0.0]}}, r"learning_rates.*positive"),
        ({"grid": {"learning_rates": [-1e-4]}}, r"learning_rates.*positive"),
        ({"grid": {"learning_rates": [True]}}, r"learning_rates.*True"),
        ({"grid": {"learning_rates": "fast"}}, r"learning_rates.*'fast'"),
        ({"grid": {"learning_rates": [1e-4, 1e-4]}}, r"learning rate 0.0001 twice"),
        ({"grid": {"epochs": [0]}}, r"epochs.*positive"),
        ({"grid": {"seeds": [-1]}}, r"grid.seeds\[0\] must be a whole number >= 0, got -1"),
        ({"grid": {"seeds": [1.5]}}, r"seeds.*1.5"),
        ({"grid": {"seeds": ["a"]}}, r"seeds.*'a'"),
        ({"grid": {"seeds": []}}, r"seeds must list at least one"),
        ({"lora": {"rank": 8, "alfa": 16}}, r"alfa.*did you mean alpha"),
        ({"lora": {"rank": 0}}, r"lora.rank must be a positive whole number, got 0"),
        ({"lora": "yes"}, r"lora must be a mapping"),
        ({"eval_limit": 0}, r"eval_limit must be a positive whole number of items"),
        ({"eval_limit": -1}, r"eval_limit must be a positive whole number of items"),
        ({"eval_limit": 2.5}, r"eval_limit must be a positive whole number of items"),
        ({"keep_checkpoints": "no"}, r"keep_checkpoints must be true or false, got 'no'"),
        ({"tasks": ["arith_chainz"]}, r"'arith_chainz' is not a built-in task"),
        ({"prior_tasks": ["probez"]}, r"prior_tasks: unknown task 'probez'"),
        (
            {"tasks": [{"name": "m", "data": "train.jsonl", "eval": "gsm9k"}]},
            r"unknown task 'gsm9k'",
        ),
        ({"tasks": [{"name": "m", "data": "train.jsonl"}]}, r"needs eval"),
        ({"tasks": [{"name": "m", "data": "missing.jsonl", "eval": "new_task.yaml"}]}, r"missing"),
        (
            {"tasks": [{"name": "a/b", "data": "train.jsonl", "eval": "new_task.yaml"}]},
            r"names files",
        ),
        ({"model": ["a", "b"]}, r"model must be one name"),
        ({"model": "./no-such-model"}, r"no-such-model does not exist"),
    ],
)
def test_a_bad_grid_is_one_error_naming_the_file_and_the_problem(tmp_path, changes, message):
    path = write_grid(tmp_path, **changes)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as caught:
        read_grid(path)
    assert str(path) in str(caught.value)


def test_no_two_different_cells_share_a_file_name():
    # Dashes in names and numbers that print alike under %g used to line up into one name.
    cells = [
        Cell(task, variant, lr, epochs, seed)
        for task in ("t", "t-x", "t-x-nll")
        for variant in ("nll", "x-nll", "nll-lr0.0001")
        for lr in (1e-4, 1.000001e-4, 0.1)
        for epochs in (None, 1.0, 1.0000001)
        for seed in (0, 1, 10)
    ]
    assert len({cell.name for cell in cells}) == len(cells)


def test_tasks_and_methods_whose_names_line_up_get_their_own_cell_files(tmp_path):
    task = {"data": "train.jsonl", "eval": "new_task.yaml"}
    spec = read_grid(
        write_grid(
            tmp_path,
            tasks=[{"name": "t", **task}, {"name": "t-x", **task}],
            grid={"methods": ["nll", {"name": "x-nll", "method": "nll"}], "learning_rates": [1e-4]},
        )
    )
    names = {(c.task, c.variant): c.name for c in spec.cells()}
    assert names[("t", "x-nll")] != names[("t-x", "nll")]


def test_a_learning_rate_that_prints_like_another_gets_its_own_cell_file_and_label(tmp_path):
    spec = read_grid(write_grid(tmp_path, grid={"learning_rates": [1e-4, 1.000001e-4]}))
    nll = {c.learning_rate: c for c in spec.cells() if c.variant == "nll"}
    assert nll[1e-4].name == "mine,nll,lr0.0001,ep1,seed0"
    assert nll[1.000001e-4].name == "mine,nll,lr0.0001000001,ep1,seed0"
    # The label is what groups seeds into one point of a front.
    labels = {setting_label({"learning_rate": lr, "epochs": 1}) for lr in nll}
    assert len(labels) == 2


@pytest.mark.parametrize("value", [1e-4, 3e-5, 1.000001e-4, 0.1 + 0.2, 1 / 3, 2.0, 1e-300])
def test_a_number_in_a_cell_name_reads_back_as_exactly_that_number(value):
    assert float(exact_number(value)) == value


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        (
            "learning_rates: [1.0e-4, 1e-4]",
            r"grid.learning_rates lists the learning rate 0.0001 twice",
        ),
        ("learning_rates: [1.0e-4], epochs: [1, 1.0]", r"grid.epochs lists the length 1 twice"),
        ("learning_rates: [1.0e-4], seeds: [0, 0.0]", r"grid.seeds lists the seed 0 twice"),
    ],
)
def test_two_entries_that_make_the_same_cells_are_refused_when_the_grid_is_read(
    tmp_path, axes, message
):
    path = write_grid(tmp_path)
    path.write_text(
        "tasks: [{name: mine, data: train.jsonl, eval: new_task.yaml}]\n"
        f"grid: {{methods: [nll], {axes}}}\n"
    )
    with pytest.raises(ValueError, match=message + r".*are the same cells") as caught:
        read_grid(path)
    assert "\n" not in str(caught.value)


def test_method_names_that_differ_only_in_case_are_refused_as_one_file(tmp_path):
    methods = ["nll", {"name": "NLL", "method": "nll"}]
    with pytest.raises(ValueError, match=r"grid.methods names nll twice \(nll, NLL differ only"):
        read_grid(write_grid(tmp_path, grid={"methods": methods}))


def test_task_names_that_differ_only_in_case_are_refused_as_one_file(tmp_path):
    task = {"data": "train.jsonl", "eval": "new_task.yaml"}
    tasks = [{"name": "sums", **task}, {"name": "Sums", **task}]
    with pytest.raises(ValueError, match=r"tasks names sums twice \(sums, Sums differ only"):
        read_grid(write_grid(tmp_path, tasks=tasks))


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("tasks: [arith_chain]\ngrid:\n  methods: [nll, infosft\n  seeds: [0]\n")
    with pytest.raises(ValueError, match=rf"{path}:3: not valid YAML"):
        read_grid(path)


def test_model_and_files_resolve_against_the_grid_directory_not_the_working_directory(
    tmp_path, tiny_model_dir, monkeypatch
):
    here = tmp_path / "grids"
    here.mkdir()
    (here / "model").symlink_to(tiny_model_dir)
    path = write_grid(here, model="model", heldout_text="text.txt")
    (here / "text.txt").write_text("Some text.\n")
    elsewhere = tmp_path / "cwd"
    (elsewhere / "model").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    spec = read_grid(os.path.relpath(path))
    assert os.path.samefile(spec.model, here / "model")
    assert os.path.samefile(spec.tasks[0].data[0], here / "train.jsonl")
    assert os.path.samefile(spec.tasks[0].evals[0], here / "new_task.yaml")
    assert os.path.samefile(spec.heldout_text, here / "text.txt")


def test_a_method_entry_carries_its_own_scheme_settings(tmp_path):
    schedule = [{"method": "nll", "until_epoch": 0.25}, {"method": "infosft"}]
    methods = [
        {"name": "p08", "method": "infosft", "p_bar": 0.8},
        {"name": "warm", "loss_schedule": schedule},
        {"name": "asft", "method": "dft", "kl_to_base": 0.1},
    ]
    spec = read_grid(write_grid(tmp_path, grid={"methods": methods}))
    values = {
        v.name: spec.training_values(c) for c in spec.cells() for v in [spec.variant(c.variant)]
    }
    assert values["p08"]["p_bar"] == 0.8 and values["p08"]["method"] == "infosft"
    assert values["warm"]["loss_schedule"] == schedule and values["warm"]["method"] == "infosft"
    assert values["asft"]["kl_to_base"] == 0.1 and values["asft"]["method"] == "dft"


def test_a_whole_kl_to_base_is_held_as_the_number_the_config_holds(tmp_path):
    """kl_to_base: 1 and 1.0 are one setting: the same training values, the same cells."""
    methods = [{"name": "anchored", "method": "nll", "kl_to_base": 1}]
    spec = read_grid(write_grid(tmp_path, grid={"methods": methods}))
    kl = spec.training_values(spec.cells()[0])["kl_to_base"]
    assert kl == 1.0 and isinstance(kl, float)


def test_max_steps_without_epochs_sets_the_length_of_every_cell(tmp_path):
    spec = read_grid(write_grid(tmp_path, training={"max_steps": 3}))
    assert {c.epochs for c in spec.cells()} == {None}
    assert all(spec.training_values(c)["max_steps"] == 3 for c in spec.cells())
    assert all("num_train_epochs" not in spec.training_values(c) for c in spec.cells())


def test_the_default_demo_sweeps_three_rates_over_10x_for_nll_and_infosft_on_two_regimes():
    spec = read_grid(demo_spec_path())
    assert {"nll", "infosft"} <= {v.name for v in spec.variants}
    assert len(spec.learning_rates) >= 3
    assert max(spec.learning_rates) / min(spec.learning_rates) >= 10 * (1 - 1e-9)
    assert {t.name for t in spec.tasks} == {"word_problems", "word_problems-own"}
    assert all(t.n_test >= 32 for t in spec.tasks)


@pytest.mark.parametrize("full", [False, True])
def test_the_demos_train_on_the_shipped_near_policy_answers_without_sampling(full):
    import json

    from infosft.experiments import grid_runner

    plan = grid_runner.Plan(read_grid(demo_spec_path(full=full)))
    own = plan.spec.task("word_problems-own")
    for seed in plan.spec.seeds:
        recipe = plan._rows_digest(own, seed)
        name = f"word_problems-own,seed{seed},{recipe}.json"
        stored = json.loads((grid_runner.SHIPPED_DEMONSTRATIONS / name).read_text())
        assert stored["recipe"] == recipe
        assert stored["counts"]["kept"] == len(stored["rows"]) >= 32


def test_the_full_demo_runs_the_protocol_on_five_regimes_each_with_its_reason():
    spec = read_grid(demo_spec_path(full=True))
    assert [t.name for t in spec.tasks] == [
        "arith_chain",
        "word_problems",
        "word_problems-own",
        "word_problems-noisy",
        "word_problems-few",
    ]
    assert all(t.about and t.n_test >= 200 for t in spec.tasks)
    assert spec.task("word_problems-own").near_policy["scorer"] == "math"
    assert spec.task("word_problems-noisy").noise == {"share": 0.25, "kind": "answer"}
    assert spec.task("word_problems-few").epochs == (1.0, 4.0, 16.0)
    assert {v.name for v in spec.variants} >= {"nll", "infosft"}
    assert max(spec.learning_rates) / min(spec.learning_rates) >= 10 * (1 - 1e-9)
    assert len(spec.seeds) == 3


def test_a_model_directory_is_known_by_its_files_content_not_where_or_when_it_was_written(
    tmp_path,
):
    import shutil

    from infosft.experiments.grid_runner import model_identity

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "checkpoint-1").mkdir()  # what loading the model does not read is not hashed
    copy = shutil.copytree(model, tmp_path / "elsewhere" / "model")
    os.utime(copy / "model.safetensors", (0, 0))
    (copy / "checkpoint-1" / "extra.bin").write_bytes(b"\x01")
    assert model_identity(str(model)) == model_identity(str(copy))
    (copy / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert model_identity(str(model)) != model_identity(str(copy))
