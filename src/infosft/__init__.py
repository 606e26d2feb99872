"""InfoSFT: information-aware token weighting for supervised fine-tuning (arXiv 2605.14967)."""

import importlib
from typing import Any

from infosft.extras import missing_extra_error
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
    "InfoSFTConfig": "infosft.training",
    "InfoSFTTrainer": "infosft.training",
    "NonFiniteLossError": "infosft.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            return getattr(importlib.import_module(_LAZY[name]), name)
        except ModuleNotFoundError as err:
            missing = missing_extra_error(err, f"infosft.{name}")
            if missing is None:
                raise
            raise missing from err
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
