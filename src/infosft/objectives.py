"""Token-weighting schemes: pure functions of detached per-token values.

Every path of the package (reference loss, fused loss, trainer, CLI, inspect, plots) gets its
weights from a scheme defined once here. The per-token loss of every scheme is
``-sg(w) * log q`` (arXiv 2605.14967); ``method`` names the scheme everywhere.

A scheme is resolved and validated once, before any token is seen::

    scheme = get_scheme("eaft", p_bar=0.93, method_args={"top_k": 20, "alpha": 1.0})

The resulting :class:`Scheme` tells the loss engines what to compute for each target token
(:attr:`Scheme.needs_entropy`, :attr:`Scheme.top_k`), whether it needs a statistic of the whole
micro-batch first (:meth:`Scheme.statistic`) and whether the loss divides by the weight sum
(:attr:`Scheme.self_normalised`); :meth:`Scheme.weights` then maps per-token values to weights.
A scheme never sees how the rows are chunked: it receives the values of some target tokens as
:class:`TokenInputs` and returns one weight per token.

A scheme of your own is one :func:`register_scheme` call; a function of q alone reads
``tokens.log_probs`` only
(``register_scheme("sqrt_q", lambda tokens, p_bar: (0.5 * tokens.log_probs).exp())``). The older
names ``register_weighting``, ``available_weightings`` and ``get_weighting`` remain as deprecated
aliases.

Built in (q = p(target), l = -log q): ``nll`` (w = 1), ``dft`` (w = q), ``infosft``
(w = q max(0, 1 - logit(q)/logit(p_bar))), ``eaft`` (w = (H_K / ln K)^alpha, H_K the entropy of
the softmax over the K largest logits), ``talr`` (w = max(q^(1/tau), 0.01), tau the median over
the micro-batch's sequences of their mean l), ``memft`` (w = 1[l > ln 2], loss divided by the
weight sum), ``dft_mix`` (w = alpha q + 1 - alpha), ``power`` (w = k q^k).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor

DEFAULT_P_BAR = 0.93

# Below log q = -1e4, q is 0 in float32 anyway; flooring log q there keeps every derived value
# (logit, log q / tau) finite, so a zero weight is 0 * finite and never 0 * inf.
LOG_Q_FLOOR = -1e4

MAX_WEIGHT = 1e4
"""The largest weight a scheme may give, checked when it is registered or resolved.

