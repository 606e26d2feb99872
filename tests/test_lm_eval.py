"""``infosft eval --lm-eval``: lm-evaluation-harness tasks defined over local data, run offline on
two tiny random models (the "tuned" one and a different "base" one)."""

import importlib.util
import json
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import build_tiny_llama
from infosft.cli import main
from infosft.evaluation.lm_eval_tasks import lm_eval_task_name

QUESTIONS = [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (9, 3)]
ROWS = [
    {"question": f"What is {a} + {b}?", "choices": [str(a + b), str(a * b), str(a - b)]}
    | {"label": 0, "answer": str(a + b)}
    for a, b in QUESTIONS
]
PROMPT = "Question: {{question}}\nAnswer:"


def write_tasks(directory: Path) -> None:
    """A multiple-choice and a generate_until lm-eval task over one local JSON-lines file."""
    data = directory / "arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    source = (
        f"dataset_path: json\ndataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}\n"
        f"test_split: test\ndoc_to_text: {json.dumps(PROMPT)}\n"
    )
    (directory / "arith_mc.yaml").write_text(
        f"task: arith_mc\n{source}output_type: multiple_choice\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list: [{metric: acc}, {metric: acc_norm}]\n"
    )
    (directory / "arith_gen.yaml").write_text(
        f"task: arith_gen\n{source}output_type: generate_until\ndoc_to_target: '{{{{answer}}}}'\n"
        "generation_kwargs: {until: ['\\n'], max_gen_toks: 6, do_sample: false}\n"
        "metric_list: [{metric: exact_match}]\n"
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """One ``infosft eval --lm-eval`` run with a base model; every network connection refused
    and recorded."""
    tmp = tmp_path_factory.mktemp("lm-eval")
    write_tasks(tmp)
    base_dir = tmp / "base"
    build_tiny_llama(len(AutoTokenizer.from_pretrained(tiny_model_dir)), seed=1).save_pretrained(
        base_dir
    )
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base_dir)
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network access in a test")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise OSError("network access in a test")

    out = tmp / "results.json"
    argv = ["eval", "--lm-eval", "arith_mc,arith_gen", "--lm-eval-include", str(tmp)]
    argv += ["--model", str(tiny_model_dir), "--base-model", str(base_dir), "--output", str(out)]
    argv += ["--device", "cpu", "--batch-size", "4", "--no-progress"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "getaddrinfo", refuse_lookup)
        code = main(argv)
    return {"code": code, "results": json.loads(out.read_text()), "network": attempts}, base_dir


def choice_log_likelihoods(model_dir: Path) -> list[list[float]]:
    """Sum of log p(choice tokens | prompt) per item and choice, in float64: the prompt and
    " " + choice are tokenized together and split after the prompt's tokens, as lm-eval does."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).double().eval()
    scores = []
    for row in ROWS:
        context = f"Question: {row['question']}\nAnswer:"
        n_context = len(tokenizer.encode(context))
        item = []
        for choice in row["choices"]:
            ids = torch.tensor([tokenizer.encode(f"{context} {choice}")])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
            targets = ids[0, n_context:]
            item.append(log_probs[n_context - 1 :].gather(1, targets[:, None]).sum().item())
        scores.append(item)
    return scores


@pytest.fixture(scope="module")
def correct(run, tiny_model_dir) -> dict[str, list[bool]]:
    """Per item, whether the right answer (choice 0) is the most likely: tuned and base."""
    return {
        name: [max(range(3), key=s.__getitem__) == 0 for s in choice_log_likelihoods(path)]
        for name, path in (("tuned", tiny_model_dir), ("base", run[1]))
    }


def test_runs_without_touching_the_network(run):
    (outcome, _) = run
    assert outcome["code"] == 0
    assert outcome["network"] == []


def test_reports_every_metric_with_its_stderr_for_both_models(run):
    section = run[0]["results"]["lm_eval"]
    for scores in (section["scores"], section["base_scores"]):
        assert set(scores["arith_mc"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
        assert set(scores["arith_gen"]) == {"exact_match", "exact_match_stderr"}
    assert section["items"] == {"arith_mc": len(ROWS), "arith_gen": len(ROWS)}


def test_multiple_choice_accuracy_is_the_share_of_items_whose_answer_is_most_likely(run, correct):
    section = run[0]["results"]["lm_eval"]
    tuned, base = correct["tuned"], correct["base"]
    assert section["scores"]["arith_mc"]["acc"] == pytest.approx(sum(tuned) / len(ROWS))
    assert section["base_scores"]["arith_mc"]["acc"] == pytest.approx(sum(base) / len(ROWS))
    p = sum(tuned) / len(ROWS)
    stderr = (p * (1 - p) / (len(ROWS) - 1)) ** 0.5  # sample standard deviation / sqrt(n)
    assert section["scores"]["arith_mc"]["acc_stderr"] == pytest.approx(stderr)


def test_deltas_are_tuned_minus_base_for_every_metric(run):
    section = run[0]["results"]["lm_eval"]
    for task in ("arith_mc", "arith_gen"):
        metrics = [k for k in section["scores"][task] if "_stderr" not in k]
        assert set(section["delta"][task]) == set(metrics)
        for key in metrics:
            expected = section["scores"][task][key] - section["base_scores"][task][key]
            assert section["delta"][task][key] == pytest.approx(expected)


def test_retention_is_the_share_of_base_correct_items_still_correct(run, correct):
    section = run[0]["results"]["lm_eval"]
    tuned, base = correct["tuned"], correct["base"]
    assert any(base), "the base model must get some item right for retention to be defined"
    kept = sum(t for t, b in zip(tuned, base, strict=True) if b)
    assert section["item_metric"]["arith_mc"] == "acc"
    assert section["retention"]["arith_mc"]["base_correct"] == sum(base)
    assert section["retention"]["arith_mc"]["retention"] == pytest.approx(kept / sum(base))
    assert [r["passed"] for r in section["base_records"]["arith_mc"]] == base


def test_missing_lm_eval_is_one_line_saying_what_to_install(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name)
    )
    assert main(["eval", "--lm-eval", "arc_easy", "--model", "never-loaded"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'infosft[lm-eval]'" in err


def test_prior_task_entries_name_lm_eval_tasks_with_a_prefix():
    assert lm_eval_task_name("lm_eval:arc_easy") == "arc_easy"
    assert lm_eval_task_name("probes") is None
    with pytest.raises(ValueError, match="lm_eval:arc_easy"):
        lm_eval_task_name("lm_eval:")
