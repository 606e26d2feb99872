"""Models by name: the embedded default, local checkpoint directories and hub ids."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infosft.models.smollm2 import DEFAULT_MODEL, ensure_default_model, is_default_model

# Any of these in a checkpoint directory means its tokenizer was saved with it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# "org/name" or "name" as on the Hugging Face Hub; anything else is taken as a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model_name(value: Any) -> str:
    """``value`` if it can name a model: one non-empty string, the embedded default's name, a
    checkpoint directory or a hub id (which of them is :func:`resolve_model_path`'s to find)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"model must be one name, checkpoint directory or hub id (a string), got {value!r}"
        )
    return value


def is_hub_repo_id(name: str) -> bool:
    """Whether ``name`` is written as a Hub repository id ``org/name`` (a model's or a
    dataset's); whether it is one or a local path of that shape is the caller's to check."""
    return _HUB_REPO_ID.fullmatch(name) is not None


def resolve_model_path(name_or_path: str) -> str:
    """The directory or hub id that ``from_pretrained`` should load for ``name_or_path``.

    - ``"smollm2-135m-instruct"`` (the default): the cached conversion, created on first use;
    - a local directory: itself (it must hold a config.json);
    - ``"org/name"``: returned unchanged as a Hugging Face Hub id.

    Raises FileNotFoundError for a local path that does not exist or is not a checkpoint.
    """
    if is_default_model(name_or_path):
        return str(ensure_default_model())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model directory {name_or_path} has no config.json; pass a Hugging Face "
                "checkpoint directory (config.json + safetensors + tokenizer)"
            )
        return str(path)
    if path.exists():
        raise FileNotFoundError(
            f"model {name_or_path} is a file; pass the checkpoint directory that contains it"
        )
    if not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(
            f"model directory {name_or_path} does not exist (and it is not a hub id such as "
            f"'org/name'); the embedded default is {DEFAULT_MODEL!r}"
        )
    return name_or_path


def resolve_dtype(dtype: Any) -> Any:
    """A torch dtype for ``dtype`` (a dtype, its name such as "bfloat16", "auto" or None)."""
    import torch

    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        return getattr(torch, dtype)
    return dtype


def _from_pretrained(auto_class: Any, name_or_path: str, path: str, /, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(path, **kwargs)``; its OSError (transformers reports a
    checkpoint it cannot read, such as a broken config.json or no weights file, or cannot fetch
    that way) as the user's error."""
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except OSError as err:
        if Path(path).is_dir():
            raise ValueError(f"model directory {name_or_path} could not be loaded: {err}") from err
        raise FileNotFoundError(
            f"model {name_or_path!r} is not a local directory and could not be loaded from the "
            f"Hugging Face Hub: {err}"
        ) from err


def load_tokenizer(name_or_path: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a model by name, local path or hub id (see resolve_model_path); it
    always has a pad token (the eos token when the checkpoint defines none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model directory {name_or_path} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); "
            "save the tokenizer next to the model (tokenizer.save_pretrained(DIR))"
        )
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(name_or_path: str = DEFAULT_MODEL) -> Any:
    """The ``transformers`` config of a model by name, local path or hub id, without its
    weights."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, name_or_path, resolve_model_path(name_or_path))


def load_model_and_tokenizer(
    name_or_path: str = DEFAULT_MODEL, *, dtype: Any = None, device: Any = None, **model_kwargs: Any
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer by name, local path or hub id (see resolve_model_path).

    Args:
        name_or_path: ``"smollm2-135m-instruct"``, a checkpoint directory, or a hub id.
        dtype: a torch dtype or its name ("float32", "bfloat16"); None keeps the saved dtype.
        device: where to move the model ("cpu", "cuda", a torch.device); None leaves it on CPU.
        **model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (for example
            ``attn_implementation``).

    Returns:
        (model, tokenizer): a ``PreTrainedModel`` in eval mode and its tokenizer
        (:func:`load_tokenizer`).
    """
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(dtype)
    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    model = _from_pretrained(
        AutoModelForCausalLM, name_or_path, path, dtype=dtype or "auto", **model_kwargs
    )
    if device is not None:
        model.to(device)
    return model, tokenizer


def model_vocab_size(name_or_path: str, **config_kwargs: Any) -> int:
    """The number of token ids the model ``name_or_path`` embeds (its config's vocab_size),
    read from its config.json without loading weights."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, **config_kwargs)
    except (OSError, ValueError) as err:
        where = "model directory" if Path(path).is_dir() else "model"
        raise ValueError(f"{where} {name_or_path}: its config could not be read: {err}") from err
    return int(config.get_text_config().vocab_size)


def resolve_device(name: str | None, where: str = "device") -> str:
    """The torch device to load models on (None: cuda when available, else cpu); a clear
    error, naming ``where`` the name came from, for unknown or absent devices."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"unknown {where} {name!r} ({err}); use cpu, cuda, cuda:1, ...") from None
    if device.type == "cpu":
        return name
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type == "mps":
        available = torch.backends.mps.is_available
    if available is None or not available():
        raise ValueError(
            f"{where} {name}: no {device.type} device is available here; use {where} cpu"
        )
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"{where} {name}: only {count()} {device.type} device(s) here")
    return name


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """``model`` in eval mode while active (no dropout); its training mode is restored after,
    also on an error, so that measuring a model in the middle of training does not change it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
