"""The model card every trained output directory holds (README.md with Hugging Face metadata),
its evaluation section, and push_to_hub through the Trainer's own mechanism (offline: the Hub
calls are intercepted at huggingface_hub's HfApi)."""

import dataclasses
import json
import math
import re
import shutil
from concurrent.futures import Future
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

from infosft.cli import main
from infosft.training import RunSpec, build_trainer, train
from infosft.training.card_evaluation import add_evaluation

ROWS = [{"prompt": f"What is {i} + 7?", "completion": f" {i + 7}."} for i in range(16)]
TINY = {
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "max_length": 64,
    "logging_steps": 1,
    "save_strategy": "no",
    "learning_rate": 1e-2,
    "report_to": "none",
    "disable_tqdm": True,
}
SCHEDULE = [{"method": "nll", "until_step": 1}, {"method": "infosft"}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("card-data") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


def run(tiny_model_dir, data, output_dir, resume=False, **options):
    values = {"model": str(tiny_model_dir), "data": str(data), "output_dir": str(output_dir)}
    return train(RunSpec.from_dict({**values, **TINY, **options}), resume=resume)


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, data, tmp_path_factory):
    """A finished full fine-tune: a loss schedule, the KL anchor, evaluation data."""
    out = tmp_path_factory.mktemp("card-full") / "run"
    run(tiny_model_dir, data, out, loss_schedule=SCHEDULE, kl_to_base=0.1, eval_data=str(data))
    return out


class FakeHub:
    """HfApi.create_repo and upload_folder intercepted: the repos created and, per upload, its
    arguments, the files it would send (the folder's files filtered as upload_folder filters
    them) and the model card; ``interrupt_at`` raises KeyboardInterrupt in that commit's
    upload, as a kill during a checkpoint's push would stop the run."""

    def __init__(self, patch: pytest.MonkeyPatch, interrupt_at: str | None = None):
        self.created, self.uploads, self.interrupt_at = [], [], interrupt_at
        patch.setattr(HfApi, "create_repo", lambda api, *a, **k: self.create_repo(*a, **k))
        patch.setattr(HfApi, "upload_folder", lambda api, **kwargs: self.upload_folder(**kwargs))

    def create_repo(self, repo_id, **kwargs):
        self.created.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        if self.interrupt_at is not None and kwargs.get("commit_message") == self.interrupt_at:
            raise KeyboardInterrupt(self.interrupt_at)
        folder = Path(folder_path)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        ignored = [*(kwargs.get("ignore_patterns") or []), *DEFAULT_IGNORE_PATTERNS]
        sent = list(filter_repo_objects(files, ignore_patterns=ignored))
        card = (folder / "README.md").read_text(encoding="utf-8")
        self.uploads.append({"repo_id": repo_id, "files": sent, "card": card, **kwargs})
        done = Future()  # what run_as_future=True returns, for the Trainer's checkpoint pushes
        done.set_result(None)
        return done


@pytest.fixture(scope="module")
def lora_push(tiny_model_dir, data, tmp_path_factory):
    """A LoRA run with push_to_hub and a checkpoint at every step (the Trainer pushes each one,
    copying the checkpoint's adapter files to the top of the output dir); returns its output
    dir, the repos created and the uploads (see FakeHub)."""
    out = tmp_path_factory.mktemp("card-lora") / "run"
    with pytest.MonkeyPatch.context() as patch:
        hub = FakeHub(patch)
        run(
            tiny_model_dir,
            data,
            out,
            lora={"rank": 4, "alpha": 8},
            push_to_hub=True,
            hub_model_id="someone/tiny-infosft",
            save_strategy="steps",
            save_steps=1,
        )
    return out, hub.created, hub.uploads


def card_of(directory) -> ModelCard:
    return ModelCard.load(Path(directory) / "README.md")


def last_training_log(directory) -> dict:
    lines = (Path(directory) / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "mean_q" in record][-1]


def test_a_finished_run_holds_a_model_card_with_hub_metadata(full_run):
    card = card_of(full_run)
    assert {"trl", "infosft"} <= set(card.data.tags)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    # The base model is a local directory: not a Hub id the metadata could name.
    assert card.data.base_model is None


def test_the_card_states_the_objective(full_run):
    text = card_of(full_run).text
    assert "w = q * max(0, 1 - logit(q) / logit(p_bar))" in text
    assert f"p_bar: 0.93 (logit(p_bar) = {math.log(0.93 / 0.07):.4f}" in text
    assert "| `nll` | Plain SFT: w = 1 for every target token. | none | step 1 |" in text
    assert "weight source: `current`" in text
    assert "kl_to_base: 0.1 (adds 0.1 * KL(base || current)" in text


