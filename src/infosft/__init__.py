"""InfoSFT: information-aware token weighting for supervised fine-tuning (arXiv 2605.14967)."""

import importlib
from typing import Any

from infosft.losses import (
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

# Imported on first use so that `import infosft` does not pull in TRL.
_LAZY = {
    "InfoSFTConfig": "infosft.training",
    "InfoSFTTrainer": "infosft.training",
    "NonFiniteLossError": "infosft.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infosft' has no attribute {name!r}")


__all__ = [
    "DEFAULT_P_BAR",
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
