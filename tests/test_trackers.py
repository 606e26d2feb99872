"""Every InfoSFT diagnostic reaches the trackers of ``report_to``: a tiny run logs to
TensorBoard, and its event files, read back, hold each diagnostic under the name the README
gives (``train/...``, ``eval/...``) with the value of the run's own log."""

import json
from pathlib import Path

import pytest

from infosft.training import RunSpec, train

# A dev dependency (pyproject's [dev] extra); a venv made before it was added skips with this.
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed: pip install -c constraints.txt -e '.[dev]'",
)

ROWS = [{"prompt": f"What is {i} + 7?", "completion": f" {i + 7}."} for i in range(16)]
TRAIN_DIAGNOSTICS = (
    "loss",
    "nll",
    "mean_q",
    "mean_weight",
    "zero_weight_share",
    "entropy",
    "kl_to_base",
    "tokens_per_second",
    "num_tokens",
)
EVAL_DIAGNOSTICS = ("loss", "nll", "mean_q", "mean_weight", "zero_weight_share", "entropy")


@pytest.fixture(scope="module")
def tensorboard_run(tiny_model_dir, tmp_path_factory):
    """3 steps with report_to tensorboard: one step of nll then infosft, the KL anchor on, an
    evaluation at step 2 (and the final one). Returns the event files and metrics.jsonl."""
    root = tmp_path_factory.mktemp("tensorboard")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    spec = {
        "model": str(tiny_model_dir),
        "data": str(data),
        "eval_data": str(data),
        "output_dir": str(root / "run"),
        "report_to": "tensorboard",
        "loss_schedule": [{"method": "nll", "until_step": 1}, {"method": "infosft"}],
        "kl_to_base": 0.1,
        "max_steps": 3,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "per_device_train_batch_size": 4,
        "max_length": 64,
        "learning_rate": 1e-2,
        "save_strategy": "no",
        "disable_tqdm": True,
    }
    result = train(RunSpec.from_dict(spec))
    (log_dir,) = (result.output_dir / "runs").iterdir()  # the Trainer's runs/<date>_<host>
    events = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={"scalars": 0, "tensors": 0}
    )
    events.Reload()
    logs = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]
    return events, logs


def scalars(events, tag):
    """{step: value} of a TensorBoard scalar."""
    return {event.step: event.value for event in events.Scalars(tag)}


def test_every_training_diagnostic_is_a_train_scalar(tensorboard_run):
    events, logs = tensorboard_run
    steps = [log for log in logs if "mean_q" in log]
    assert [log["step"] for log in steps] == [1, 2, 3]
    for name in TRAIN_DIAGNOSTICS:
        expected = {log["step"]: pytest.approx(log[name], rel=1e-6) for log in steps}
        assert scalars(events, f"train/{name}") == expected, name


def test_every_evaluation_diagnostic_is_an_eval_scalar(tensorboard_run):
    events, logs = tensorboard_run
    evaluations = {log["step"]: log for log in logs if "eval_loss" in log}
    assert set(evaluations) == {2, 3}  # eval_steps and the final evaluation
    for name in (*EVAL_DIAGNOSTICS, "kl_to_base"):
        expected = {
            step: pytest.approx(log[f"eval_{name}"], rel=1e-6) for step, log in evaluations.items()
        }
        assert scalars(events, f"eval/{name}") == expected, name


def test_the_active_method_is_text_and_one_scalar_per_method(tensorboard_run):
    events, _ = tensorboard_run
    texts = {
        event.step: event.tensor_proto.string_val[0].decode()
        for event in events.Tensors("train/method/text_summary")
    }
    assert texts == {1: "nll", 2: "infosft", 3: "infosft"}
    assert scalars(events, "train/method/nll") == {1: 1.0, 2: 0.0, 3: 0.0}
    assert scalars(events, "train/method/infosft") == {1: 0.0, 2: 1.0, 3: 1.0}


def test_the_run_settings_are_in_tensorboard_text(tensorboard_run):
    events, _ = tensorboard_run
    (args,) = events.Tensors("args/text_summary")
    settings = json.loads(args.tensor_proto.string_val[0].decode())
    assert settings["kl_to_base"] == 0.1 and settings["p_bar"] == 0.93
    assert [entry["method"] for entry in settings["loss_schedule"]] == ["nll", "infosft"]
