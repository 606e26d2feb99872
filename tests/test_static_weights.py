"""Static weights: base-model log q per target token, cached, resumable, carried to the batch."""

import copy

import numpy as np
import pytest
import torch

from infosft.training.static_weights import (
    COLUMN,
    compute_base_log_probs,
    pad_base_log_probs,
    with_base_log_probs,
)

TEXTS = [
    "What is 12 + 7? The answer is 19.",
    "The capital of France is Paris.",
    "def add(a, b): return a + b",
    "Question: which is larger, 3 or 5? Answer: 5.",
    "Please reason step by step.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def tokenized_dataset(tokenizer, prompt_tokens=3):
    """Rows shaped like SFTTrainer's output: input_ids, labels (-100 on a prompt prefix)."""
    from datasets import Dataset

    rows = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        labels = [-100] * prompt_tokens + ids[prompt_tokens:]
        rows.append({"input_ids": ids, "labels": labels})
    return Dataset.from_list(rows)


def reference_row(model, ids, labels):
    """float64, one unpadded row, full logits: log p(labels[t] | ids[:t]), 0 elsewhere."""
    ref_model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = ref_model(torch.tensor([ids])).logits[0].double()
    log_probs = logits.log_softmax(-1)
    out = np.zeros(len(ids))
    for t in range(1, len(ids)):
        if labels[t] != -100:
            out[t] = float(log_probs[t - 1, labels[t]])
    return out


def count_forwards(model):
    calls = []
    handle = model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_column_is_aligned_with_labels_and_zero_off_target(tiny, tmp_path):
    model, tokenizer = tiny
    ds = tokenized_dataset(tokenizer)
    out = compute_base_log_probs(model, ds, cache_dir=tmp_path, batch_size=2, shard_size=2)
    assert out.column_names == ["input_ids", "labels", COLUMN]
    for row in out:
        expected = reference_row(model, row["input_ids"], row["labels"])
        np.testing.assert_allclose(np.asarray(row[COLUMN]), expected, atol=1e-5)
        off_target = np.asarray(row["labels"]) == -100
        assert np.all(np.asarray(row[COLUMN])[off_target] == 0)


def test_second_call_reads_the_cache_without_a_forward_pass(tiny, tmp_path):
    model, tokenizer = tiny
    ds = tokenized_dataset(tokenizer)
    first = compute_base_log_probs(model, ds, cache_dir=tmp_path, batch_size=2, shard_size=2)
    calls, handle = count_forwards(model)
    try:
        second = compute_base_log_probs(model, ds, cache_dir=tmp_path, batch_size=2, shard_size=2)
    finally:
        handle.remove()
    assert calls == []
    assert first[COLUMN] == second[COLUMN]


def test_interrupted_pass_resumes_with_only_the_missing_shard(tiny, tmp_path):
    model, tokenizer = tiny
    ds = tokenized_dataset(tokenizer)
    full = compute_base_log_probs(model, ds, cache_dir=tmp_path, batch_size=1, shard_size=2)
    shards = sorted(tmp_path.glob("*/shard-*.npz"))
    assert len(shards) == 3
    shards[1].unlink()
    calls, handle = count_forwards(model)
    try:
        resumed = compute_base_log_probs(model, ds, cache_dir=tmp_path, batch_size=1, shard_size=2)
    finally:
        handle.remove()
    assert len(calls) == 2  # the two rows of the deleted shard, one per batch
    assert resumed[COLUMN] == full[COLUMN]


def test_cache_key_changes_with_the_model_weights(tiny, tmp_path):
    model, tokenizer = tiny
    ds = tokenized_dataset(tokenizer)
    compute_base_log_probs(model, ds, cache_dir=tmp_path)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.lm_head.weight.mul_(2.0)
    compute_base_log_probs(changed, ds, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_packed_dataset_is_rejected(tiny, tmp_path):
    from datasets import Dataset

    model, _ = tiny
    packed = Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2], "seq_lengths": [2]}])
    with pytest.raises(ValueError, match="packing"):
        compute_base_log_probs(model, packed, cache_dir=tmp_path)


def test_untokenized_dataset_is_rejected(tiny, tmp_path):
    from datasets import Dataset

    model, _ = tiny
    with pytest.raises(ValueError, match="input_ids"):
        compute_base_log_probs(model, Dataset.from_list([{"text": "hi"}]), cache_dir=tmp_path)


def test_collator_wrapper_pads_the_column_like_labels():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = with_base_log_probs(DataCollatorForLanguageModeling(pad_token_id=0))
    examples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], COLUMN: [0.0, -1.5, -0.25]},
        {"input_ids": [8, 9], "labels": [-100, 9], COLUMN: [0.0, -2.0]},
    ]
    batch = collate(examples)
    expected = torch.tensor([[0.0, -1.5, -0.25], [0.0, -2.0, 0.0]])
    assert torch.equal(batch[COLUMN], expected)
    assert batch[COLUMN].shape == batch["labels"].shape


def test_padding_free_batch_concatenates_the_rows():
    batch = {"labels": torch.tensor([[-100, 6, 7, -100, 9]])}
    examples = [{COLUMN: [0.0, -1.5, -0.25]}, {COLUMN: [0.0, -2.0]}]
    got = pad_base_log_probs(examples, batch)
    assert torch.equal(got, torch.tensor([[0.0, -1.5, -0.25, 0.0, -2.0]]))


def test_collator_wrapper_passes_batches_without_the_column_through():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = with_base_log_probs(DataCollatorForLanguageModeling(pad_token_id=0))
    batch = collate([{"input_ids": [1, 2], "labels": [1, 2]}])
    assert COLUMN not in batch