def test_the_card_states_the_data_and_training_settings(full_run, data):
    text = card_of(full_run).text
    assert f"| training | `{data}` | 16 |" in text
    assert "| learning_rate | 0.01 |" in text
    assert "| max_steps | 3 |" in text and "num_train_epochs" not in text
    assert "| optimizer steps done | 3 of 3 |" in text
    assert "| fine-tuning | full (every parameter) |" in text


def test_the_card_reports_the_diagnostics_of_the_last_log(full_run):
    text = card_of(full_run).text
    logged = last_training_log(full_run)
    assert logged["step"] == 3 and logged["method"] == "infosft"
    for name in ("loss", "nll", "mean_q", "mean_weight", "zero_weight_share", "entropy"):
        assert f"| `{name}` | {logged[name]:.4g} |" in text
    assert f"| `kl_to_base` | {logged['kl_to_base']:.4g} |" in text


def test_the_card_names_a_hub_base_model_and_hub_datasets(tiny_model_dir, data, tmp_path):
    spec = RunSpec.from_dict(
        {"model": str(tiny_model_dir), "data": str(data), "output_dir": str(tmp_path), **TINY}
    )
    trainer = build_trainer(spec)
    # The run as the trainer holds it: the embedded default model, a Hub dataset.
    trainer.run_spec = dataclasses.replace(
        spec, model="smollm2-135m-instruct", data=["HuggingFaceTB/smoltalk@all:train"]
    )
    trainer.create_model_card()
    card = card_of(tmp_path)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.datasets == ["HuggingFaceTB/smoltalk"]
    assert "Q4_1 GGUF" in card.text


def test_the_card_describes_the_run_the_trainer_holds_not_a_file_beside_it(
    tiny_model_dir, data, tmp_path
):
    spec = RunSpec.from_dict(
        {"model": str(tiny_model_dir), "data": str(data), "output_dir": str(tmp_path), **TINY}
    )
    trainer = build_trainer(spec)
    record = {"model": "smollm2-135m-instruct", "data": ["someone/else@x:train"]}
    (tmp_path / "run_config.json").write_text(json.dumps(record))
    trainer.create_model_card()
    card = card_of(tmp_path)
    assert card.data.base_model is None and card.data.datasets is None
    assert f"the local model `{tiny_model_dir}`" in card.text and f"`{data}`" in card.text


def test_a_lora_run_card_describes_the_merged_model_and_the_adapter(lora_push):
    out, _, _ = lora_push
    card = card_of(out)
    assert {"lora", "peft", "infosft", "trl"} <= set(card.data.tags)
    assert "| LoRA | rank 4, alpha 8, dropout 0.05, on all-linear |" in card.text
    assert "LoRA adapter merged into the base weights" in card.text
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "model.safetensors").is_file()


def test_push_to_hub_uploads_the_model_with_its_card_through_the_trainer(lora_push):
    out, created, uploads = lora_push
    assert created == ["someone/tiny-infosft"]
    assert [u["commit_message"] for u in uploads] == [
        *(f"Training in progress, step {step}" for step in (1, 2, 3)),
        "End of training",
    ]
    upload = uploads[-1]
    assert upload["repo_id"] == "someone/tiny-infosft"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        upload["files"]
    )
    assert "adapter/adapter_model.safetensors" in upload["files"]
    # Only the merged model at the top: adapter files there would make from_pretrained load
    # the adapter onto a base model path that exists only on this machine.
    assert "adapter_config.json" not in upload["files"]
    assert "checkpoint-*" in upload["ignore_patterns"]
    assert upload["card"] == (out / "README.md").read_text(encoding="utf-8")
    assert "infosft" in ModelCard(upload["card"]).data.tags


PUSHED = {
    "push_to_hub": True,
    "hub_model_id": "someone/tiny-infosft",
    "save_strategy": "steps",
    "save_steps": 1,
    "weight_source": "base",
}


@pytest.fixture(scope="module")
def interrupted_push(tiny_model_dir, data, tmp_path_factory):
    """A run with push_to_hub, a checkpoint at every step and weight_source: base, killed while
    the Trainer pushed its step-2 checkpoint (after copying its model files to the top)."""
    out = tmp_path_factory.mktemp("card-interrupted") / "run"
    with pytest.MonkeyPatch.context() as patch:
        FakeHub(patch, interrupt_at="Training in progress, step 2")
        with pytest.raises(KeyboardInterrupt):
            run(tiny_model_dir, data, out, **PUSHED)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    return out


def training_steps(directory) -> list[int]:
    lines = (Path(directory) / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if "mean_q" in record]


