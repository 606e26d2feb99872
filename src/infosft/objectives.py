"""Token-weighting schemes: pure functions of detached log-probabilities.

Every path of the package (reference loss, fused loss, trainer, CLI, inspect, plots) turns
log q into a weight through :func:`token_weights`, so a scheme is defined exactly once here.
The per-token loss of every scheme is ``-sg(w(q)) * log q`` (reference.md §1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

WeightFn = Callable[[Tensor, float], Tensor]
"""A scheme: ``fn(log_probs, p_bar) -> weights``. ``log_probs`` is a detached float32 tensor of
values in [-inf, 0]; the result must have the same shape (any float dtype, cast to float32)."""

DEFAULT_P_BAR = 0.93

_REGISTRY: dict[str, WeightFn] = {}


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate over the whole range (Maechler, 2012).

    Near 0, ``log(-expm1(x))`` keeps the digits that ``1 - exp(x)`` would cancel; far from 0,
    ``log1p(-exp(x))`` does. Returns -inf at x = 0 and 0 at x = -inf.
    """
    near_zero = x > -math.log(2.0)
    # Each branch is evaluated on a clamped input so the branch not taken cannot produce NaN.
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


def nll_weight(log_probs: Tensor, p_bar: float) -> Tensor:
    """Plain SFT: w = 1 for every target token."""
    return torch.ones_like(log_probs)


def dft_weight(log_probs: Tensor, p_bar: float) -> Tensor:
    """DFT (arXiv 2508.05629): w = q."""
    return log_probs.exp()


def infosft_weight(log_probs: Tensor, p_bar: float) -> Tensor:
    """InfoSFT (arXiv 2605.14967): w = q * max(0, 1 - logit(q) / logit(p_bar)).

    logit(q) = log q - log(1 - q) is taken from log q with log1mexp, so q -> 1 gives
    logit = +inf and weight 0, and log q = -inf gives weight 0 (never 0 * inf).
    """
    if not 0.5 < p_bar < 1.0:
        raise ValueError(
            f"infosft needs 0.5 < p_bar < 1 so that logit(p_bar) > 0, got p_bar={p_bar}; "
            f"the paper uses p_bar={DEFAULT_P_BAR}."
        )
    c = math.log(p_bar / (1.0 - p_bar))
    # Below log q = -1e4, q is 0 in float32 anyway; the floor keeps logit finite so q * factor
    # is 0 * finite instead of 0 * inf.
    lp = log_probs.clamp(min=-1e4)
    logit = lp - log1mexp(lp)
    factor = (1.0 - logit / c).clamp(min=0.0)
    return lp.exp() * factor


def register_weighting(name: str, fn: WeightFn, *, overwrite: bool = False) -> None:
    """Make ``fn`` available as ``method=name`` on every path (losses, trainer, CLI, plots).

    ``fn(log_probs, p_bar)`` receives detached float32 log-probabilities in [-inf, 0] of any
    shape and returns weights of the same shape. It should be finite for every input.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"weighting name must be an identifier-like string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"weighting {name!r} must be callable as fn(log_probs, p_bar), got {fn!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"weighting {name!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[name] = fn


def available_weightings() -> list[str]:
    """Names accepted as ``method=`` everywhere, in registration order."""
    return list(_REGISTRY)


def get_weighting(name: str) -> WeightFn:
    """The registered scheme called ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(available_weightings())
        raise ValueError(
            f"unknown weighting method {name!r}; known methods: {known}. "
            "Add one with infosft.register_weighting(name, fn)."
        ) from None


def check_p_bar(p_bar: float) -> float:
    """Validate p_bar in (0, 1) and return it as a float."""
    try:
        value = float(p_bar)
    except (TypeError, ValueError):
        raise ValueError(f"p_bar must be a number in (0, 1), got {p_bar!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"p_bar must lie strictly between 0 and 1, got {p_bar!r}")
    return value


@torch.no_grad()
def token_weights(
    log_probs: Tensor, method: str = "infosft", p_bar: float = DEFAULT_P_BAR
) -> Tensor:
    """Per-token weights w(q) of a scheme, detached.

    Args:
        log_probs: log q of the target tokens, any shape, any float dtype. Values above 0
            (rounding) are treated as 0.
        method: a registered scheme name (see :func:`available_weightings`).
        p_bar: the expert's confidence in its own token; InfoSFT's clip point.

    Returns:
        float32 tensor of ``log_probs.shape``, no grad, finite for every input in [-inf, 0].
    """
    p_bar = check_p_bar(p_bar)
    fn = get_weighting(method)
    if not torch.is_floating_point(log_probs):
        raise TypeError(f"log_probs must be a floating-point tensor, got {log_probs.dtype}")
    lp = log_probs.detach().float().clamp(max=0.0)
    weights = fn(lp, p_bar)
    if not isinstance(weights, Tensor) or weights.shape != lp.shape:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"weighting {method!r} returned {got}, expected a tensor of shape {tuple(lp.shape)}"
        )
    return weights.float()


register_weighting("nll", nll_weight)
register_weighting("dft", dft_weight)
register_weighting("infosft", infosft_weight)
