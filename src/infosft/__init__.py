"""InfoSFT: information-aware token weighting for supervised fine-tuning (arXiv 2605.14967)."""

from typing import Any

from infosft import extras
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
    available_weightings,
    get_scheme,
    register_scheme,
    register_weighting,
    token_weights,
)

__version__ = "0.1.0"

# Imported on first use so that `import infosft` needs torch alone (these need the 'train' extra).
_LAZY = {
    "InfoSFTConfig": "infosft.training.config",
    "InfoSFTTrainer": "infosft.training.trainer",
    "NonFiniteLossError": "infosft.training.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(extras.import_module(_LAZY[name], f"infosft.{name}"), name)
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
    "available_weightings",
    "compute_loss_func",
    "fused_weighted_nll_loss",
    "get_scheme",
    "register_scheme",
    "register_weighting",
    "score_targets",
    "token_weights",
    "weighted_nll_loss",
]
