"""Losses: the reference computation from logits and the fused one from hidden states."""

from infosft.losses.fused import TargetScores, TokenStats, fused_weighted_nll_loss, score_targets
from infosft.losses.fused_module import FusedWeightedNLLLoss
from infosft.losses.lm_head import target_log_probs
from infosft.losses.reference import IGNORE_INDEX, compute_loss_func, weighted_nll_loss

__all__ = ["IGNORE_INDEX", "compute_loss_func", "weighted_nll_loss"]
__all__ += ["TargetScores", "TokenStats", "fused_weighted_nll_loss", "score_targets"]
__all__ += ["FusedWeightedNLLLoss"]
__all__ += ["target_log_probs"]
