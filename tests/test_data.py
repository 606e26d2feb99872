"""Training data: loading local files, TRL format checks, clear errors."""

import json
import re

import pytest
from datasets import Dataset

from infosft.training.data import MAX_NESTING, load_data, parse_hub_name
from infosft.training.formats import register_formatter

TEXT = [{"text": "The capital of France is Paris."}, {"text": "def add(a, b): return a + b"}]
PROMPT_COMPLETION = [
    {"prompt": "What is 2 + 2?", "completion": " 4.", "source": "arithmetic"},
    {"prompt": "What is 3 + 5?", "completion": " 8.", "source": "arithmetic"},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
]
CONVERSATIONAL_PROMPT_COMPLETION = [
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
    }
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "rows, columns",
    [
        (TEXT, ["text"]),
        (PROMPT_COMPLETION, ["prompt", "completion"]),
        (MESSAGES, ["messages"]),
        (CONVERSATIONAL_PROMPT_COMPLETION, ["prompt", "completion"]),
    ],
    ids=["text", "prompt-completion", "messages", "conversational-prompt-completion"],
)
def test_each_trl_format_loads_with_only_its_columns(tmp_path, rows, columns):
    dataset = load_data(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert dataset.column_names == columns
    assert dataset.to_list() == [{c: row[c] for c in columns} for row in rows]


def test_json_and_parquet_files_give_the_same_rows_as_jsonl(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(PROMPT_COMPLETION), encoding="utf-8")
    Dataset.from_list(PROMPT_COMPLETION).to_parquet(tmp_path / "d.parquet")
    expected = [{"prompt": r["prompt"], "completion": r["completion"]} for r in PROMPT_COMPLETION]
    assert load_data(str(tmp_path / "d.json")).to_list() == expected
    assert load_data(str(tmp_path / "d.parquet")).to_list() == expected


def test_several_files_are_concatenated_in_order(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", PROMPT_COMPLETION[:1])
    second = write_jsonl(tmp_path / "b.jsonl", PROMPT_COMPLETION[1:])
    dataset = load_data([str(first), str(second)])
    assert [row["prompt"] for row in dataset] == [r["prompt"] for r in PROMPT_COMPLETION]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(TEXT[0]) + "\n\n" + '{"text": "unterminated\n' + json.dumps(TEXT[1]) + "\n"
    )
    with pytest.raises(ValueError, match=rf"{path}:3: malformed JSON"):
        load_data(str(path))


def test_jsonl_line_that_is_not_an_object_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TEXT[0]) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=rf"{path}:2: expected a JSON object"):
        load_data(str(path))


def test_missing_fields_error_lists_the_accepted_formats(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}])
    with pytest.raises(ValueError, match="accepted formats") as error:
        load_data(str(path))
    for name in ("'answer'", "'question'", '"text"', '"prompt"', '"completion"', '"messages"'):
        assert name in str(error.value)


def test_invalid_row_is_named_by_its_line(tmp_path):
    rows = [MESSAGES[0], {"messages": [{"role": "user"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ValueError, match=rf"{path}:2: invalid conversational example.*'content'"):
        load_data(str(path))


def test_empty_completion_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": ""}])
    with pytest.raises(ValueError, match="'completion' is empty"):
        load_data(str(path))


@pytest.mark.parametrize("content", ["", "\n\n", "[]"], ids=["empty", "blank", "empty-list"])
def test_empty_dataset_is_an_error(tmp_path, content):
    path = tmp_path / ("d.json" if content == "[]" else "d.jsonl")
    path.write_text(content)
    with pytest.raises(ValueError, match="no examples"):
        load_data(str(path))


def test_mixed_formats_across_files_are_an_error(tmp_path):
    text = write_jsonl(tmp_path / "t.jsonl", TEXT)
    chat = write_jsonl(tmp_path / "c.jsonl", MESSAGES)
    with pytest.raises(ValueError, match="mix formats"):
        load_data([str(text), str(chat)])


def test_missing_local_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(str(tmp_path / "missing.jsonl"))


def test_unreachable_hub_dataset_is_file_not_found_naming_it():
    # Tests run with HF_DATASETS_OFFLINE=1 (conftest), so the hub cannot be reached.
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-data:train is not a local"):
        load_data("no-such-org/no-such-data:train")


def test_unsupported_file_type_is_an_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="unsupported type"):
        load_data(str(path))


def test_data_format_maps_raw_rows_before_validation(tmp_path):
    register_formatter(
        "test_question_answer",
        lambda row: {"prompt": row["question"], "completion": " " + row["answer"]},
        overwrite=True,
    )
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4", "id": 7}])
    dataset = load_data(str(path), data_format="test_question_answer")
    assert dataset.to_list() == [{"prompt": "2+2?", "completion": " 4"}]


def test_unknown_data_format_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", TEXT)
    with pytest.raises(ValueError, match="unknown data format 'no_such_format'"):
        load_data(str(path), data_format="no_such_format")


def test_in_memory_dataset_is_validated_like_a_file():
    with pytest.raises(ValueError, match="accepted formats"):
        load_data(Dataset.from_list([{"question": "2+2?"}]))
    assert load_data(Dataset.from_list(TEXT)).to_list() == TEXT


@pytest.mark.parametrize(
    "name, expected",
    [
        ("org/data", ("org/data", None, "train")),
        ("org/data:test", ("org/data", None, "test")),
        ("org/data@main:train[:100]", ("org/data", "main", "train[:100]")),
    ],
)
def test_hub_names_carry_optional_config_and_split(name, expected):
    assert parse_hub_name(name) == expected


def test_tokenized_rows_load_with_their_labels():
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "extra": 1}]
    dataset = load_data(Dataset.from_list(rows))
    assert dataset.column_names == ["input_ids", "labels"]


