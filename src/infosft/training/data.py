"""Training data: local JSONL/JSON/Parquet files or hub datasets, checked against TRL's formats.

Accepted rows (TRL's standard formats for SFT):

- language modeling: ``{"text": "..."}``;
- prompt-completion: ``{"prompt": "...", "completion": "..."}``, or the conversational form
  with lists of ``{"role", "content"}`` messages on both sides (loss on the completion only);
- conversational: ``{"messages": [{"role": "user", "content": "..."}, ...]}`` (loss on every
  token, or on the assistant turns with ``assistant_only_loss: true``);
- tokenized: ``{"input_ids": [...], "labels": [...]}`` (labels optional, -100 where no loss
  applies), which TRL trains on as it is.

A raw public dataset (NuminaMath-CoT, UltraFeedback, ...) is turned into one of these by a
formatter from :mod:`infosft.training.formats`, named with ``data_format``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infosft.files import read_records

if TYPE_CHECKING:
    from datasets import Dataset

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

ACCEPTED_FORMATS = (
    'language modeling {"text": str}; '
    'prompt-completion {"prompt": str, "completion": str}; '
    'conversational {"messages": [{"role": str, "content": str}, ...]}; '
    'conversational prompt-completion {"prompt": [messages], "completion": [messages]}; '
    'tokenized {"input_ids": [int], "labels": [int]}'
)

# The columns that make up each format; anything else in a row is dropped.
FORMAT_COLUMNS = {
    "tokenized": ("input_ids",),
    "prompt-completion": ("prompt", "completion"),
    "conversational": ("messages",),
    "language modeling": ("text",),
}
# Kept beside a format's columns when present: TRL passes tools to the chat template and reads
# a tokenized row's labels.
OPTIONAL_COLUMNS = ("tools", "labels")
MAX_NESTING = 32
"""Deepest nesting of lists and objects a data row may have (a conversation with tool schemas
needs well under 10; Arrow, which holds the rows, gives up past 64)."""
# Arrow holds every integer of a row as a signed 64-bit number.
INT64_LIMIT = 2**63


def detect_format(columns: Iterable[str]) -> str:
    """The TRL format named by a row's columns: "prompt-completion", "conversational" or
    "language modeling"; ValueError listing the accepted formats otherwise."""
    present = set(columns)
    for name, required in FORMAT_COLUMNS.items():
        if present.issuperset(required):
            return name
    raise ValueError(
        f"no training format found in columns {sorted(present)}; accepted formats: "
        f"{ACCEPTED_FORMATS}. For a raw public dataset pick a --data-format formatter."
    )


def _message_list_problem(value: Any) -> str | None:
    """Why ``value`` is not a non-empty list of {"role": str, "content": str}; None if it is."""
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of messages, got {type(value).__name__}"
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            return f"message {index} is {type(message).__name__}, not a dict"
        if not isinstance(message.get("role"), str):
            return f"message {index} has no string 'role'"
        if not isinstance(message.get("content"), str):
            return f"message {index} has no string 'content'"
    return None


def _token_ids_problem(input_ids: Any, labels: Any, vocab_size: int | None = None) -> str | None:
    """Why a tokenized row is invalid: ids must be a non-empty list of ints in
    [0, ``vocab_size``), labels (if given) as many ints, each an id or -100 (no loss)."""
    if not isinstance(input_ids, list) or not input_ids:
        return "'input_ids' must be a non-empty list of token ids"
    problem = _ids_problem("input_ids", input_ids, vocab_size)
    if problem is not None or labels is None:
        return problem
    if not isinstance(labels, list) or len(labels) != len(input_ids):
        return "'labels' must be a list of integers as long as 'input_ids'"
    from infosft.losses import IGNORE_INDEX

    return _ids_problem("labels", labels, vocab_size, ignored=IGNORE_INDEX)


def _ids_problem(
    key: str, ids: list[Any], vocab_size: int | None, ignored: int | None = None
) -> str | None:
    """Why ``ids`` (the list ``key`` of a row) holds something other than token ids of a
    vocabulary of ``vocab_size`` (any size when None) or ``ignored``; None when it does not."""
    for position, value in enumerate(ids):
        if type(value) is not int:  # bool is an int subclass, and no token id
            return f"{key!r}[{position}] is {value!r:.40}, not an integer token id"
        if value == ignored:
            continue
        allowed = "" if ignored is None else f" (or {ignored}: no loss)"
        if value < 0:
            return f"{key!r}[{position}] = {value} is a negative token id{allowed}"
        if vocab_size is not None and value >= vocab_size:
            return (
                f"{key!r}[{position}] = {value!r:.40} is outside the model's vocabulary "
                f"[0, {vocab_size}){allowed}; tokenize the data with the model's own tokenizer"
            )
    return None


def _nesting_problem(row: dict[str, Any]) -> str | None:
    """Why ``row`` (parsed JSON) cannot be held as a dataset row: nesting deeper than
    MAX_NESTING, or an integer beyond 64 bits; None when it can."""
    pending = [(value, repr(key), 1) for key, value in row.items()]
    while pending:
        value, where, depth = pending.pop()
        if depth > MAX_NESTING:
            return f"{where} is nested more than {MAX_NESTING} lists/objects deep"
        if isinstance(value, dict):
            pending.extend((item, f"{where}[{key!r}]", depth + 1) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        elif type(value) is int and not -INT64_LIMIT <= value < INT64_LIMIT:
            return f"{where} = {value!r:.40} does not fit a 64-bit integer"
    return None


def row_problem(row: dict[str, Any], data_format: str, vocab_size: int | None = None) -> str | None:
    """Why ``row`` is not a valid example of ``data_format``; None when it is. Token ids are
    checked against ``vocab_size`` when it is given."""
    if data_format == "tokenized":
        return _token_ids_problem(row.get("input_ids"), row.get("labels"), vocab_size)
    if data_format == "language modeling":
        text = row.get("text")
        if not isinstance(text, str) or not text:
            return f"'text' must be a non-empty string, got {text!r:.60}"
        return None
    if data_format == "conversational":
        problem = _message_list_problem(row.get("messages"))
        return None if problem is None else f"'messages': {problem}"
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return None if completion else "'completion' is empty"
    for key, value in (("prompt", prompt), ("completion", completion)):
        problem = _message_list_problem(value)
        if problem is not None:
            return (
                f"{key!r} must be a string (with a string partner) or a list of messages: {problem}"
            )
    return None


def parse_hub_name(name: str) -> tuple[str, str | None, str]:
    """``NAME[@CONFIG][:SPLIT]`` -> (name, config, split); the split defaults to "train".

    The split may carry a slice as ``datasets`` accepts it:
    ``AI-MO/NuminaMath-CoT:train[:1000]`` is the first 1000 training rows.
    """
    name, _, split = name.partition(":")
    name, _, config = name.partition("@")
    return name, config or None, split or "train"


def load_source(source: str | Dataset) -> tuple[Dataset, Callable[[int], str]]:
    """One data source as a Dataset, and a function naming the location of row i in messages.

    A path with a .jsonl/.json/.parquet suffix is read locally (FileNotFoundError if it is
    missing); any other string is a hub dataset ``NAME[@CONFIG][:SPLIT]``; a Dataset is used
    as it is.
    """
    from datasets import Dataset

    if isinstance(source, Dataset):
        return source, lambda i: f"in-memory dataset row {i}"
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if path.is_dir():
            raise ValueError(f"{source} is a directory; pass the data files in it")
        if not path.is_file():
            raise FileNotFoundError(f"data file {source} does not exist")
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return _from_rows(*read_records(path), source)
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as err:
                raise ValueError(f"{source}: not a readable Parquet file ({err})") from None
            return Dataset(table), lambda i: f"{source} row {i}"
        raise ValueError(
            f"data file {source} has an unsupported type; use one of {', '.join(LOCAL_SUFFIXES)} "
            "or a hub dataset name"
        )
    return _load_hub(source), lambda i: f"{source} row {i}"


def _from_rows(
    rows: list[dict[str, Any]], places: list[str], source: str
) -> tuple[Dataset, Callable[[int], str]]:
    """A Dataset of parsed JSON rows and its row locator (``places[i]`` names row i).

    ValueError naming the first row that Arrow cannot hold or whose token ids are not integers,
    before Arrow would fail on it (or turn every row's ids into floats)."""
    from datasets import Dataset

    if not rows:
        raise ValueError(f"data file {source} holds no examples")
    for index, row in enumerate(rows):
        problem = _nesting_problem(row)
        if problem is None and "input_ids" in row:
            ids_problem = _token_ids_problem(row["input_ids"], row.get("labels"))
            problem = ids_problem and f"invalid tokenized example: {ids_problem}"
        if problem is not None:
            raise ValueError(f"{places[index]}: {problem}")
    try:
        return Dataset.from_list(rows), places.__getitem__
    except (TypeError, ValueError) as err:
        # pyarrow's errors subclass these: one column has different types in different rows.
        raise ValueError(f"{source}: rows do not share one schema ({err})") from None


def _load_hub(source: str) -> Dataset:
    import datasets

    name, config, split = parse_hub_name(source)
    try:
        return datasets.load_dataset(name, config, split=split)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise FileNotFoundError(
            f"{source} is not a local data file ({', '.join(LOCAL_SUFFIXES)}) and could not be "
            f"loaded from the Hugging Face Hub: {err}"
        ) from None


def apply_formatter(dataset: Dataset, data_format: str) -> Dataset:
    """Turn raw rows into a TRL format with the registered formatter ``data_format``,
    after its dataset-level row filter (if any)."""
    from infosft.training.formats import get_formatter, get_row_filter

    formatter = get_formatter(data_format)
    row_filter = get_row_filter(data_format)
    if row_filter is not None:
        dataset = dataset.filter(row_filter, desc=f"Selecting rows for {data_format}")
    return dataset.map(
        formatter, remove_columns=dataset.column_names, desc=f"Formatting as {data_format}"
    )


def validate(dataset: Dataset, locate: Callable[[int], str], source: str) -> Dataset:
    """Check every row against the format of the dataset's columns; keep only its columns.

    Raises ValueError for an empty dataset, for columns that make no accepted format (listing
    them), and for the first invalid row (named by ``locate(index)``).
    """
    if len(dataset) == 0:
        raise ValueError(f"{source} holds no examples")
    data_format = detect_format(dataset.column_names)
    columns = [*FORMAT_COLUMNS[data_format]]
    columns += [c for c in OPTIONAL_COLUMNS if c in dataset.column_names]
    dataset = dataset.select_columns(columns)
    for index, row in enumerate(dataset):
        problem = row_problem(row, data_format)
        if problem is not None:
            raise ValueError(
                f"{locate(index)}: invalid {data_format} example: {problem}. "
                f"Accepted formats: {ACCEPTED_FORMATS}"
            )
    return dataset


def check_token_ids(dataset: Dataset, vocab_size: int, locate: Callable[[int], str]) -> None:
    """ValueError naming the first row of a tokenized ``dataset`` whose input_ids or labels
    fall outside a vocabulary of ``vocab_size`` ids (the model's embedding rows)."""
    for index, row in enumerate(dataset):
        problem = _token_ids_problem(row["input_ids"], row.get("labels"), vocab_size)
        if problem is not None:
            raise ValueError(f"{locate(index)}: invalid tokenized example: {problem}")


def load_data(
    sources: str | Dataset | Iterable[str | Dataset],
    data_format: str | None = None,
    vocab_size: int | Callable[[], int] | None = None,
) -> Dataset:
    """Load, format, validate and concatenate one or more data sources into one Dataset.

    Args:
        sources: local .jsonl/.json/.parquet files, hub dataset names ``NAME[@CONFIG][:SPLIT]``
            or ``datasets.Dataset`` objects.
        data_format: a formatter name from :mod:`infosft.training.formats` applied to every row
            first (for raw public datasets); None when the data is in a TRL format already.
        vocab_size: the model's number of token ids, or a function returning it (called only
            for tokenized data, after every other check): tokenized rows must stay below it.

    Returns:
        A Dataset with only the columns of one TRL format (see :data:`ACCEPTED_FORMATS`).
    """
    from datasets import Dataset, concatenate_datasets

    sources = [sources] if isinstance(sources, (str, Dataset)) else list(sources)
    if not sources:
        raise ValueError("no training data given; pass one or more files or hub dataset names")
    parts, locators = [], []
    for source in sources:
        dataset, locate = load_source(source)
        name = source if isinstance(source, str) else "in-memory dataset"
        if data_format is not None:
            dataset = apply_formatter(dataset, data_format)
            locate = _formatted_locator(name, data_format)
        parts.append(validate(dataset, locate, name))
        locators.append(locate)
    formats = {detect_format(part.column_names) for part in parts}
    if len(formats) > 1:
        raise ValueError(
            f"the data sources mix formats ({', '.join(sorted(formats))}); use one format for all"
        )
    if formats == {"tokenized"} and vocab_size is not None:
        size = vocab_size() if callable(vocab_size) else vocab_size
        for part, locate in zip(parts, locators, strict=True):
            check_token_ids(part, size, locate)
    if len(parts) == 1:
        return parts[0]
    try:
        return concatenate_datasets([part.cast(parts[0].features) for part in parts])
    except (TypeError, ValueError) as err:
        raise ValueError(f"the data sources have incompatible column types ({err})") from None


def _formatted_locator(source: str, data_format: str) -> Callable[[int], str]:
    return lambda i: f"{source} example {i} (after --data-format {data_format})"


def pad_tokenized(rows: list[dict[str, list[int]]], pad_token_id: int = 0) -> tuple[Any, Any, Any]:
    """Tokenized rows (``input_ids``, ``labels``) -> right-padded ``input_ids``, ``attention_mask``
    and ``labels``, each [B, T] int64 on the CPU; labels are IGNORE_INDEX on padding."""
    from infosft.losses import IGNORE_INDEX
    from infosft.models import pad_right

    input_ids, attention_mask = pad_right([row["input_ids"] for row in rows], pad_token_id)
    labels, _ = pad_right([row["labels"] for row in rows], IGNORE_INDEX)
    return input_ids, attention_mask, labels
