"""What a weighting does to training: update sizes and where the gradient comes from.

Two questions behind "InfoSFT takes smaller steps because its weights are below 1":

1. **How large is each update?** :class:`TrainingDiagnostics` (a ``TrainerCallback``) records,
   per optimizer step, the gradient norm the optimizer sees (after clipping), the update norm
   ``||theta_t - theta_{t-1}||`` over all trainable parameters and per parameter group, and the
   distance from the starting weights. Under AdamW the update is nearly invariant to a global
   scale of the gradient, so a smaller gradient need not mean a smaller step.
2. **Which tokens drive it?** The gradient of a token's loss ``-w log q`` with respect to its
   logits is ``-w (onehot(y) - softmax)``, whose L1 norm is ``2 w (1 - q)``: computable from q
   alone. The callback scores a fixed sample of training rows with the current model every few
   steps and records each q bin's share of tokens and of that gradient mass, per method.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback

from infosft.experiments.inspect import q_summary, weight_mass_table
from infosft.models import eval_mode
from infosft.objectives import token_weights

# Bins of q: nearly impossible, unlikely, likely, and past InfoSFT's default clip point.
MASS_BIN_EDGES = (0.0, 0.05, 0.5, 0.93, 1.0)
# Parameter groups by name; the first pattern found in a parameter's name decides.
PARAMETER_GROUPS = (
    ("embeddings", ("embed_tokens", "lm_head", "wte", "wpe")),
    ("attention", ("self_attn", "attn")),
    ("mlp", ("mlp",)),
    ("norms", ("norm",)),
)


def bin_labels(edges: Sequence[float] = MASS_BIN_EDGES) -> list[str]:
    """``["q<0.05", "0.05<=q<0.5", ..., "q>=0.93"]`` for the bins of ``edges``."""
    labels = [f"{low:g}<=q<{high:g}" for low, high in itertools.pairwise(edges)]
    labels[-1] = f"q>={edges[-2]:g}"
    labels[0] = f"q<{edges[1]:g}"
    return labels


def logit_gradient_mass(log_probs: Tensor, method: str, p_bar: float | None = None) -> Tensor:
    """L1 norm of each target token's loss gradient w.r.t. its logits: ``2 w(q) (1 - q)``.

    Args:
        log_probs: log q of the target tokens, any shape, float.
        method: a scheme that is a function of q alone (nll, dft, infosft, ...).

    Returns:
        float64 tensor of ``log_probs.shape``.
    """
    weights = token_weights(log_probs, method, p_bar).double()
    return 2.0 * weights * (-torch.expm1(log_probs.double().clamp(max=0.0)))


def mass_shares(
    log_probs: Tensor,
    methods: Sequence[str],
    p_bar: float | None = None,
    edges: Sequence[float] = MASS_BIN_EDGES,
) -> dict[str, dict[str, float]]:
    """Share of target tokens, and of each method's logit-gradient mass, in each q bin.

    Returns ``{"tokens": {label: share}, "<method>": {label: share}, ...}``; a method whose
    total mass is 0 gets NaN shares. Also ``"mean_weight"`` and ``"total_mass"`` per method
    (the mean of w and of 2 w (1 - q) per token): the scale a global-norm argument is about.
    """
    flat = log_probs.reshape(-1)
    masses = {method: logit_gradient_mass(flat, method, p_bar) for method in methods}
    table = weight_mass_table(flat, masses, edges)
    labels = bin_labels(edges)
    result: dict[str, dict[str, float]] = {
        "tokens": dict(zip(labels, table["token_share"], strict=True)),
        "mean_weight": {m: float(token_weights(flat, m, p_bar).double().mean()) for m in methods},
        "total_mass": table["mean_weight"],
    }
    for method in methods:
        shares = table["mass_share"][method]
        if table["mean_weight"][method] <= 0:
            shares = [math.nan] * len(labels)
        result[method] = dict(zip(labels, shares, strict=True))
    return result


def probe_batch(prepared: Any, rows: int = 16) -> dict[str, Tensor]:
    """The first ``rows`` of a prepared dataset (``input_ids``, ``labels``, as the trainer's
    ``train_dataset`` holds them) as a right-padded batch: ``input_ids``, ``attention_mask``,
    ``labels`` [B, T] int64, labels IGNORE_INDEX on padding."""
    from infosft.training.data import pad_tokenized

    chosen = list(prepared.select(range(min(rows, len(prepared)))))
    input_ids, attention_mask, labels = pad_tokenized(chosen)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def parameter_group(name: str) -> str:
    """The group of a parameter by its name (``PARAMETER_GROUPS``), "other" when none fits."""
    for group, patterns in PARAMETER_GROUPS:
        if any(pattern in name for pattern in patterns):
            return group
    return "other"


class TrainingDiagnostics(TrainerCallback):
    """Per optimizer step: gradient norm, update norm (total and per group), distance from start.

    Every ``score_every`` steps (and at step 0) it also scores ``probe_batch`` (``input_ids``,
    ``attention_mask``, ``labels`` with IGNORE_INDEX where no loss applies; [B, T] int64) with
    the current model and records :func:`mass_shares` for ``methods``. Records are dicts in
    :attr:`records` (``{"step", "grad_norm", "update_norm", "update_norm/<group>",
    "distance_from_start", "param_norm"}``) and :attr:`mass_records` (``{"step", "shares"}``).

    Keeps two float32 copies of the trainable parameters (the step's start and the run's
    start): about 1 GB for a 135M model.
    """

    def __init__(
        self,
        probe_batch: Mapping[str, Tensor] | None = None,
        methods: Sequence[str] = ("nll", "dft", "infosft"),
        p_bar: float = 0.93,
        score_every: int = 5,
    ) -> None:
        self.probe_batch = probe_batch
        self.methods = tuple(methods)
        self.p_bar = p_bar
        self.score_every = score_every
        self.records: list[dict[str, float]] = []
        self.mass_records: list[dict[str, Any]] = []
        self._start: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}
        self._grad_norm = math.nan
        # Time spent in this callback (copies, norms, scoring), to subtract from step timings.
        self.overhead_seconds = 0.0

    @staticmethod
    def _trainable(model: Any) -> list[tuple[str, Tensor]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def _score(self, model: Any, step: int) -> None:
        if self.probe_batch is None:
            return
        from infosft.losses import IGNORE_INDEX, target_log_probs
        from infosft.losses.reference import shift_labels

        with eval_mode(model):
            batch = {k: v.to(next(model.parameters()).device) for k, v in self.probe_batch.items()}
            log_q = target_log_probs(
                model, batch["input_ids"], batch["attention_mask"], batch["labels"]
            )
        picked = log_q[shift_labels(batch["labels"]) != IGNORE_INDEX].cpu()
        self.mass_records.append(
            {
                "step": step,
                "q": q_summary(picked, self.p_bar),
                "shares": mass_shares(picked, self.methods, self.p_bar),
            }
        )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        start = time.perf_counter()
        self._start = {n: p.detach().float().clone() for n, p in self._trainable(model)}
        self._score(model, 0)
        self.overhead_seconds += time.perf_counter() - start

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        start = time.perf_counter()
        squares = 0.0
        self._before = {}
        for name, p in self._trainable(model):
            self._before[name] = p.detach().float().clone()
            if p.grad is not None:
                squares += float(p.grad.detach().double().pow(2).sum())
        self._grad_norm = math.sqrt(squares)
        self.overhead_seconds += time.perf_counter() - start

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        start = time.perf_counter()
        groups = defaultdict(float)
        total = distance = norm = 0.0
        for name, p in self._trainable(model):
            now = p.detach().float()
            step_sq = float((now - self._before[name]).double().pow(2).sum())
            total += step_sq
            groups[parameter_group(name)] += step_sq
            distance += float((now - self._start[name]).double().pow(2).sum())
            norm += float(now.double().pow(2).sum())
        record = {
            "step": state.global_step + 1,
            "grad_norm": self._grad_norm,
            "update_norm": math.sqrt(total),
            "distance_from_start": math.sqrt(distance),
            "param_norm": math.sqrt(norm),
            **{f"update_norm/{g}": math.sqrt(v) for g, v in sorted(groups.items())},
        }
        self.records.append(record)
        self._before = {}
        self.overhead_seconds += time.perf_counter() - start

    def on_train_end(self, args, state, control, **kwargs):
        self._start = {}  # a float32 copy of the model: free it with the run

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.score_every > 0 and state.global_step % self.score_every == 0:
            start = time.perf_counter()
            self._score(model, state.global_step)
            self.overhead_seconds += time.perf_counter() - start
