"""infosft compare: grid YAML checks, and resuming a half-finished grid without re-running cells."""

import json

import pytest
import yaml

from infosft.experiments import compare


def write_grid(tmp_path, model_dir, **changes):
    """A two-cell grid (nll, infosft) of one optimizer step each on a tiny model."""
    rows = [{"prompt": "Q: 2 + 3?\nA:", "completion": " 5"}] * 4
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = [{"id": "a", "q": "2 + 3", "answer": "5"}, {"id": "b", "q": "1 + 1", "answer": "2"}]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    task = {
        "data": "new.jsonl",
        "prompt": "Q: {q}?\nA:",
        "answer_field": "answer",
        "scorer": "exact",
        "generation": {"max_new_tokens": 2},
    }
    (tmp_path / "new_task.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "prompts.txt").write_text("Say hello.\n")
    (tmp_path / "text.txt").write_text("The capital of France is Paris.\n")
    grid = {
        "model": str(model_dir),
        "data": "train.jsonl",
        "new_task": "new_task.yaml",
        "prior_tasks": ["probes"],
        "general_prompts": "prompts.txt",
        "heldout_text": "text.txt",
        "grid": {"methods": ["nll", "infosft"], "learning_rates": [1e-3], "epochs": [1]},
        "training": {"max_steps": 1, "per_device_train_batch_size": 2, "save_strategy": "no"},
        "eval_limit": 2,
        **changes,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_unknown_key_in_grid_yaml_is_named(tmp_path, tiny_model_dir):
    path = write_grid(tmp_path, tiny_model_dir, learning_rate=1e-4)
    with pytest.raises(ValueError, match="learning_rate"):
        compare.read_grid_config(path)


def test_unknown_method_in_grid_is_rejected_before_training(tmp_path, tiny_model_dir):
    path = write_grid(tmp_path, tiny_model_dir, grid={"methods": ["nll", "sft2"]})
    with pytest.raises(ValueError, match="sft2"):
        compare.read_grid_config(path)


def test_cells_cover_the_grid_with_distinct_names(tmp_path, tiny_model_dir):
    path = write_grid(
        tmp_path,
        tiny_model_dir,
        grid={"methods": ["nll", "dft"], "learning_rates": [1e-5, 5e-5], "epochs": [1, 2]},
    )
    cells = compare.read_grid_config(path).cells()
    assert len({c.name for c in cells}) == len(cells) == 8


def test_rerun_trains_only_the_cells_without_results(tmp_path, tiny_model_dir, monkeypatch):
    import infosft.training.recipe as training_run

    config = compare.read_grid_config(write_grid(tmp_path, tiny_model_dir))
    out = tmp_path / "out"
    first = compare.run_compare(config, out, log=lambda message: None)
    assert [c["cell"]["method"] for c in first["cells"]] == ["nll", "infosft"]
    kept = out / "cells" / f"{config.cells()[0].name}.json"
    kept_text = kept.read_text()
    (out / "cells" / f"{config.cells()[1].name}.json").unlink()

    trained = []
    real_train = training_run.train

    def counting_train(spec, **kwargs):
        trained.append(spec.args.method)
        return real_train(spec, **kwargs)

    monkeypatch.setattr(training_run, "train", counting_train)
    second = compare.run_compare(config, out, log=lambda message: None)
    assert trained == ["infosft"]
    assert kept.read_text() == kept_text
    assert len(second["cells"]) == 2
    assert (out / "report.html").is_file() and (out / "tradeoff.png").is_file()