def test_an_interrupted_run_that_pushed_to_the_hub_resumes(
    interrupted_push, tiny_model_dir, data, tmp_path
):
    out = shutil.copytree(interrupted_push, tmp_path / "run")
    with pytest.MonkeyPatch.context() as patch:
        hub = FakeHub(patch)
        run(tiny_model_dir, data, out, resume=True, **PUSHED)
    assert training_steps(out) == [1, 2, 3]
    assert [u["commit_message"] for u in hub.uploads] == [
        "Training in progress, step 3",
        "End of training",
    ]
    sent = hub.uploads[-1]["files"]
    assert {"README.md", "model.safetensors", "run_config.json", "metrics.jsonl"} <= set(sent)


def test_the_hub_gets_neither_the_base_log_prob_cache_nor_the_bookkeeping(interrupted_push):
    assert any((interrupted_push / "_base_log_probs").rglob("*.npz"))
    with pytest.MonkeyPatch.context() as patch:
        hub = FakeHub(patch)
        HfApi().upload_folder(
            repo_id="someone/tiny-infosft",
            folder_path=interrupted_push,
            ignore_patterns=["_*", "checkpoint-*"],  # the Trainer's, as it passes them
        )
    sent = hub.uploads[0]["files"]
    assert not [name for name in sent if name.startswith(("_", "checkpoint-"))]


def test_a_fresh_run_refuses_the_model_of_a_pushed_run_whose_checkpoints_were_deleted(
    interrupted_push, tiny_model_dir, data, tmp_path
):
    """Without checkpoints, the Trainer's copies of a pushed run's model cannot be told from a
    clone of a finished pushed run (whose marker was never uploaded): nothing is overwritten."""
    out = shutil.copytree(interrupted_push, tmp_path / "run")
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    weights = (out / "model.safetensors").read_bytes()
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ValueError, match="holds a model"):
        FakeHub(patch)
        run(tiny_model_dir, data, out, **PUSHED)
    assert (out / "model.safetensors").read_bytes() == weights


def test_eval_adds_its_results_to_the_model_card(full_run, tiny_model_dir, tmp_path):
    model = shutil.copytree(full_run, tmp_path / "model")
    (tmp_path / "capitals.jsonl").write_text(
        '{"id": "fr", "country": "France", "capital": "Paris"}\n'
        '{"id": "it", "country": "Italy", "capital": "Rome"}\n'
    )
    (tmp_path / "capitals.yaml").write_text(
        "data: capitals.jsonl\n"
        'prompt: "The capital of {country} is"\n'
        "answer_field: capital\n"
        "scorer: exact\n"
        "generation: {max_new_tokens: 4}\n"
    )
    out = tmp_path / "results.json"
    argv = ["eval", "--task", str(tmp_path / "capitals.yaml"), "--model", str(model)]
    argv += ["--base-model", str(tiny_model_dir), "--output", str(out), "--no-progress"]
    assert main([*argv, "--device", "cpu"]) == 0
    results = json.loads(out.read_text())
    card = card_of(model)
    assert "### capitals" in card.text and "Not evaluated yet" not in card.text
    indexed = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert indexed[("capitals", "acc@1")] == results["metrics"]["acc@1"]
    assert indexed[("capitals", "kl_base_tuned")] == results["forgetting"]["kl_base_tuned"]


def test_lm_eval_results_join_the_model_card_with_their_change_from_base(
    full_run, tiny_model_dir, tmp_path
):
    from test_lm_eval import write_tasks

    model = shutil.copytree(full_run, tmp_path / "model")
    write_tasks(tmp_path)
    out = tmp_path / "results.json"
    argv = ["eval", "--lm-eval", "arith_mc", "--lm-eval-include", str(tmp_path)]
    argv += ["--model", str(model), "--base-model", str(tiny_model_dir), "--output", str(out)]
    assert main([*argv, "--device", "cpu", "--batch-size", "4", "--no-progress"]) == 0
    report = json.loads(out.read_text())["lm_eval"]
    card = card_of(model)
    assert "### lm-eval: arith_mc" in card.text
    accuracy = report["scores"]["arith_mc"]["acc"]
    change = report["delta"]["arith_mc"]["acc"]
    assert f"| acc | {accuracy:.4g} |" in card.text and f"| {change:+.4g} |" in card.text
    kept = report["retention"]["arith_mc"]
    assert f"of the {kept['base_correct']} items the base model gets right" in card.text
    indexed = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert indexed[("arith_mc", "acc")] == accuracy


def eval_results(task: str, accuracy: float) -> dict:
    """What `infosft eval --task TASK` writes, reduced to what the card reads."""
    return {"task": task, "model": "m", "metrics": {"acc@1": accuracy}, "samples": [{}] * 4}


