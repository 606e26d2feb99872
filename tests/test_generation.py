"""Batched generation on the tiny random Llama: batching, seeds, n samples, stops, chat."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosft.evaluation.generation import (
    SamplingSettings,
    generate,
    render_prompt,
    truncate_at_stop,
)

PROMPTS = [
    "What is 12 + 7?",
    "def add(a, b):",
    "The capital of France is",
    "Question: which is larger, 3 or 5? Answer:",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(
        tiny_model_dir
    )


def greedy_reference(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding by hand, one prompt, no padding, no cache: argmax of the full forward."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_batched_greedy_matches_unpadded_greedy_decoding(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSettings(max_new_tokens=6, batch_size=4)
    batched = generate(model, tokenizer, PROMPTS, settings, progress=False)
    for prompt, completions in zip(PROMPTS, batched, strict=True):
        assert completions == [greedy_reference(model, tokenizer, prompt, 6)]


def test_sampling_gives_n_completions_reproducible_with_the_seed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0, n=3, seed=7)
    first = generate(model, tokenizer, PROMPTS, settings, progress=False)
    again = generate(model, tokenizer, PROMPTS, settings, progress=False)
    assert [len(c) for c in first] == [3, 3, 3, 3]
    assert first == again
    other_seed = SamplingSettings(max_new_tokens=6, temperature=1.0, n=3, seed=8)
    assert generate(model, tokenizer, PROMPTS, other_seed, progress=False) != first


def test_completions_are_cut_at_the_first_stop_string():
    assert truncate_at_stop("    return x\ndef other():\n", ["\ndef", "\nclass"]) == "    return x"
    assert truncate_at_stop("abc", []) == "abc"
    assert truncate_at_stop("a STOP b END c", ["END", "STOP"]) == "a "


def test_stop_strings_apply_to_generated_text(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    plain = generate(model, tokenizer, PROMPTS[:1], SamplingSettings(max_new_tokens=12), False)
    text = plain[0][0]
    assert len(text) > 2, "the random model should produce some text to cut"
    stop = text[1:3]
    cut = generate(
        model, tokenizer, PROMPTS[:1], SamplingSettings(max_new_tokens=12, stop=[stop]), False
    )
    assert cut[0][0] == text[: text.find(stop)]


def test_chat_messages_go_through_the_chat_template(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    messages = [{"role": "user", "content": "What is 12 + 7?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    settings = SamplingSettings(max_new_tokens=5)
    from_messages = generate(model, tokenizer, [messages], settings, progress=False)
    # The template's special tokens are not added twice: same as the rendered text, unchanged.
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    new = []
    for _ in range(5):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    assert from_messages == [[tokenizer.decode(new, skip_special_tokens=True)]]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n": 4}, "n=4 samples per prompt need temperature > 0"),
        ({"temperature": 1.0, "top_p": 0.0}, r"top_p must be a finite number in \(0, 1\], got 0.0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive whole number, got 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0, got nan"),
        ({"batch_size": 1.5}, "batch_size must be a positive whole number, got 1.5"),
        ({"stop": [1]}, r"stop must be a list of strings, got \[1\]"),
    ],
)
def test_invalid_settings_are_rejected_naming_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**settings)


def test_a_whole_float_reads_as_a_whole_number():
    assert SamplingSettings(batch_size=2.0).batch_size == 2


def test_a_final_assistant_message_is_continued_not_closed(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    messages = [
        {"role": "user", "content": "Write add(a, b)."},
        {"role": "assistant", "content": "```python\n"},
    ]
    rendered = render_prompt(tokenizer, messages)
    assert rendered.endswith("<|im_start|>assistant\n```python\n")


def test_keyed_samples_do_not_depend_on_batching_order_or_other_prompts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0, n=3, seed=5, batch_size=4)
    keys = ["a", "b", "c", "d"]
    together = generate(model, tokenizer, PROMPTS, settings, False, sample_keys=keys)
    one_by_one = replace(settings, batch_size=1)
    alone = generate(model, tokenizer, PROMPTS[2:3], one_by_one, False, sample_keys=keys[2:3])
    reversed_ = generate(model, tokenizer, PROMPTS[::-1], settings, False, sample_keys=keys[::-1])
    assert alone == together[2:3]
    assert reversed_ == together[::-1]
    assert len(set(together[0])) > 1  # the n samples of a prompt differ


def test_keyed_sampler_draws_from_the_top_p_softmax_of_the_logits():
    from infosft.evaluation.generation import keyed_sampler

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    temperature, top_p, rows = 0.7, 0.8, 20_000
    sampler = keyed_sampler(list(range(rows)), temperature, top_p)
    picks = sampler(None, logits.expand(rows, -1).clone()).argmax(dim=-1)
    frequencies = torch.bincount(picks, minlength=len(logits)).double() / rows
    # Reference in float64: softmax(logits / T), then the smallest set of most likely tokens
    # whose mass reaches top_p, renormalised.
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    kept = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for i in torch.argsort(probs, descending=True).tolist():
        kept[i] = True
        mass += probs[i].item()
        if mass >= top_p:
            break
    expected = torch.where(kept, probs, 0.0) / probs[kept].sum()
    assert torch.allclose(frequencies, expected, atol=0.015)
    assert frequencies[~kept].sum() == 0


@pytest.mark.parametrize("cache_can_be_cut", [True, False])
def test_greedy_rows_that_finish_leave_the_batch_and_every_answer_stays_the_same(
    model_and_tokenizer, monkeypatch, cache_can_be_cut
):
    """Greedy decoding in stages (2, 4, 6 new tokens): rows that have ended drop out between
    stages, and each completion is still what one unbatched ``model.generate`` call gives,
    whether the unfinished rows go on from their cut KV cache or from a fresh prefill."""
    import copy

    from transformers import DynamicCache

    from infosft.evaluation import generation

    if not cache_can_be_cut:

        def cannot(self, indices):
            raise NotImplementedError

        monkeypatch.setattr(DynamicCache, "batch_select_indices", cannot)

    model, tokenizer = model_and_tokenizer
    model = copy.deepcopy(model)
    plain = {}
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=[])
        plain[prompt] = out[0, ids.shape[1] :].tolist()
    # An end token that one answer produces early and another never does.
    early = plain[PROMPTS[0]][1]
    assert any(early not in plain[p] for p in PROMPTS), "pick another token for this model"
    model.generation_config.eos_token_id = early

    def reference(prompt: str) -> str:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    rows_per_call = []
    original = model.generate

    def counting(*args, **kwargs):
        rows_per_call.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    monkeypatch.setattr(generation, "FIRST_STAGE_TOKENS", 2)
    settings = SamplingSettings(max_new_tokens=12, batch_size=4)
    staged = generate(model, tokenizer, PROMPTS, settings, progress=False)
    assert staged == [[reference(p)] for p in PROMPTS]
    assert rows_per_call[0] == 4 and rows_per_call[-1] < 4, rows_per_call
