"""InfoSFT: information-aware token weighting for supervised fine-tuning (arXiv 2605.14967)."""

from infosft.losses import compute_loss_func, weighted_nll_loss
from infosft.objectives import (
    DEFAULT_P_BAR,
    available_weightings,
    register_weighting,
    token_weights,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_P_BAR",
    "available_weightings",
    "compute_loss_func",
    "register_weighting",
    "token_weights",
    "weighted_nll_loss",
]
