"""The fused weighted NLL as an ``nn.Module``, for code written around Liger-Kernel's
``LigerFusedLinearCrossEntropyLoss``: configure the objective once, call it with the LM head's
weight, the final hidden states and the labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from infosft.losses.fused import fused_weighted_nll_loss
from infosft.losses.reference import IGNORE_INDEX
from infosft.objectives import Scheme, get_scheme


class FusedWeightedNLLLoss(nn.Module):
    """:func:`~infosft.losses.fused.fused_weighted_nll_loss` with its objective fixed.

    ``loss_fn = FusedWeightedNLLLoss("infosft", p_bar=0.93)`` then
    ``loss = loss_fn(model.lm_head.weight, hidden_states, labels)``.

    The arguments are the function's; the scheme is checked here, with ``p_bar`` and
    ``method_args``, so a bad setting fails before the first batch. With ``kl_to_base`` > 0 the
    frozen base model's hidden states and head are passed to :meth:`forward`.

    Differences from Liger's module: ``labels`` are aligned with ``input_ids`` ([B, T], shifted
    by one inside) where Liger takes already shifted, flattened targets; there is no
    ``reduction``: the loss is the weighted sum over target tokens divided by
    ``num_items_in_batch`` (the Hugging Face Trainer's convention), or by this batch's target
    count (the mean) when it is None.
    """

    def __init__(
        self,
        method: str | Scheme = "infosft",
        *,
        p_bar: float | None = None,
        method_args: Mapping[str, Any] | None = None,
        ignore_index: int = IGNORE_INDEX,
        kl_to_base: float = 0.0,
        chunk_size: int | None = None,
        use_compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.scheme = get_scheme(method, p_bar=p_bar, method_args=method_args)
        self.ignore_index = ignore_index
        self.kl_to_base = kl_to_base
        self.chunk_size = chunk_size
        self.use_compile = use_compile

    def forward(
        self,
        lm_head_weight: Tensor,
        hidden_states: Tensor,
        labels: Tensor,
        lm_head_bias: Tensor | None = None,
        *,
        num_items_in_batch: int | Tensor | None = None,
        base_hidden_states: Tensor | None = None,
        base_lm_head_weight: Tensor | None = None,
        base_lm_head_bias: Tensor | None = None,
        target_weights: Tensor | None = None,
    ) -> Tensor:
        """The loss, a float32 scalar (float64 for float64 inputs).

        The arguments are the function's, ``lm_head_weight`` [V, H] first (Liger's order),
        then ``hidden_states`` [B, T, H] and ``labels`` [B, T] aligned with input_ids.
        """
        return fused_weighted_nll_loss(
            hidden_states,
            lm_head_weight,
            labels,
            method=self.scheme,
            num_items_in_batch=num_items_in_batch,
            ignore_index=self.ignore_index,
            lm_head_bias=lm_head_bias,
            base_hidden_states=base_hidden_states,
            base_lm_head_weight=base_lm_head_weight,
            base_lm_head_bias=base_lm_head_bias,
            kl_to_base=self.kl_to_base,
            chunk_size=self.chunk_size,
            target_weights=target_weights,
            use_compile=self.use_compile,
        )

    def extra_repr(self) -> str:
        return f"method={self.scheme.method!r}, p_bar={self.scheme.p_bar}"
