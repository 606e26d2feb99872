"""The experiment engine behind `infosft compare` and `infosft demo`, on the tiny random model:
every cell measured and recorded, fronts and verdicts, resuming, and nothing stale reused."""

import contextlib
import hashlib
import io
import json
import os
import re
import shutil

import pytest
import yaml

from infosft.cli import main
from infosft.experiments import grid_runner, probes
from infosft.experiments.grid import demo_spec_path, read_grid

SCHEDULE = [{"method": "nll", "until_epoch": 0.5}, {"method": "infosft"}]
REAL_PROBE_PASSED = probes.probe_passed


def passed_by_hash(completion, probe):
    """The random tiny model answers no probe; here a probe "passes" by a fixed function of the
    question and the completion, so the base gets some right and a tuned model can lose some.
    Under test is the engine, not the probe scoring."""
    return hashlib.sha256((probe.question + completion).encode()).digest()[0] % 2 == 0


@pytest.fixture(autouse=True)
def probes_scored_by_a_hash(monkeypatch):
    monkeypatch.setattr(probes, "probe_passed", passed_by_hash)


def write_grid(directory, model_dir, **changes):
    """A grid of one task (4 rows, 2 held-out items) with ``changes`` to its top-level keys."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"Q: {a} + 3?\nA:", "completion": f" {a + 3}"} for a in range(4)]
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = [{"id": "a", "q": "2 + 3", "answer": "5"}, {"id": "b", "q": "1 + 1", "answer": "2"}]
    (directory / "new.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    task = {
        "data": "new.jsonl",
        "prompt": "Q: {q}?\nA:",
        "answer_field": "answer",
        "scorer": "exact",
        "generation": {"max_new_tokens": 2},
    }
    (directory / "new_task.yaml").write_text(yaml.safe_dump(task))
    (directory / "prompts.txt").write_text("Say hello.\n")
    (directory / "text.txt").write_text("The capital of France is Paris.\n")
    grid = {
        "model": os.path.relpath(model_dir, directory),
        "tasks": [{"name": "sums", "data": "train.jsonl", "eval": "new_task.yaml"}],
        "prior_tasks": ["probes"],
        "general_prompts": "prompts.txt",
        "heldout_text": "text.txt",
        "grid": {"methods": ["nll", "infosft"], "learning_rates": [1e-3], "seeds": [0]},
        "training": {"per_device_train_batch_size": 2, "max_length": 64},
        "eval_limit": 8,
        **changes,
    }
    path = directory / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def quiet(message):
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """One `infosft compare` run of 2 learning rates x nll, infosft, SFT-then-InfoSFT and an
    ASFT-like KL-anchored variant; returns its results, output directory and stdout."""
    tmp = tmp_path_factory.mktemp("grid")
    methods = [
        "nll",
        "infosft",
        {"name": "sft-then-infosft", "loss_schedule": SCHEDULE},
        {"name": "asft", "method": "dft", "kl_to_base": 0.1},
    ]
    grid = {"methods": methods, "learning_rates": [1e-3, 3e-2], "seeds": [0]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probes, "probe_passed", passed_by_hash)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(
                [
                    "compare",
                    "--config",
                    str(write_grid(tmp, tiny_model_dir, grid=grid)),
                    "--output-dir",
                    str(tmp / "out"),
                ]
            )
    assert code == 0
    results = json.loads((tmp / "out" / "results.json").read_text())
    return results, tmp / "out", out.getvalue()


def test_every_cell_names_its_task_method_learning_rate_and_per_item_records(finished):
    results, _, _ = finished
    cells = results["cells"]
    assert sorted((c["curve"], c["learning_rate"]) for c in cells) == sorted(
        (m, lr) for m in ("nll", "infosft", "sft-then-infosft", "asft") for lr in (1e-3, 3e-2)
    )
    base = results["base"]
    for cell in cells:
        assert cell["task"] == "sums" and cell["seed"] == 0
        assert set(cell["task_correct"]) == set(base["new_tasks"]["sums"]["correct"])
        known = {k for k, ok in base["probe_correct"].items() if ok}
        # A tuned model is asked only the prior items the base answered correctly.
        assert set(cell["probe_correct"]) == known
        assert cell["retention"] == pytest.approx(sum(cell["probe_correct"].values()) / len(known))
    asft = next(c for c in cells if c["curve"] == "asft")
    assert (asft["method"], asft["kl_to_base"]) == ("dft", 0.1)


def test_a_schedule_switches_method_within_a_one_epoch_cell(finished):
    results, _, _ = finished
    cell = next(c for c in results["cells"] if c["curve"] == "sft-then-infosft")
    assert [row["method"] for row in cell["curve_log"]] == ["nll", "infosft"]


def test_each_task_gets_fronts_and_both_halves_of_a_verdict_per_method_against_nll(finished):
    results, _, _ = finished
    summary = results["fronts"]["sums"]
    assert summary["reference"] == "nll"
    assert [(v["curve"], v["matched"]) for v in summary["verdicts"]] == [
        (curve, matched)
        for curve in ("infosft", "sft-then-infosft", "asft")
        for matched in ("retention", "accuracy")
    ]
    assert all(
        v["sentence"].startswith((f"at matched {v['matched']}", "inconclusive", v["curve"], "nll"))
        for v in summary["verdicts"]
    )


def test_the_report_states_each_verdict_before_any_table_and_stands_alone(finished):
    results, out, stdout = finished
    markdown = (out / "report.md").read_text()
    first_table = markdown.index("\n|")
    for verdict in results["fronts"]["sums"]["verdicts"]:
        assert markdown.index(verdict["sentence"]) < first_table
        assert verdict["sentence"] in stdout
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert linked and all((out / name).is_file() for name in linked)
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == len(linked)


def test_a_rerun_of_a_finished_grid_trains_nothing(finished, monkeypatch):
    results, out, _ = finished
    trained = []
    monkeypatch.setattr(grid_runner, "train_cell", lambda *a, **k: trained.append(a) or 1 / 0)
    spec = read_grid(out.parent / "grid.yaml")
    again = grid_runner.run_grid(spec, out, log=quiet)
    assert not trained
    assert again["cells"] == results["cells"]


def test_an_interrupted_grid_resumes_with_only_the_missing_cells(
    tmp_path, tiny_model_dir, monkeypatch
):
    grid = {"methods": ["nll", "infosft"], "learning_rates": [1e-3, 1e-2], "seeds": [0]}
    spec = read_grid(write_grid(tmp_path, tiny_model_dir, grid=grid))
    real_train = grid_runner.train_cell
    trained = []

    def interrupt_third(plan, cell, *args, **kwargs):
        trained.append(cell.name)
        if len(trained) == 3:
            raise KeyboardInterrupt
        return real_train(plan, cell, *args, **kwargs)

    monkeypatch.setattr(grid_runner, "train_cell", interrupt_third)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        grid_runner.run_grid(spec, tmp_path / "out", log=lines.append)
    saved = {p.name: p.read_text() for p in (tmp_path / "out" / "cells").iterdir()}
    assert len(saved) == 2 and not (tmp_path / "out" / "results.json").exists()
    assert any(line.startswith("[2/4]") and "left" in line for line in lines)
    assert "2 of 4 cells are saved" in lines[-1]

    trained.clear()
    monkeypatch.setattr(
        grid_runner,
        "train_cell",
        lambda plan, cell, *a, **k: trained.append(cell.name) or real_train(plan, cell, *a, **k),
    )
    results = grid_runner.run_grid(spec, tmp_path / "out", log=quiet)
    assert trained == [c.name for c in spec.cells()][2:]
    assert len(results["cells"]) == 4
    # The grid's cost counts the cells of the interrupted run too, not only this invocation's.
    timing = results["timing"]
    assert (timing["cells_run"], timing["cells_reused"]) == (2, 2)
    base = json.loads((tmp_path / "out" / "base.json").read_text())
    assert timing["compute_seconds"] == pytest.approx(
        base["measure_seconds"]
        + sum(c["train_seconds"] + c["measure_seconds"] for c in results["cells"])
    )
    for name, text in saved.items():
        assert (tmp_path / "out" / "cells" / name).read_text() == text


@pytest.mark.parametrize("change", ["training data", "model"])
def test_cells_made_with_other_data_or_another_model_are_never_reused(
    change, tmp_path, tiny_model_dir, monkeypatch
):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for item in tiny_model_dir.iterdir():
        (model_dir / item.name).write_bytes(item.read_bytes())
    path = write_grid(tmp_path, model_dir, grid={"methods": ["nll"], "learning_rates": [1e-3]})
    grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    if change == "training data":
        # Same file name, other content.
        rows = (tmp_path / "train.jsonl").read_text().replace("+ 3", "+ 4")
        (tmp_path / "train.jsonl").write_text(rows)
    else:
        # Other weights (one bit of the last weight); rewriting the same bytes is the same model.
        weights = model_dir / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    loaded = []
    monkeypatch.setattr(
        "infosft.models.load_model_and_tokenizer", lambda *a, **k: loaded.append(a) or 1 / 0
    )
    with pytest.raises(ValueError, match=rf"made with another {change}.*another --output-dir"):
        grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    assert not loaded


def test_cells_whose_names_once_collided_each_keep_their_own_file_and_resume(
    tmp_path, tiny_model_dir, monkeypatch
):
    # Tasks t and t-x with methods x-nll and nll, at two rates equal to six digits.
    task = {"data": "train.jsonl", "eval": "new_task.yaml"}
    path = write_grid(
        tmp_path,
        tiny_model_dir,
        tasks=[{"name": "t", **task}, {"name": "t-x", **task}],
        grid={
            "methods": ["nll", {"name": "x-nll", "method": "nll"}],
            "learning_rates": [1e-3, 1.000001e-3],
        },
    )
    first = grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    assert len(list((tmp_path / "out" / "cells").iterdir())) == len(first["cells"]) == 8
    monkeypatch.setattr(grid_runner, "train_cell", lambda *a, **k: 1 / 0)
    again = grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    assert again["cells"] == first["cells"]


def test_once_stale_cells_are_deleted_as_advised_a_stale_base_is_measured_again(
    tmp_path, tiny_model_dir
):
    path = write_grid(tmp_path, tiny_model_dir, grid={"methods": ["nll"], "learning_rates": [1e-3]})
    before = grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    # Same file name, other rows: the base records q of each task's first training rows.
    rows = (tmp_path / "train.jsonl").read_text().replace("+ 3", "+ 4")
    (tmp_path / "train.jsonl").write_text(rows)
    with pytest.raises(ValueError, match=r"made with another training data.*delete .*cells"):
        grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)

    shutil.rmtree(tmp_path / "out" / "cells")
    lines = []
    after = grid_runner.run_grid(read_grid(path), tmp_path / "out", log=lines.append)
    assert any("measuring the base model" in line and "training rows" in line for line in lines)
    assert after["base"]["q_under_base"] != before["base"]["q_under_base"]


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("train.jsonl", r"train.jsonl:1: invalid|no training format"),
        ("new_task.yaml", r"unknown scorer"),
    ],
)
def test_bad_data_or_task_files_fail_before_the_model_is_loaded(
    broken, message, tmp_path, tiny_model_dir, monkeypatch
):
    path = write_grid(tmp_path, tiny_model_dir)
    if broken == "train.jsonl":
        (tmp_path / broken).write_text('{"question": "no completion here"}\n')
    else:
        (tmp_path / broken).write_text(
            "data: new.jsonl\nprompt: '{q}'\nanswer_field: answer\nscorer: fuzzy\n"
        )
    loaded = []
    monkeypatch.setattr(
        "infosft.models.load_model_and_tokenizer", lambda *a, **k: loaded.append(a) or 1 / 0
    )
    with pytest.raises(ValueError, match=message):
        grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    assert not loaded


def test_on_disk_cells_keep_their_model_and_are_measured_without_retraining(
    tmp_path, tiny_model_dir, monkeypatch
):
    import infosft.training

    path = write_grid(
        tmp_path,
        tiny_model_dir,
        keep_checkpoints=True,
        grid={"methods": ["nll"], "learning_rates": [1e-3]},
    )
    spec = read_grid(path)
    first = grid_runner.run_grid(spec, tmp_path / "out", log=quiet)
    cell = spec.cells()[0]
    model_dir = tmp_path / "out" / "runs" / cell.name / "model"
    assert (model_dir / "config.json").is_file()
    (tmp_path / "out" / "cells" / f"{cell.name}.json").unlink()
    monkeypatch.setattr(infosft.training, "train", lambda *a, **k: 1 / 0)
    again = grid_runner.run_grid(spec, tmp_path / "out", log=quiet)
    assert again["cells"][0]["task_correct"] == first["cells"][0]["task_correct"]
    assert again["cells"][0]["train_seconds"] is None


def test_a_model_kept_on_disk_from_other_training_settings_is_never_measured_as_a_cell(
    tmp_path, tiny_model_dir, monkeypatch
):
    grid = {"methods": ["nll"], "learning_rates": [1e-3]}
    path = write_grid(tmp_path, tiny_model_dir, keep_checkpoints=True, grid=grid)
    grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    training = {"per_device_train_batch_size": 2, "max_length": 48}
    path = write_grid(tmp_path, tiny_model_dir, keep_checkpoints=True, grid=grid, training=training)
    # The stale cell is refused; deleting cells/ as advised leaves runs/ with its model.
    with pytest.raises(ValueError, match=r"made with another training settings"):
        grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    shutil.rmtree(tmp_path / "out" / "cells")
    loaded = []
    monkeypatch.setattr(
        "infosft.models.load_model_and_tokenizer", lambda *a, **k: loaded.append(a) or 1 / 0
    )
    with pytest.raises(ValueError, match=r"holds a model trained with another training settings"):
        grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    assert not loaded


def test_lm_eval_prior_tasks_count_toward_retention_like_our_own(tmp_path, tiny_model_dir):
    from test_lm_eval import write_tasks

    (tmp_path / "lm").mkdir()
    write_tasks(tmp_path / "lm")
    path = write_grid(
        tmp_path,
        tiny_model_dir,
        prior_tasks=["probes", "lm_eval:arith_mc"],
        lm_eval={"include_path": "lm", "batch_size": 4},
        grid={"methods": ["nll"], "learning_rates": [1e-2]},
    )
    results = grid_runner.run_grid(read_grid(path), tmp_path / "out", log=quiet)
    base, cell = results["base"], results["cells"][0]
    lm_items = {k for k in base["probe_correct"] if k.startswith("lm_eval:arith_mc/")}
    assert len(lm_items) == 8
    assert lm_items <= set(cell["probe_correct"])
    assert set(cell["retention_per_source"]) == {"probes", "lm_eval:arith_mc"}
    assert "acc" in cell["lm_eval_delta"]["lm_eval:arith_mc"]


def test_a_bad_grid_is_one_line_on_the_command_line(tmp_path, tiny_model_dir, capsys):
    path = write_grid(tmp_path, tiny_model_dir, keep_checkpoints="no")
    assert main(["compare", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keep_checkpoints must be true or false" in err


@pytest.mark.parametrize("output_dir", ["", "elsewhere"])
def test_results_never_land_among_unrelated_files(
    tmp_path, tiny_model_dir, monkeypatch, output_dir
):
    path = write_grid(tmp_path / "grid", tiny_model_dir)
    work = tmp_path / "work"
    (work / "elsewhere").mkdir(parents=True)
    (work / "results.json").write_text("mine")
    (work / "elsewhere" / "report.md").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match="--output-dir"):
        grid_runner.run_grid(read_grid(path), output_dir, log=quiet)
    assert (work / "results.json").read_text() == "mine"
    assert (work / "elsewhere" / "report.md").read_text() == "mine"
    assert not (work / "cells").exists() and not (work / "elsewhere" / "cells").exists()


def test_the_demo_prints_the_grid_it_runs_for_compare_to_reuse(tmp_path, capsys):
    assert main(["demo", "--print-spec"]) == 0
    (tmp_path / "grid.yaml").write_text(capsys.readouterr().out)
    assert read_grid(tmp_path / "grid.yaml").cells() == read_grid(demo_spec_path()).cells()


@pytest.mark.slow
def test_the_default_demo_spec_runs_on_the_embedded_model_at_reduced_size(tmp_path, monkeypatch):
    """The packaged spec's own options, model and built-in tasks, shrunk to one step per cell."""
    import dataclasses

    monkeypatch.setattr(probes, "probe_passed", REAL_PROBE_PASSED)
    spec = read_grid(demo_spec_path())
    spec = dataclasses.replace(
        spec,
        tasks=[dataclasses.replace(t, n_train=8, n_test=4) for t in spec.tasks],
        learning_rates=spec.learning_rates[-1:],
        training={**spec.training, "max_steps": 1},
        eval_limit=4,
    )
    results = grid_runner.run_grid(spec, tmp_path, log=quiet)
    assert {(c["task"], c["method"]) for c in results["cells"]} == {
        (t, m) for t in ("word_problems", "word_problems-own") for m in ("nll", "infosft")
    }
    assert all(len(c["task_correct"]) == 4 for c in results["cells"])