def test_tokenized_labels_must_match_the_ids():
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2]}]
    with pytest.raises(ValueError, match="as long as 'input_ids'"):
        load_data(Dataset.from_list(rows))


def test_json_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"text": "a"},\n {"text": "\xe9"}]')
    with pytest.raises(ValueError, match=r"d\.json:2: not UTF-8"):
        load_data(str(path))


def test_a_byte_order_mark_at_the_start_of_a_jsonl_file_is_read_as_utf8(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "caf\xc3\xa9"}\n')
    assert load_data(str(path))["text"] == ["café"]


# --- values that would crash training are refused when the data is read -----------------------

VOCAB = 100
TOKENIZED = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"input_ids": [1, 100, 3]}, "'input_ids'[1] = 100 is outside the model's vocabulary"),
        ({"input_ids": [1, -1, 3]}, "'input_ids'[1] = -1 is a negative token id"),
        ({"input_ids": [1, 2**40, 3]}, f"'input_ids'[1] = {2**40} is outside"),
        ({"input_ids": [1, 2, 3], "labels": [-100, 2, 100]}, "'labels'[2] = 100 is outside"),
        (
            {"input_ids": [1, 2, 3], "labels": [-100, -5, 3]},
            "'labels'[1] = -5 is a negative token id (or -100: no loss)",
        ),
    ],
    ids=["id-too-large", "negative-id", "huge-id", "label-too-large", "negative-label"],
)
def test_token_ids_outside_the_vocabulary_are_named_by_line_and_position(tmp_path, row, message):
    path = write_jsonl(tmp_path / "tok.jsonl", [TOKENIZED, row])
    with pytest.raises(ValueError, match=rf"{path}:2: .*{re.escape(message)}"):
        load_data(str(path), vocab_size=VOCAB)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "True"), (1.0, "1.0"), ("7", "'7'"), (None, "None")],
    ids=["bool", "float", "string", "null"],
)
def test_token_ids_that_are_not_integers_are_named_by_line_and_position(tmp_path, value, shown):
    path = write_jsonl(tmp_path / "tok.jsonl", [TOKENIZED, {"input_ids": [1, value]}])
    with pytest.raises(
        ValueError, match=rf"{path}:2: .*'input_ids'\[1\] is {shown}, not an integer"
    ):
        load_data(str(path), vocab_size=VOCAB)


def test_ignored_labels_and_ids_inside_the_vocabulary_pass():
    rows = [TOKENIZED, {"input_ids": [0, VOCAB - 1], "labels": [-100, VOCAB - 1]}]
    assert load_data(Dataset.from_list(rows), vocab_size=VOCAB).to_list()[1]["input_ids"] == [
        0,
        VOCAB - 1,
    ]


def test_the_vocabulary_size_is_asked_only_for_tokenized_data(tmp_path):
    def vocab_size():
        raise AssertionError("asked for the vocabulary of text data")

    assert len(load_data(str(write_jsonl(tmp_path / "t.jsonl", TEXT)), vocab_size=vocab_size))


def test_an_integer_beyond_64_bits_is_named_by_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [TEXT[0], {"text": "x", "score": [1, 2**70]}])
    with pytest.raises(
        ValueError, match=rf"{path}:2: 'score'\[1\] = {2**70} does not fit a 64-bit"
    ):
        load_data(str(path))


def test_rows_nested_deeper_than_the_limit_are_named_by_line(tmp_path):
    deep = json.loads("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1))
    path = write_jsonl(tmp_path / "d.jsonl", [TEXT[0], {"text": "x", "meta": deep}])
    with pytest.raises(ValueError, match=rf"{path}:2: 'meta'.* nested more than {MAX_NESTING}"):
        load_data(str(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_too_deep_for_the_parser_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    path.write_text('{"text": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ValueError, match=rf"{path}(:1)?: JSON nested too deeply"):
        load_data(str(path))


def test_a_number_too_long_for_python_is_a_clear_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input_ids": [' + "9" * 5000 + "]}\n")
    with pytest.raises(ValueError, match=rf"{path}:1: unreadable JSON number"):
        load_data(str(path))