A weight scales its token's gradient against plain SFT's w = 1: w = 1e4 already multiplies one
token's step 10^4-fold at a learning rate tuned for w ~ 1, and such gradients soon leave fp16's
range (65504). The built-in schemes stay within [0, max(1, k)] (power's w = k q^k)."""


class TokenInputs(NamedTuple):
    """What a scheme's weight function receives: values of N target tokens, all detached.

    ``log_probs`` is always there; the others are None unless the scheme asked for them.
    """

    log_probs: Tensor
    """[N] float32 log q of each target token, in [-inf, 0]."""
    entropy: Tensor | None = None
    """[N] float32 entropy (nats) of the model's full next-token distribution."""
    top_k_entropy: Tensor | None = None
    """[N] float32 entropy (nats) of the softmax over the token's K largest logits."""
    statistic: Tensor | None = None
    """float32 value of the scheme's batch statistic over the whole micro-batch (e.g. TALR's
    tau, 0-dim); the same for every token of the micro-batch."""


WeightFn = Callable[[Tensor, float], Tensor]
"""A function of q alone: ``fn(log_probs, p_bar) -> weights``. ``log_probs`` is a detached
float32 tensor of values in [-inf, 0]; the result must have the same shape (any float dtype,
cast to float32)."""

SchemeWeightFn = Callable[..., Tensor]
"""A scheme's weight: ``weight(tokens: TokenInputs, p_bar, **method_args) -> [N] weights``."""

BatchStatisticFn = Callable[[TokenInputs, Tensor], Tensor]
"""``fn(tokens, sequence_ids) -> statistic``: tokens of a whole micro-batch (``statistic`` is
None) and the [N] int64 id of the sequence each one belongs to."""


@dataclass(frozen=True)
class _Definition:
    """A registered scheme before its parameters are bound."""

    weight: SchemeWeightFn
    defaults: Mapping[str, int | float]
    entropy: bool
    top_k_entropy: bool
    batch_statistic: BatchStatisticFn | None
    self_normalised: bool
    validate: Callable[..., None] | None


_REGISTRY: dict[str, _Definition] = {}


@dataclass(frozen=True, eq=False)
class Scheme:
    """A weighting scheme with validated parameters: what the loss engines call.

    Build it with :func:`get_scheme`. Every loss entry point also accepts a method name and
    resolves it once per call.
    """

    method: str
    p_bar: float
    method_args: Mapping[str, int | float]
    """Every argument of the scheme, defaults filled in (read-only)."""
    needs_entropy: bool
    """The weight reads :attr:`TokenInputs.entropy`."""
    top_k: int | None
    """K of :attr:`TokenInputs.top_k_entropy` when the weight reads it, else None."""
    self_normalised: bool
    """The loss divides by the weight sum instead of the token count (see
    :func:`infosft.losses.reference.loss_denominator`)."""
    _weight: SchemeWeightFn = field(repr=False)
    _batch_statistic: BatchStatisticFn | None = field(repr=False)

    def __deepcopy__(self, memo: dict) -> Scheme:
        return self  # immutable

    def __reduce__(self) -> tuple:
        # Pickled by name (e.g. inside saved training arguments): unpickling resolves it again
        # from the registry of the loading process.
        return (_resolve, (self.method, self.p_bar, dict(self.method_args)))

    @property
    def needs_batch_statistic(self) -> bool:
        """The weights need a statistic of the whole micro-batch before any is known."""
        return self._batch_statistic is not None

    @property
    def q_only(self) -> bool:
        """The weight is a function of q alone (it has a weight curve w(q))."""
        return not (self.needs_entropy or self.top_k is not None or self.needs_batch_statistic)

    def depends_on(self) -> list[str]:
        """What the weight reads besides q, in words (empty for a function of q alone)."""
        needs = []
        if self.needs_entropy:
            needs.append("the token's entropy")
        if self.top_k is not None:
            needs.append(f"the token's top-{self.top_k} entropy")
        if self._batch_statistic is not None:
            needs.append(f"a micro-batch statistic ({self._batch_statistic.__name__})")
        return needs

    def statistic(self, tokens: TokenInputs, sequence_ids: Tensor) -> Tensor | None:
        """The batch statistic over all target tokens of a micro-batch, or None.

        Args:
            tokens: every target token of the micro-batch (``statistic`` None).
            sequence_ids: [N] int64, the sequence (row of labels) each token belongs to.
        """
        if self._batch_statistic is None:
            return None
        return self._batch_statistic(_as_float32(tokens), sequence_ids).detach().float()

    def weights(self, tokens: TokenInputs) -> Tensor:
        """float32 weights [N] of the tokens, detached; finite for log q in [-inf, 0].

        ``tokens`` must carry what the scheme reads (entropy, top-K entropy, the statistic).
        """
        with torch.no_grad():
            return self._weight(_as_float32(tokens), self.p_bar, **self.method_args).float()


def _as_float32(tokens: TokenInputs) -> TokenInputs:
    """Detached float32 values; log q above 0 (rounding) is read as 0."""
    values = TokenInputs(*(None if t is None else t.detach().float() for t in tokens))
    return values._replace(log_probs=values.log_probs.clamp(max=0.0))


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


# ---- functions of q alone ------------------------------------------------------------------


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
    c = math.log(p_bar / (1.0 - p_bar))
    lp = log_probs.clamp(min=LOG_Q_FLOOR)
    logit = lp - log1mexp(lp)
    factor = (1.0 - logit / c).clamp(min=0.0)
    return lp.exp() * factor


def _check_infosft(p_bar: float) -> None:
    if not 0.5 < p_bar < 1.0:
        raise ValueError(
            f"infosft needs 0.5 < p_bar < 1 so that logit(p_bar) > 0, got p_bar={p_bar}; "
            f"the paper uses p_bar={DEFAULT_P_BAR}."
        )


def memft_weight(log_probs: Tensor, p_bar: float) -> Tensor:
    """MemFT (arXiv 2605.30260): w = 1[l > ln 2], i.e. only tokens with q < 1/2 are trained;
    the loss is self-normalised, sum(w l) / max(sum w, 1)."""
    return (log_probs < -math.log(2.0)).float()


def dft_mix_weight(tokens: TokenInputs, p_bar: float, *, alpha: float) -> Tensor:
    """DFT/NLL interpolation: w = alpha * q + (1 - alpha)."""
    return alpha * tokens.log_probs.exp() + (1.0 - alpha)


def power_weight(tokens: TokenInputs, p_bar: float, *, k: float) -> Tensor:
    """The -p^k family ("Beyond Log Likelihood", arXiv 2510.00526): w = k q^k, the weight that
    makes -sg(w) log q have the gradient of -q^k."""
    return k * (k * tokens.log_probs).exp()


# ---- schemes that read more than q ---------------------------------------------------------


def eaft_weight(tokens: TokenInputs, p_bar: float, *, top_k: int, alpha: float) -> Tensor:
    """EAFT (arXiv 2601.02151): w = (H_K / ln K)^alpha, H_K the entropy of the softmax over the
    token's K largest logits; confident (low-entropy) tokens are down-weighted."""
    # H_K lies in [0, ln K]; the clamp removes rounding outside it (a negative base with a
    # fractional alpha would be NaN).
    normalised = (tokens.top_k_entropy / math.log(top_k)).clamp(0.0, 1.0)
    return normalised.pow(alpha)


def talr_tau(tokens: TokenInputs, sequence_ids: Tensor) -> Tensor:
    """TALR's tau: the median over sequences of each sequence's mean l = -log q (the mean of the
    two middle values for an even count); only sequences with targets count. 0-dim float32."""
    nll = -tokens.log_probs.clamp(min=LOG_Q_FLOOR)
    if nll.numel() == 0:
        return nll.new_ones(())
    _, sequence = torch.unique(sequence_ids, return_inverse=True)
    count = torch.bincount(sequence).to(nll.dtype)
    total = torch.zeros_like(count).index_add_(0, sequence, nll)
    return torch.quantile(total / count, 0.5, interpolation="midpoint")


def talr_weight(tokens: TokenInputs, p_bar: float) -> Tensor:
    """TALR (arXiv 2509.20758): w = max(q^(1/tau), 0.01), tau = :func:`talr_tau`."""
    # tau -> 0 (every q = 1) is the limit q^inf; the floors keep log q / tau finite.
    tau = tokens.statistic.clamp(min=1e-12)
    return (tokens.log_probs.clamp(min=LOG_Q_FLOOR) / tau).exp().clamp(min=0.01)


def _check_eaft(p_bar: float, *, top_k: int, alpha: float) -> None:
    if top_k < 2:
        raise ValueError(f"eaft needs top_k >= 2 (its weight divides by ln K), got top_k={top_k}")
    if not 0.0 <= alpha < math.inf:
        raise ValueError(f"eaft needs a finite alpha >= 0, got alpha={alpha}")


def _check_dft_mix(p_bar: float, *, alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"dft_mix needs 0 <= alpha <= 1 (alpha q + 1 - alpha), got {alpha}")


def _check_power(p_bar: float, *, k: float) -> None:
    if not 0.0 < k < math.inf:
        raise ValueError(f"power needs a finite k > 0 (w = k q^k), got k={k}")


# ---- scalar arguments ----------------------------------------------------------------------


def is_real_number(value: Any) -> bool:
    """A Python or NumPy int or float, or a one-element int/float tensor (any device); a bool
    is not a number here."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe(value: Any) -> str:
    """A short description of a refused value, for an error message."""
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return f"a {value.dtype} tensor holding {value.item()!r}"
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def real_number(name: str, value: Any, requirement: str) -> float:
    """``value`` as a float if it is one real number (:func:`is_real_number`), else ValueError
    "``name`` must be ``requirement``". The range is the caller's to check; a tensor is read
    with ``.item()``, which waits for its device."""
    if not is_real_number(value):
        raise ValueError(f"{name} must be {requirement}, got {describe(value)}")
    number = value.item() if isinstance(value, Tensor) else value
    try:
        return float(number)
    except OverflowError:  # a Python int beyond float's range
        return math.inf if number > 0 else -math.inf


def check_p_bar(p_bar: Any) -> float:
    """Validate p_bar, a number in (0, 1), and return it as a float."""
    value = real_number("p_bar", p_bar, "a number in (0, 1)")
    if not 0.0 < value < 1.0:
        raise ValueError(f"p_bar must lie strictly between 0 and 1, got {p_bar!r}")
    return value


# ---- registry ------------------------------------------------------------------------------


# Bindings whose weight passed probe_scheme: (id(definition), p_bar, arguments) -> definition.
_PROBED: dict[tuple[int, float, tuple[tuple[str, Any], ...]], _Definition] = {}


def _of_q(fn: WeightFn) -> SchemeWeightFn:
    """A function of q alone as a scheme's weight: ``weight(tokens, p_bar)``."""

    def weight(tokens: TokenInputs, p_bar: float) -> Tensor:
        return fn(tokens.log_probs, p_bar)

    weight.__name__ = getattr(fn, "__name__", "weight")
    return weight


def register_scheme(
    name: str,
    weight: SchemeWeightFn,
    *,
    method_args: Mapping[str, int | float] | None = None,
    entropy: bool = False,
    top_k_entropy: bool = False,
    batch_statistic: BatchStatisticFn | None = None,
    self_normalised: bool = False,
    validate: Callable[..., None] | None = None,
    overwrite: bool = False,
) -> None:
    """Make ``weight`` available as ``method=name`` on every path (losses, trainer, CLI, plots).

    Args:
        name: the ``method`` name.
        weight: ``weight(tokens, p_bar, **method_args) -> [N]`` float weights, each finite and
            within [0, :data:`MAX_WEIGHT`], from the :class:`TokenInputs` of N target tokens.
            A function of q alone reads ``tokens.log_probs`` ([N] float32, detached) only.
        method_args: the scheme's arguments and their (finite) defaults; a user's value is
            converted to the default's type (int or float), unknown names are refused.
        entropy: ``tokens.entropy`` (full-vocabulary entropy) is filled in.
        top_k_entropy: ``tokens.top_k_entropy`` is filled in, with K = the ``top_k`` argument
            (which ``method_args`` must declare).
        batch_statistic: ``fn(tokens, sequence_ids)`` computed over all target tokens of the
            micro-batch before any weight; its value arrives as ``tokens.statistic``. The fused
            loss then makes one extra pass over the LM head without gradients.
        self_normalised: the loss is ``sum(w l) / max(sum w, 1)`` instead of dividing by the
            token count (see :func:`infosft.losses.reference.loss_denominator`).
        validate: ``validate(p_bar, **method_args)`` raising ValueError for bad values.
        overwrite: replace a scheme registered under ``name``.

    The defaults (with p_bar = 0.93) must pass ``validate``, and the weight is tried on a dense
    grid of tokens (:func:`probe_scheme`) here and whenever the scheme is resolved with other
    arguments; either failing is a ValueError, and nothing is registered.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"scheme name must be an identifier-like string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"scheme {name!r} is already registered; pass overwrite=True to replace it"
        )
    functions = {"weight": weight, "batch_statistic": batch_statistic, "validate": validate}
    for role, fn in functions.items():
        if not callable(fn) and (fn is not None or role == "weight"):
            raise ValueError(f"scheme {name!r}: {role} must be callable, got {fn!r}")
    defaults = dict(method_args or {})
    for arg, value in defaults.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(arg, str) or not number or not math.isfinite(value):
            raise ValueError(
                f"scheme {name!r}: method_args must map names to finite numbers, got "
                f"{arg!r}: {value!r}"
            )
    if top_k_entropy and not isinstance(defaults.get("top_k"), int):
        raise ValueError(
            f"scheme {name!r} reads the top-K entropy, so method_args must declare an int top_k"
        )
    definition = _Definition(
        weight,
        MappingProxyType(defaults),
        entropy,
        top_k_entropy,
        batch_statistic,
        self_normalised,
        validate,
    )
    # Registered only once its defaults pass its own check and probe_scheme.
    _bind(name, definition, None, None)
    _REGISTRY[name] = definition


def available_schemes() -> list[str]:
    """Names accepted as ``method=`` everywhere, in registration order."""
    return list(_REGISTRY)


def available_weightings() -> list[str]:
    """Deprecated name of :func:`available_schemes`."""
    _warn_renamed("available_weightings", "available_schemes")
    return available_schemes()


def register_weighting(name: str, fn: WeightFn, *, overwrite: bool = False) -> None:
    """Deprecated: ``register_scheme(name, lambda tokens, p_bar: fn(tokens.log_probs, p_bar))``."""
    _warn_renamed("register_weighting", "register_scheme")
    if not callable(fn):
        raise ValueError(f"scheme {name!r} must be callable as fn(log_probs, p_bar), got {fn!r}")
    register_scheme(name, _of_q(fn), overwrite=overwrite)


def _definition(name: str) -> _Definition:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(available_schemes())
        raise ValueError(
            f"unknown scheme {name!r}; known schemes: {known}. "
            "Add one with infosft.register_scheme(name, weight)."
        ) from None


def _bind_args(
    method: str, defaults: Mapping[str, int | float], given: Mapping[str, Any] | None
) -> dict[str, int | float]:
    """The scheme's arguments: defaults overridden by ``given``, each of the default's type."""
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise ValueError(f"method_args must be a mapping of names to numbers, got {given!r}")
    unknown = [name for name in given if name not in defaults]
    if unknown:
        takes = ", ".join(defaults) if defaults else "no method_args"
        raise ValueError(
            f"method {method!r} takes {takes}; got unknown {', '.join(map(repr, unknown))}"
        )
    bound = dict(defaults)
    for name, value in given.items():
        want = type(defaults[name])
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ValueError(f"method {method!r}: {name} must be a finite number, got {value!r}")
        if want is int and ok and float(value).is_integer():
            bound[name] = int(value)
        elif want is float and ok:
            bound[name] = float(value)
        else:
            kind = "an integer" if want is int else "a number"
            raise ValueError(f"method {method!r}: {name} must be {kind}, got {value!r}")
    return bound


def get_scheme(
    method: str | Scheme,
    *,
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
) -> Scheme:
    """Resolve and validate a scheme once: name, p_bar and arguments -> :class:`Scheme`.

    Args:
        method: a registered name (see :func:`available_schemes`), or a :class:`Scheme`,
            returned as it is (then ``p_bar`` and ``method_args`` must be None or equal to its
            own).
        p_bar: InfoSFT's clip point in (0, 1); None means :data:`DEFAULT_P_BAR`.
        method_args: the scheme's other arguments by name (e.g. ``{"top_k": 20}`` for eaft);
            missing ones take their defaults.

    The weight is tried with these arguments on a dense grid of tokens (:func:`probe_scheme`);
    a weight that is not finite, negative or above :data:`MAX_WEIGHT` there, or not a float
    tensor of the tokens' shape, is reported here, naming the q.
    """
    if isinstance(method, Scheme):
        same_p_bar = p_bar is None or check_p_bar(p_bar) == method.p_bar
        same_args = method_args is None or _bind_args(
            method.method, method.method_args, method_args
        ) == dict(method.method_args)
        if not (same_p_bar and same_args):
            raise ValueError(
                f"a resolved scheme ({method.method}) carries its own p_bar and method_args; "
                "pass them to get_scheme instead of next to the scheme"
            )
        return method
    return _bind(method, _definition(method), p_bar, method_args)


def _bind(
    method: str,
    definition: _Definition,
    p_bar: float | None,
    method_args: Mapping[str, Any] | None,
) -> Scheme:
    """``definition`` with validated p_bar and arguments, its weight probed."""
    p_bar = check_p_bar(DEFAULT_P_BAR if p_bar is None else p_bar)
    args = _bind_args(method, definition.defaults, method_args)
    if definition.validate is not None:
        definition.validate(p_bar, **args)
    scheme = Scheme(
        method=method,
        p_bar=p_bar,
        method_args=MappingProxyType(args),
        needs_entropy=definition.entropy,
        top_k=args["top_k"] if definition.top_k_entropy else None,
        self_normalised=definition.self_normalised,
        _weight=definition.weight,
        _batch_statistic=definition.batch_statistic,
    )
    # A loss called with a scheme's name resolves it on every step: probe each binding once.
    # The definition is the key's first part and is kept alive by the value, so a definition
    # replaced with overwrite=True is probed anew.
    key = (id(definition), p_bar, tuple(sorted(args.items())))
    if _PROBED.get(key) is not definition:
        probe_scheme(scheme)
        _PROBED[key] = definition
    return scheme


def _resolve(method: str, p_bar: float, method_args: dict[str, int | float]) -> Scheme:
    return get_scheme(method, p_bar=p_bar, method_args=method_args)


# ---- probing a scheme ----------------------------------------------------------------------

# log q of probe_scheme's grid, and the ends of [-inf, 0] that rounding and underflow produce
# (float64; also tried rounded to float32).
_PROBE_LOG_Q = torch.cat(
    [
        torch.linspace(-100.0, -1.0, 100, dtype=torch.float64),
        torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)[1:-1].log(),
        torch.log1p(-torch.logspace(-1.0, -7.0, 61, dtype=torch.float64)),
        torch.tensor(
            [0.0, -1e-30, -1e-12, -30.0, -200.0, LOG_Q_FLOOR, -1e30, -math.inf],
            dtype=torch.float64,
        ),
    ]
)
# Entropies (nats) each q is paired with for a scheme that reads them: from a one-hot
# distribution to a uniform one over 2^18 tokens (ln 2^18 = 12.5 > ln of any LM vocabulary).
_PROBE_ENTROPY = (0.0, 1e-6, 0.5, 3.0, 12.5)
# Top-K entropies as shares of their largest value, ln K.
_PROBE_TOP_K_SHARE = (0.0, 1e-6, 0.5, 1.0)


def _probe_tokens(scheme: Scheme, dtype: torch.dtype) -> TokenInputs:
    """Every probe q (with 41 more around p_bar), times every probe entropy the scheme reads."""
    around_p_bar = torch.linspace(scheme.p_bar - 0.05, scheme.p_bar + 0.05, 41).double()
    columns = [torch.cat([_PROBE_LOG_Q, around_p_bar.clamp(1e-7, 1 - 1e-7).log()])]
    if scheme.needs_entropy:
        columns.append(torch.tensor(_PROBE_ENTROPY, dtype=torch.float64))
    if scheme.top_k is not None:
        shares = torch.tensor(_PROBE_TOP_K_SHARE, dtype=torch.float64)
        columns.append(shares * math.log(scheme.top_k))
    grid = torch.cartesian_prod(*columns).to(dtype).reshape(-1, len(columns))
    return TokenInputs(
        grid[:, 0],
        entropy=grid[:, 1] if scheme.needs_entropy else None,
        top_k_entropy=grid[:, -1] if scheme.top_k is not None else None,
    )


def _probe_call(
    scheme: Scheme, what: str, fn: Callable[..., Any], tokens: TokenInputs, *args: Any
) -> Any:
    """``fn(tokens, *args)``, an exception in it reported as a ValueError naming the scheme."""
    dtype = tokens.log_probs.dtype
    try:
        with torch.no_grad():
            return fn(tokens, *args)
    except Exception as err:  # any failure of a user's function is the user's to fix
        first_line = (str(err).splitlines() or [""])[0]
        raise ValueError(
            f"scheme {scheme.method!r}: its {what} raised {type(err).__name__} "
            f"({first_line}) on {dtype} probe tokens with log q in [-inf, 0]; it must accept "
            "any such tokens"
        ) from err


def _probe_batches(scheme: Scheme, tokens: TokenInputs) -> list[TokenInputs]:
    """The probe tokens as the micro-batches the weight is tried on: all of them at once, and
    for a scheme with a batch statistic also the near-certain ones (q >= 0.999), the certain
    ones (q rounds to 1) and the hopeless ones (log q <= -30) alone, each with the statistic
    of its own tokens."""
    fn = scheme._batch_statistic
    if fn is None:
        return [tokens]
    batches = []
    for subset in (
        torch.ones_like(tokens.log_probs, dtype=torch.bool),
        tokens.log_probs >= math.log(0.999),
        tokens.log_probs.exp() == 1.0,
        tokens.log_probs <= -30.0,
    ):
        part = TokenInputs(*(None if t is None else t[subset] for t in tokens))
        sequence_ids = torch.arange(part.log_probs.numel()) // 8
        statistic = _probe_call(scheme, "batch statistic", fn, part, sequence_ids)
        if not isinstance(statistic, Tensor):
            raise ValueError(
                f"scheme {scheme.method!r}: its batch statistic returned "
                f"{type(statistic).__name__}, expected a tensor"
            )
        batches.append(part._replace(statistic=statistic.detach()))
    return batches


def probe_scheme(scheme: Scheme) -> None:
    """Try the scheme's weight on a dense grid of tokens, in float32 and in float64.

    The grid: about 1200 q from e^-100 to 1 - 1e-7 (log-spaced far from 1, in steps of 0.001
    over (0, 1), log(1 - q)-spaced near 1, dense around p_bar) plus q = 0 and q = 1; each
    paired with entropies from 0 to 12.5 nats when the scheme reads them. A scheme with a batch
    statistic is tried on four micro-batches: all these tokens, the near-certain ones, the
    certain ones and the hopeless ones, each under its own statistic.

    Raises:
        ValueError: naming the scheme, and for a bad weight the q (and entropy, statistic) and
            the value, if the weight function or statistic raises, returns anything but a
            float tensor of the tokens' shape, or gives a weight that is not finite, negative or
            above :data:`MAX_WEIGHT`.
    """
    weigh = functools.partial(scheme._weight, **scheme.method_args)
    for dtype in (torch.float32, torch.float64):
        tokens = _probe_tokens(scheme, dtype)
        for batch in _probe_batches(scheme, tokens):
            weights = _probe_call(scheme, "weight", weigh, batch, scheme.p_bar)
            _check_probe_weights(scheme, batch, weights, dtype)


def _check_probe_weights(
    scheme: Scheme, tokens: TokenInputs, weights: Any, dtype: torch.dtype
) -> None:
    n = tokens.log_probs.numel()
    if not isinstance(weights, Tensor) or weights.shape != tokens.log_probs.shape:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"scheme {scheme.method!r} returned {got} for {n} tokens, expected a tensor of "
            f"shape ({n},) (one weight per token)"
        )
    if not torch.is_floating_point(weights):
        raise ValueError(
            f"scheme {scheme.method!r} returned {weights.dtype} weights; return a "
            "floating-point tensor (e.g. with .float())"
        )
    w = weights.double()
    bad = (~torch.isfinite(w) | (w < 0) | (w > MAX_WEIGHT)).nonzero()
    if bad.numel() == 0:
        return
    i = int(bad[0, 0])
    value, log_q = w[i].item(), tokens.log_probs[i].item()
    kind = "non-finite" if not math.isfinite(value) else "negative" if value < 0 else "too large"
    at = f"q = {math.exp(log_q):.6g} (log q = {log_q:.6g}"
    if tokens.entropy is not None:
        at += f", entropy = {tokens.entropy[i].item():.6g}"
    if tokens.top_k_entropy is not None:
        at += f", top-{scheme.top_k} entropy = {tokens.top_k_entropy[i].item():.6g}"
    if isinstance(tokens.statistic, Tensor) and tokens.statistic.numel() == 1:
        at += f", batch statistic = {tokens.statistic.item():.6g}"
    args = "".join(f", {k}={v}" for k, v in scheme.method_args.items())
    raise ValueError(
        f"scheme {scheme.method!r} (p_bar={scheme.p_bar}{args}) gives weight {value:.6g} "
        f"({kind}) at {at}, {dtype}); every weight must be finite and within "
        f"[0, {MAX_WEIGHT:g}] (infosft.objectives.MAX_WEIGHT) for every q in [0, 1]"
    )


def get_weighting(name: str) -> Scheme:
    """Deprecated name of :func:`get_scheme` with default arguments."""
    _warn_renamed("get_weighting", "get_scheme")
    return get_scheme(name)


_WARNED: set[str] = set()


def _warn_renamed(old: str, new: str) -> None:
    """A DeprecationWarning for ``old``, once per process, pointing at the caller's line."""
    if old not in _WARNED:
        _WARNED.add(old)
        warnings.warn(
            f"infosft.{old} is now infosft.{new}; the old name will be removed",
            DeprecationWarning,
            stacklevel=3,
        )


LOG_Q_ROUNDING = 0.1
"""How far above 0 :func:`token_weights` reads a log q as rounding (a bf16 log-softmax is off by
up to ~0.06 at logsumexp 16); more is not a log-probability (-log q or a logit by mistake)."""


def token_weights(
    log_probs: Tensor,
    method: str | Scheme = "infosft",
    p_bar: float | None = None,
    method_args: Mapping[str, Any] | None = None,
) -> Tensor:
    """Per-token weights w(q) of a scheme that is a function of q alone, detached.

    Args:
        log_probs: log q of the target tokens, any shape, any float dtype. Values up to
            :data:`LOG_Q_ROUNDING` above 0 (rounding) are treated as 0. On CPU, NaN or a
            larger value is a ValueError; on an accelerator the values are not read here (that
            would wait for the device), and NaN gives NaN.
        method: a registered scheme name (see :func:`available_schemes`) or a
            :class:`Scheme`; it must be a function of q alone (:attr:`Scheme.q_only`).
        p_bar: the expert's confidence in its own token; InfoSFT's clip point (None: 0.93).
        method_args: the scheme's other arguments by name.

    Returns:
        float32 tensor of ``log_probs.shape``, no grad, finite for every input in [-inf, 0].
    """
    scheme = get_scheme(method, p_bar=p_bar, method_args=method_args)
    if not scheme.q_only:
        raise ValueError(
            f"method {scheme.method!r} is not a function of q alone (it depends on "
            f"{' and '.join(scheme.depends_on())}); score its tokens with "
            "infosft.losses.score_targets and call Scheme.weights(TokenInputs(...))"
        )
    if not isinstance(log_probs, Tensor) or not torch.is_floating_point(log_probs):
        raise ValueError(f"log_probs must be a floating-point tensor, got {describe(log_probs)}")
    if log_probs.device.type == "cpu":
        bad = (torch.isnan(log_probs) | (log_probs > LOG_Q_ROUNDING)).reshape(-1).nonzero()
        if bad.numel():
            value = log_probs.reshape(-1)[bad[0, 0]].item()
            raise ValueError(
                f"log_probs must hold log q in [-inf, 0], got {value} at flat index "
                f"{int(bad[0, 0])}; pass log-probabilities (not -log q, logits or NaN)"
            )
    flat = TokenInputs(log_probs.reshape(-1))
    return scheme.weights(flat).reshape(log_probs.shape)


register_scheme("nll", _of_q(nll_weight))
register_scheme("dft", _of_q(dft_weight))
register_scheme("infosft", _of_q(infosft_weight), validate=_check_infosft)
register_scheme(
    "eaft",
    eaft_weight,
    method_args={"top_k": 20, "alpha": 1.0},
    top_k_entropy=True,
    validate=_check_eaft,
)
register_scheme("talr", talr_weight, batch_statistic=talr_tau)
register_scheme("memft", _of_q(memft_weight), self_normalised=True)
register_scheme("dft_mix", dft_mix_weight, method_args={"alpha": 0.7}, validate=_check_dft_mix)
register_scheme("power", power_weight, method_args={"k": 10.0}, validate=_check_power)
