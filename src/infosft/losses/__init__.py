"""Losses: the reference computation from logits and the fused one from hidden states."""

from infosft.losses.fused import TokenStats, fused_weighted_nll_loss
from infosft.losses.reference import IGNORE_INDEX, compute_loss_func, weighted_nll_loss

__all__ = ["IGNORE_INDEX", "compute_loss_func", "weighted_nll_loss"]
__all__ += ["TokenStats", "fused_weighted_nll_loss"]