def test_evaluating_a_task_again_replaces_only_that_task(full_run, tmp_path):
    model = shutil.copytree(full_run, tmp_path / "model")
    add_evaluation(model, eval_results("alpha", 0.25), tmp_path / "a.json")
    add_evaluation(model, eval_results("beta", 0.5), tmp_path / "b.json")
    add_evaluation(model, eval_results("alpha", 0.75), tmp_path / "a2.json")
    card = card_of(model)
    indexed = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert indexed == {("alpha", "acc@1"): 0.75, ("beta", "acc@1"): 0.5}
    assert card.text.count("### alpha") == 1 and "a2.json" in card.text
    assert "a.json." not in card.text and "b.json" in card.text


def test_a_card_written_again_keeps_its_evaluations(tiny_model_dir, data, tmp_path):
    spec = RunSpec.from_dict(
        {"model": str(tiny_model_dir), "data": str(data), "output_dir": str(tmp_path), **TINY}
    )
    trainer = build_trainer(spec)
    trainer.create_model_card()
    add_evaluation(tmp_path, eval_results("alpha", 0.25), tmp_path / "a.json")
    trainer.create_model_card()  # as push_to_hub does before its upload
    card = card_of(tmp_path)
    assert "### alpha" in card.text
    assert [(r.dataset_type, r.metric_value) for r in card.data.eval_results] == [("alpha", 0.25)]


# ---- evaluation sections keyed by any task name ----------------------------------------------

NASTY_NAMES = [
    "my task",
    "x -->\n## Injected\n<!-- /infosft:eval -->",
    "<!-- /infosft:evaluation -->",
    "# heading",
    "a\n---\nb",
    "héllo ✓ 評価",
    "%41 100%",
    "[link](http://x) `code` | pipe",
]


@pytest.fixture
def bare_card(tmp_path):
    """A directory holding only an infosft model card with an empty evaluation section."""
    from infosft.training.card_evaluation import EVAL_BEGIN, EVAL_END, NOT_EVALUATED

    (tmp_path / "README.md").write_text(
        f"---\ntags:\n- infosft\n---\n\n# m\n\n## Evaluation\n\n{EVAL_BEGIN}\n{NOT_EVALUATED}\n"
        f"{EVAL_END}\n\n## Files\n\nweights\n"
    )
    return tmp_path


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_a_marker_gives_back_exactly_the_key_it_was_made_from(name):
    from urllib.parse import unquote

    from infosft.training.card_evaluation import marker_key

    encoded = marker_key(f"task:{name}")
    assert unquote(encoded) == f"task:{name}"
    assert not any(c.isspace() for c in encoded) and "-->" not in encoded


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_evaluating_another_task_keeps_the_section_of_any_task_name(bare_card, tmp_path, name):
    add_evaluation(bare_card, eval_results(name, 0.25), tmp_path / "first.json")
    add_evaluation(bare_card, eval_results("other", 0.5), tmp_path / "other.json")
    text = card_of(bare_card).text
    assert "first.json" in text and "other.json" in text
    assert text.count("<!-- infosft:eval ") == 2


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_evaluating_any_task_name_again_replaces_exactly_its_section(bare_card, tmp_path, name):
    add_evaluation(bare_card, eval_results(name, 0.25), tmp_path / "first.json")
    add_evaluation(bare_card, eval_results("other", 0.5), tmp_path / "other.json")
    add_evaluation(bare_card, eval_results(name, 0.75), tmp_path / "second.json")
    card = card_of(bare_card)
    indexed = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert indexed == {(name, "acc@1"): 0.75, ("other", "acc@1"): 0.5}
    assert card.text.count("<!-- infosft:eval ") == 2
    assert "first.json" not in card.text and "second.json" in card.text


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_a_task_name_injects_no_heading_marker_or_html(bare_card, tmp_path, name):
    add_evaluation(bare_card, eval_results(name, 0.25), tmp_path / "a.json")
    text = card_of(bare_card).text
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert [h.split(" ")[0] for h in headings] == ["#", "##", "###", "##"]
    assert headings[2].startswith("### ") and headings[3] == "## Files"
    assert re.search(r"(?<!\\)[<>\[`]", headings[2]) is None  # no raw tag, link or code span
    assert text.count("<!--") == 4 and text.count("-->") == 4  # the two pairs of markers


def test_a_card_of_the_old_marker_format_keeps_its_sections(bare_card, tmp_path):
    """Markers written before names were encoded (``task:NAME`` of ``[\\w.:-]``) still match."""
    from infosft.training.card_evaluation import NOT_EVALUATED

    path = bare_card / "README.md"
    old = (
        "<!-- infosft:eval task:old-task_1.0 -->\n### old-task_1.0\n\nkept\n<!-- /infosft:eval -->"
    )
    path.write_text(path.read_text().replace(NOT_EVALUATED, old))
    add_evaluation(bare_card, eval_results("new", 0.5), tmp_path / "a.json")
    text = card_of(bare_card).text
    assert "### old-task_1.0\n\nkept" in text and "### new" in text
