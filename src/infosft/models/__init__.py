"""Models by name: the embedded SmolLM2-135M-Instruct (:mod:`.smollm2`), local checkpoints and
hub ids (:mod:`.loading`), and chat templates infosft patches for training
(:mod:`.chat_templates`), token id lists as model inputs (:mod:`.batches`). Nothing here
imports training code.
"""

from infosft.models.batches import pad_left, pad_right
from infosft.models.chat_templates import (
    SMOLLM2_CHAT_TEMPLATE,
    SMOLLM2_TRAINING_CHAT_TEMPLATE,
    training_chat_template,
)
from infosft.models.loading import (
    TOKENIZER_FILES,
    check_model_name,
    eval_mode,
    is_hub_repo_id,
    load_config,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from infosft.models.smollm2 import (
    CACHE_ENV,
    DEFAULT_MODEL,
    SMOLLM2_HUB_ID,
    SMOLLM2_INSTALL,
    cache_dir,
    default_model_dir,
    ensure_default_model,
    is_default_model,
    smollm2_gguf_path,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "SMOLLM2_CHAT_TEMPLATE",
    "SMOLLM2_HUB_ID",
    "SMOLLM2_INSTALL",
    "SMOLLM2_TRAINING_CHAT_TEMPLATE",
    "TOKENIZER_FILES",
    "cache_dir",
    "check_model_name",
    "default_model_dir",
    "ensure_default_model",
    "eval_mode",
    "is_default_model",
    "is_hub_repo_id",
    "load_config",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "pad_left",
    "pad_right",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "smollm2_gguf_path",
    "training_chat_template",
]
