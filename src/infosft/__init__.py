"""InfoSFT: information-aware token weighting for supervised fine-tuning (arXiv 2605.14967)."""

from typing import Any

from infosft import extras, objectives
from infosft.losses import (
    FusedWeightedNLLLoss,
    TokenStats,
    compute_loss_func,
    fused_weighted_nll_loss,
    score_targets,
    weighted_nll_loss,
)
from infosft.objectives import (
    DEFAULT_P_BAR,
    Scheme,
    TokenInputs,
    available_schemes,
    get_scheme,
    register_scheme,
    token_weights,
)

__version__ = "0.1.0"

# Imported on first use so that `import infosft` needs torch alone (these need the 'train' extra).
_LAZY = {
    "InfoSFTConfig": "infosft.training.config",
    "InfoSFTTrainer": "infosft.training.trainer",
    "NonFiniteLossError": "infosft.training.trainer",
}

# Deprecated spellings of the scheme registry; each warns once when called.
_DEPRECATED = ("available_weightings", "get_weighting", "register_weighting")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(extras.import_module(_LAZY[name], f"infosft.{name}"), name)
    if name in _DEPRECATED:
        return getattr(objectives, name)
    raise AttributeError(f"module 'infosft' has no attribute {name!r}")


__all__ = [
    "DEFAULT_P_BAR",
    "FusedWeightedNLLLoss",
    "InfoSFTConfig",
    "InfoSFTTrainer",
    "NonFiniteLossError",
    "Scheme",
    "TokenInputs",
    "TokenStats",
    "available_schemes",
    "compute_loss_func",
    "fused_weighted_nll_loss",
    "get_scheme",
    "register_scheme",
    "score_targets",
    "token_weights",
    "weighted_nll_loss",
]
