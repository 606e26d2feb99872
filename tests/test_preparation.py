"""prepare_rows: the rows a trainer trains on, prepared without building one."""

import copy

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosft.training import RunSpec, build_trainer
from infosft.training.preparation import prepare_rows
from infosft.training.spec import training_config
from test_inspect import CHAT

TEXT = [
    {"text": "The capital of France is Paris."},
    {"text": "def add(a, b):\n    return a + b"},
]
COMPLETION = [{"prompt": f"Q: {i} + 3?\nA:", "completion": f" {i + 3}"} for i in range(3)]
CHAT_COMPLETION = [
    {
        "prompt": [{"role": "user", "content": f"What is {i} + 7?"}],
        "completion": [{"role": "assistant", "content": f"The answer is {i + 7}."}],
    }
    for i in range(3)
]
LONG_PROMPT = {"prompt": "Please reason step by step. " * 8, "completion": " 42."}


@pytest.fixture(scope="module")
def smollm2_tokenizer(tiny_model_dir):
    """The tiny tokenizer with SmolLM2's template, which has no {% generation %} markers."""
    from infosft.models import SMOLLM2_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return tokenizer


@pytest.mark.parametrize(
    ("rows", "options"),
    [
        (TEXT, {}),
        (TEXT, {"max_length": 6}),
        (CHAT, {}),
        (CHAT, {"assistant_only_loss": True}),
        (COMPLETION, {}),
        (COMPLETION, {"completion_only_loss": False}),
        ([*COMPLETION, LONG_PROMPT], {"max_length": 16, "truncation_mode": "keep_start"}),
        (CHAT_COMPLETION, {}),
    ],
    ids=[
        "plain",
        "plain-truncated",
        "chat",
        "chat-assistant-only",
        "completion",
        "completion-whole-sequence",
        "completion-prompt-filling-max-length",
        "chat-completion",
    ],
)
def test_prepared_rows_are_the_token_ids_and_labels_the_trainer_trains_on(
    tiny_model_dir, smollm2_tokenizer, tmp_path, rows, options
):
    values = {"output_dir": str(tmp_path), "report_to": [], **options}
    spec = RunSpec.from_dict({**values, "data": Dataset.from_list(rows)})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = build_trainer(spec, model=model, tokenizer=copy.deepcopy(smollm2_tokenizer))
    trained_on = trainer.train_dataset

    prepared = prepare_rows(Dataset.from_list(rows), smollm2_tokenizer, spec.args)

    assert prepared["input_ids"] == trained_on["input_ids"]
    assert prepared["labels"] == trained_on["labels"]
    assert any(label != -100 for labels in prepared["labels"] for label in labels[1:])


def test_a_prompt_filling_max_length_leaves_its_row_out(smollm2_tokenizer):
    args = training_config({"max_length": 16})
    prepared = prepare_rows(Dataset.from_list([*COMPLETION, LONG_PROMPT]), smollm2_tokenizer, args)
    assert len(prepared) == len(COMPLETION)


def test_preparing_rows_leaves_the_tokenizer_as_it_was(smollm2_tokenizer):
    from infosft.models import SMOLLM2_CHAT_TEMPLATE

    args = training_config({"assistant_only_loss": True})
    prepare_rows(Dataset.from_list(CHAT), smollm2_tokenizer, args)
    assert smollm2_tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE


def test_a_chat_without_an_assistant_turn_is_an_error_under_assistant_only_loss(
    smollm2_tokenizer,
):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "?"}]}]
    args = training_config({"assistant_only_loss": True})
    with pytest.raises(ValueError, match="eval example 0 has no assistant message"):
        prepare_rows(Dataset.from_list(rows), smollm2_tokenizer, args, name="eval")


def test_training_config_checks_a_run_mapping_without_data_or_output_dir():
    assert training_config({"method": "dft", "max_length": 32}).method == "dft"
    with pytest.raises(ValueError, match="did you mean max_length"):
        training_config({"max_lenght": 32})
    with pytest.raises(ValueError, match="max_length must be a whole number"):
        training_config({"max_length": "long"})
