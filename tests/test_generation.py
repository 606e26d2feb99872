"""Batched generation on the tiny random Llama: batching, seeds, n samples, stops, chat."""

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


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="temperature > 0"):
        SamplingSettings(n=4)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(temperature=1.0, top_p=0.0)


def test_a_final_assistant_message_is_continued_not_closed(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    messages = [
        {"role": "user", "content": "Write add(a, b)."},
        {"role": "assistant", "content": "```python\n"},
    ]
    rendered = render_prompt(tokenizer, messages)
    assert rendered.endswith("<|im_start|>assistant\n```python\n")
