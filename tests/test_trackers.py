"""Every InfoSFT diagnostic reaches the trackers of ``report_to``: a tiny run logs to
TensorBoard, and its event files, read back, hold each diagnostic under the name the README
gives (``train/...``, ``eval/...``) with the value of the run's own log; the final evaluation is
logged by the training's own writer (its run), not by a second one opened after training."""

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


def train_with_tensorboard(tiny_model_dir, root, rows, **options):
    """train() on ``rows`` (evaluated on the same rows) with report_to tensorboard; returns the
    result, the TensorBoard log dir (the Trainer's runs/<date>_<host>) and metrics.jsonl."""
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    spec = {
        "model": str(tiny_model_dir),
        "data": str(data),
        "eval_data": str(data),
        "output_dir": str(root / "run"),
        "report_to": "tensorboard",
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "max_length": 64,
        "save_strategy": "no",
        "disable_tqdm": True,
        **options,
    }
    result = train(RunSpec.from_dict(spec))
    (log_dir,) = (result.output_dir / "runs").iterdir()
    logs = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]
    return result, log_dir, logs


def read_events(path):
    events = event_accumulator.EventAccumulator(
        str(path), size_guidance={"scalars": 0, "tensors": 0}
    )
    events.Reload()
    return events


@pytest.fixture(scope="module")
def tensorboard_run(tiny_model_dir, tmp_path_factory):
    """3 steps: one step of nll then infosft, the KL anchor on, an evaluation at step 2 (and
    the final one). Returns the event files and metrics.jsonl."""
    _, log_dir, logs = train_with_tensorboard(
        tiny_model_dir,
        tmp_path_factory.mktemp("tensorboard"),
        ROWS,
        loss_schedule=[{"method": "nll", "until_step": 1}, {"method": "infosft"}],
        kl_to_base=0.1,
        max_steps=3,
        eval_strategy="steps",
        eval_steps=2,
        learning_rate=1e-2,
    )
    return read_events(log_dir), logs


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


def test_the_final_evaluation_is_written_by_the_training_run(tiny_model_dir, tmp_path):
    """With eval_strategy: no, the evaluation after the last step runs inside the training loop:
    TensorBoard's writer of the training (one event file) holds it, as MLflow's and trackio's
    runs, which close when training ends, do."""
    result, log_dir, logs = train_with_tensorboard(tiny_model_dir, tmp_path, ROWS[:8], max_steps=2)
    (event_file,) = log_dir.iterdir()
    events = read_events(event_file)
    assert set(scalars(events, "train/loss")) == {1, 2}
    assert scalars(events, "eval/loss") == {2: pytest.approx(result.metrics["eval_loss"])}
    assert [log["step"] for log in logs if "eval_loss" in log] == [2]
