"""Forgetting metrics: retention, KL(base || tuned), general-text NLL (float64 references)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import build_tiny_llama
from infosft.evaluation.forgetting import (
    KLReference,
    first_samples,
    heldout_nll,
    measure_base_general,
    retention,
)

TEXTS = ["The capital of France is Paris.", "def add(a, b):\n    return a + b"]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = build_tiny_llama(len(tokenizer), seed=1)  # another random model: a big "change"
    return base, tuned, tokenizer


def record(task_id: str, passed: bool) -> dict:
    return {"task_id": task_id, "passed": passed}


def test_retention_counts_only_items_the_base_model_got_right():
    base = {"a": True, "b": True, "c": False, "d": True}
    tuned = {"a": True, "b": False, "c": True, "d": True}
    report = retention(base, tuned)
    assert report["base_correct"] == 3
    assert report["retention"] == pytest.approx(2 / 3)
    assert report["retention_ci_low"] < 2 / 3 < report["retention_ci_high"]


def test_retention_needs_the_tuned_results_only_on_items_the_base_got_right():
    assert retention({"a": True, "b": False}, {"a": False})["retention"] == 0.0


def test_retention_is_undefined_when_the_base_got_nothing_right():
    assert retention({"a": False}, {"a": True})["retention"] is None


def test_first_samples_keeps_the_first_sample_of_each_item():
    records = [record("a", False), record("a", True), record("b", True)]
    assert first_samples(records) == {"a": False, "b": True}


def test_retention_requires_the_same_items():
    with pytest.raises(ValueError, match="different items"):
        retention({"a": True}, {"b": True})


def nll_reference(model, tokenizer, text: str) -> tuple[float, int]:
    """Summed NLL of one unpadded text in float64."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
    picked = log_probs[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    return float(-picked.sum()), ids.shape[1] - 1


def test_heldout_nll_is_the_mean_token_nll_of_the_texts(models):
    base, _, tokenizer = models
    refs = [nll_reference(base, tokenizer, t) for t in TEXTS]
    expected = sum(r[0] for r in refs) / sum(r[1] for r in refs)
    result = heldout_nll(base, tokenizer, TEXTS, batch_size=2)  # padded batch
    assert result["nll"] == pytest.approx(expected, rel=1e-5)
    assert result["tokens"] == sum(r[1] for r in refs)


def kl_reference(base, tuned, tokenizer, prompt: str, completion: str) -> tuple[float, int]:
    """Summed per-position KL(base || tuned) over the completion tokens, float64, unpadded."""
    head = tokenizer(prompt)["input_ids"]
    tail = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        p = torch.log_softmax(base(input_ids=ids).logits.double(), -1)[0]
        q = torch.log_softmax(tuned(input_ids=ids).logits.double(), -1)[0]
    positions = range(len(head) - 1, len(head) + len(tail) - 1)
    total = sum(float((p[t].exp() * (p[t] - q[t])).sum()) for t in positions)
    return total, len(tail)


def test_kl_matches_the_per_position_definition(models):
    base, tuned, tokenizer = models
    prompts = ["What is 12 + 7?", "The capital of Italy"]
    completions = [" 19. The answer is 19.", " is Rome, not Paris."]
    pairs = zip(prompts, completions, strict=True)
    refs = [kl_reference(base, tuned, tokenizer, p, c) for p, c in pairs]
    result = KLReference(base, tokenizer, prompts, completions, batch_size=2).kl(tuned)
    assert result["kl_tokens"] == sum(r[1] for r in refs)
    expected = sum(r[0] for r in refs) / result["kl_tokens"]
    assert result["kl_base_tuned"] == pytest.approx(expected, rel=1e-5)  # float32 vs float64


def test_kl_of_a_model_with_itself_on_its_own_samples_is_zero(models):
    base, _, tokenizer = models
    prompts = ["Hello", "def f(x):"]
    measured = measure_base_general(base, tokenizer, prompts, TEXTS)
    result = KLReference(base, tokenizer, prompts, measured["general_samples"]).kl(base)
    assert result["kl_base_tuned"] == pytest.approx(0.0, abs=1e-6)
    assert result["kl_tokens"] > 0
    assert measured["general_nll"] == heldout_nll(base, tokenizer, TEXTS)["nll"]


def test_the_base_samples_do_not_depend_on_the_global_random_state(models):
    base, _, tokenizer = models
    first = measure_base_general(base, tokenizer, ["Hello", "def f(x):"], TEXTS)
    torch.manual_seed(123)
    assert measure_base_general(base, tokenizer, ["Hello", "def f(x):"], TEXTS) == first


def one_item_task(directory):
    from infosft.evaluation.tasks import load_task

    (directory / "d.jsonl").write_text('{"q": "1 + 1", "a": "2"}\n')
    (directory / "t.yaml").write_text(
        "data: d.jsonl\nprompt: '{q}'\nanswer_field: a\nscorer: exact\n"
    )
    return load_task(str(directory / "t.yaml"))


def test_an_empty_list_of_texts_is_an_error_not_the_built_in_texts(models, tmp_path):
    from infosft.evaluation.runner import evaluate_with_base

    base, tuned, tokenizer = models
    task = one_item_task(tmp_path)
    for empty in ({"general_prompts": []}, {"general_texts": []}):
        with pytest.raises(ValueError, match="must not be empty"):
            evaluate_with_base(tuned, tokenizer, base, tokenizer, task, progress=False, **empty)


def test_read_texts_takes_strings_and_text_or_prompt_fields_of_json_lines(tmp_path):
    from infosft.evaluation.forgetting import read_texts

    path = tmp_path / "t.jsonl"
    path.write_text('"plain"\n\n{"text": "a"}\n{"prompt": "b"}\n')
    assert read_texts(path) == ["plain", "a", "b"]


def test_read_texts_keeps_every_non_empty_line_of_a_text_file(tmp_path):
    from infosft.evaluation.forgetting import read_texts

    path = tmp_path / "t.txt"
    path.write_text('first\n\n  \n{"text": "kept as is"}\n')
    assert read_texts(path) == ["first", '{"text": "kept as is"}']


def test_a_base_model_with_another_vocabulary_is_an_error_not_an_index_error(models, tmp_path):
    from infosft.evaluation.runner import evaluate_with_base

    base, _, tokenizer = models
    other = build_tiny_llama(len(tokenizer) + 2, seed=1)
    task = one_item_task(tmp_path)
    with pytest.raises(ValueError, match=f"{len(tokenizer)} embedding rows, the tuned model"):
        evaluate_with_base(other, tokenizer, base, tokenizer, task, progress=False)


def test_read_texts_takes_a_json_list_and_names_the_item_that_holds_no_text(tmp_path):
    from infosft.evaluation.forgetting import read_texts

    path = tmp_path / "t.json"
    path.write_text('["a", {"text": "b"}]')
    assert read_texts(path) == ["a", "b"]
    path.write_text('["a", 5]')
    with pytest.raises(ValueError, match=r"t.json:item 1: each line needs"):
        read_texts(path)
