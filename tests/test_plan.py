"""``infosft compare --plan``: a grid's cells, what they load, their steps and GPU-hours, printed
without loading a model or a data set; the paper's forgetting sweep ships as grids."""

import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from infosft.cli import main
from infosft.evaluation.scorers import score_choice
from infosft.evaluation.tasks import task_from_yaml
from infosft.experiments.grid import read_grid
from infosft.training.formats import explode_toolalpaca, get_formatter, sciq
from test_formats import sciq_row, toolalpaca_api
from test_grid import write_grid

GRIDS = Path(__file__).resolve().parents[1] / "configs" / "grids"
FORGETTING_GRIDS = [GRIDS / "forgetting_science.yaml", GRIDS / "forgetting_toolalpaca.yaml"]
PAPER_METHODS = {"nll", "dft", "infosft", "sft-then-infosft"}


@pytest.fixture
def nothing_loads(monkeypatch):
    """Every way to reach the network or load a model or hub data set raises."""
    import datasets
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("--plan must not load models or data sets, nor open connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig", "PreTrainedModel"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


def plan(capsys, *args):
    code = main(["compare", "--plan", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_plan_of_each_forgetting_grid_lists_every_cell_without_loading_anything(
    nothing_loads, capsys, tmp_path
):
    for path in FORGETTING_GRIDS:
        grid = yaml.safe_load(path.read_text())["grid"]
        expected = math.prod(len(grid[k]) for k in ("methods", "learning_rates", "epochs", "seeds"))
        out = plan(capsys, "--config", path, "--output-dir", tmp_path)
        names = [c.name for c in read_grid(path, require_data=False).cells()]
        assert len(names) == expected == 4 * 4 * 3 * 3
        assert all(name in out for name in names)
        assert f"0 finished in {tmp_path / 'cells'}, {expected} to run" in out
        assert "Qwen/Qwen2.5-7B-Instruct" in out and "lm_eval:ifeval" in out


def test_forgetting_grids_sweep_the_paper_methods_over_three_seeds():
    for path in FORGETTING_GRIDS:
        spec = read_grid(path, require_data=False)
        assert {v.name for v in spec.variants} == PAPER_METHODS
        assert spec.seeds == [0, 1, 2]
        assert spec.model == "Qwen/Qwen2.5-7B-Instruct"
        schedule = spec.variant("sft-then-infosft").loss_schedule
        assert [e["method"] for e in schedule] == ["nll", "infosft"]


def test_science_grid_passes_read_grid_as_shipped():
    spec = read_grid(GRIDS / "forgetting_science.yaml")
    assert spec.tasks[0].data == ("allenai/sciq",) and spec.tasks[0].data_format == "sciq"


def test_toolalpaca_grid_passes_read_grid_once_its_data_file_is_made(tmp_path):
    grids = tmp_path / "configs" / "grids"
    shutil.copytree(GRIDS, grids)
    data = tmp_path / "data" / "toolalpaca.jsonl"
    with pytest.raises(FileNotFoundError, match=r"toolalpaca\.jsonl does not exist"):
        read_grid(grids / "forgetting_toolalpaca.yaml")
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in explode_toolalpaca([toolalpaca_api()])))
    spec = read_grid(grids / "forgetting_toolalpaca.yaml")
    assert spec.tasks[0].data_format == "toolalpaca"


def test_plan_counts_steps_and_gpu_hours_from_the_step_time(nothing_loads, capsys, tmp_path):
    path = write_grid(
        tmp_path,
        grid={"methods": ["nll"], "learning_rates": [1e-4], "epochs": [1, 2.5]},
        training={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
    )
    (tmp_path / "train.jsonl").write_text('{"prompt": "Q", "completion": " A"}\n' * 10)
    out = plan(capsys, "--config", path, "--step-seconds", 360)
    # 10 rows / batch 2 = 5 micro-batches, / 2 accumulated = 3 steps per epoch (the last short)
    assert "training rows: 10 (counted in" in out
    assert "mine,nll,lr0.0001,ep1,seed0" in out and " 3  to run" in out
    assert "mine,nll,lr0.0001,ep2.5,seed0" in out and " 8  to run" in out  # ceil(2.5 x 3)
    assert "optimizer steps to run: 11" in out
    assert "= 1.1 (each cell on one GPU)" in out  # 11 steps x 360 s / 3600 s per hour


def test_plan_adds_each_cells_measuring_to_the_training_time(nothing_loads, capsys, tmp_path):
    path = write_grid(
        tmp_path,
        grid={"methods": ["nll"], "learning_rates": [1e-4], "epochs": [1, 2.5]},
        training={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
    )
    (tmp_path / "train.jsonl").write_text('{"prompt": "Q", "completion": " A"}\n' * 10)
    out = plan(capsys, "--config", path, "--step-seconds", 360, "--measure-seconds", 900)
    # 11 steps x 360 s = 1.1 h of training, and 2 cells x 900 s = 0.5 h of measuring
    assert "11 steps x 360 s/step (--step-seconds) = 1.1 h of training + 2 cells x 900 s" in out
    assert "of measuring (--measure-seconds) = 1.60 h in one job" in out


def test_demo_full_plan_prints_its_cells_and_their_time_on_a_cpu(nothing_loads, capsys, tmp_path):
    assert main(["demo", "--full", "--plan", "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "cells: 126 = 7 (task, length) pair(s) of 5 task(s) x 2 method(s)" in out
    assert "word_problems-few,infosft,lr0.0003,ep16,seed2" in out
    assert "time to run (estimate)" in out


def test_plan_for_several_processes_deals_the_micro_batches_and_counts_every_gpu(
    nothing_loads, capsys, tmp_path
):
    path = write_grid(
        tmp_path,
        grid={"methods": ["nll"], "learning_rates": [1e-4], "epochs": [1]},
        training={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
    )
    (tmp_path / "train.jsonl").write_text('{"prompt": "Q", "completion": " A"}\n' * 30)
    out = plan(capsys, "--config", path, "--step-seconds", 360, "--num-processes", 3)
    # 30 rows / batch 2 = 15 micro-batches, 5 per process, / 2 accumulated = 3 steps
    assert "2 rows x 2 accumulation = 12 rows per optimizer step (3 processes)" in out
    assert "optimizer steps to run: 3" in out
    assert "x 3 GPU(s) / 3600 = 0.9 (each cell on 3 GPUs)" in out  # 3 x 360 s x 3 GPUs


@pytest.mark.parametrize("value", ["0", "-2"])
def test_plan_refuses_a_process_count_below_one(value, capsys, tmp_path):
    path = write_grid(tmp_path)
    assert main(["compare", "--plan", "--config", str(path), "--num-processes", value]) == 2
    assert "--num-processes must be the number of GPUs" in capsys.readouterr().err


def test_num_processes_without_plan_says_how_to_run_on_several_gpus(capsys, tmp_path):
    path = write_grid(tmp_path)
    argv = ["compare", "--config", str(path), "--output-dir", str(tmp_path / "o")]
    assert main([*argv, "--num-processes", "2"]) == 2
    assert "accelerate launch --num_processes N -m infosft compare" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_plan_leaves_cells_finished_in_the_output_dir_out_of_the_hours(capsys, tmp_path):
    path = write_grid(tmp_path, grid={"methods": ["nll"], "learning_rates": [1e-4, 1e-3]})
    (tmp_path / "train.jsonl").write_text('{"prompt": "Q", "completion": " A"}\n' * 8)
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    (cells / "mine,nll,lr0.001,ep1,seed0.json").write_text("{}")
    out = plan(capsys, "--config", path, "--output-dir", tmp_path / "out", "--step-seconds", 3600)
    assert "mine,nll,lr0.001,ep1,seed0" in out and "finished\n" in out
    assert f"1 finished in {cells}, 1 to run" in out
    # 8 rows / batch 2 = 4 steps for the one cell left
    assert "optimizer steps to run: 4" in out and "= 4 (each cell on one GPU)" in out


def test_plan_of_hub_data_without_n_rows_says_how_to_give_them(nothing_loads, capsys, tmp_path):
    path = write_grid(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["tasks"][0]["data"] = "someone/some-dataset"
    path.write_text(yaml.safe_dump(values))
    out = plan(capsys, "--config", path, "--step-seconds", 10)
    assert "give the task n_rows: N in the grid" in out
    assert "GPU-hours" not in out


def test_plan_takes_hub_row_counts_from_n_rows(nothing_loads, capsys, tmp_path):
    path = write_grid(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["tasks"][0].update(data="someone/some-dataset", n_rows=7)
    path.write_text(yaml.safe_dump(values))
    out = plan(capsys, "--config", path)
    assert "training rows: 7 (n_rows in the grid)" in out
    assert "optimizer steps to run: 16" in out  # 4 cells x ceil(7 / 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "--step-seconds", "0"], "--step-seconds must be the positive seconds"),
        (["--plan", "--step-seconds", "nan"], "--step-seconds must be the positive seconds"),
        (["--step-seconds", "5"], "use them with --plan"),
        (["--plan", "--measure-seconds", "5"], "--measure-seconds needs --step-seconds"),
    ],
)
def test_bad_step_seconds_is_one_line(capsys, tmp_path, args, message):
    path = write_grid(tmp_path)
    assert main(["compare", "--config", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"data_format": "sciqq"}, r"tasks\[0\].data_format: unknown data format 'sciqq'"),
        ({"n_rows": 0}, r"tasks\[0\].n_rows must be a positive whole number of training rows"),
    ],
)
def test_grid_rejects_a_bad_data_format_or_n_rows_when_read(tmp_path, task, message):
    path = write_grid(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["tasks"][0].update(task)
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match=message):
        read_grid(path)


def test_plan_refuses_an_output_dir_the_grid_could_not_write(capsys, tmp_path):
    path = write_grid(tmp_path)
    assert main(["compare", "--config", str(path), "--plan", "--output-dir", str(path)]) == 2
    assert "is a file; name a directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["forgetting_science.yaml", "forgetting_toolalpaca.yaml"])
def test_forgetting_grid_trains_with_its_recipes_settings_and_global_batch(name):
    recipe = yaml.safe_load((GRIDS.parent / "recipes" / name).read_text())
    spec = read_grid(GRIDS / name, require_data=False)
    assert spec.model == recipe["model"] and spec.tasks[0].data_format == recipe["data_format"]
    assert spec.lora == recipe.get("lora")
    shared = set(spec.training) & set(recipe) - {"gradient_accumulation_steps"}
    assert shared >= {"max_length", "bf16", "lr_scheduler_type", "warmup_steps"}
    assert {k: spec.training[k] for k in shared} == {k: recipe[k] for k in shared}
    # One process accumulates what the recipe's 4 GPUs take per step.
    recipe_batch = recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"]
    grid_batch = spec.training["per_device_train_batch_size"]
    assert grid_batch * spec.training["gradient_accumulation_steps"] == recipe_batch * 4


def test_sciq_evaluation_asks_as_training_does_and_scores_the_letter(tmp_path):
    row = sciq(sciq_row())
    # The line forgetting_science.yaml's comment writes per SciQ test question.
    record = {
        "question": row["prompt"][-1]["content"],
        "answer": row["completion"][0]["content"][14],
    }
    (tmp_path / "sciq_test.jsonl").write_text(json.dumps(record) + "\n")
    shutil.copy(GRIDS / "sciq_eval.yaml", tmp_path)
    task = task_from_yaml(tmp_path / "sciq_eval.yaml")
    item = task.items[0]
    assert task.prompt(item) == row["prompt"]
    assert score_choice([row["completion"][0]["content"]], [task.reference(item)]) == [True]


def test_toolalpaca_evaluation_scores_the_first_action_of_a_reply(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    messages = get_formatter("toolalpaca")(explode_toolalpaca([toolalpaca_api()])[0])["messages"]
    system, user = messages[0]["content"], messages[1]["content"]
    # A row as forgetting_toolalpaca.yaml's comment writes it; lm-eval reads data/ of the cwd.
    (tmp_path / "data").mkdir()
    record = {"system": system, "instruction": user, "action": "getWeather"}
    (tmp_path / "data" / "toolalpaca_test.jsonl").write_text(json.dumps(record) + "\n")
    monkeypatch.chdir(tmp_path)
    manager = TaskManager(include_path=[str(GRIDS / "lm_eval")], include_defaults=False)
    task = manager.load(["toolalpaca_action"])["tasks"]["toolalpaca_action"]
    doc = next(iter(task.test_docs()))
    assert task.doc_to_text(doc) == f"{system}\n\n{user}"
    reply = messages[2]["content"]  # "Thought: ...\nAction: getWeather\nAction Input: ..."
    (ensemble,) = [f for f in task._filters if f.name == "first_action"]
    replies = [[reply]]
    for step in ensemble.filters:
        replies = list(step().apply(replies, [doc]))
    assert replies == ["getWeather"]
    assert task.process_results(doc, replies) == {"exact_match": 1.0}


def test_plan_says_a_formatters_row_filter_trains_on_fewer_rows(capsys, tmp_path):
    path = write_grid(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["tasks"][0].update(data="openbmb/UltraFeedback", data_format="ultrafeedback_code")
    values["tasks"][0]["n_rows"] = 100
    path.write_text(yaml.safe_dump(values))
    out = plan(capsys, "--config", path)
    assert "training rows: 100 (n_rows in the grid, before the row filter of " in out
