"""InfoSFTConfig: TRL's SFTConfig plus the weighting scheme, p_bar, a loss schedule, q's source."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTConfig

from infosft.objectives import DEFAULT_P_BAR, available_weightings, token_weights

WEIGHT_SOURCES = ("current", "base")


def check_loss_type(loss_type: Any, p_bar: float, where: str = "loss_type") -> str:
    """Return ``loss_type`` if it names a registered scheme that accepts ``p_bar``; else ValueError.

    The scheme is evaluated once on log q = 0 so that a bad ``p_bar`` (e.g. infosft needs
    p_bar > 0.5) fails when the config is built, not at the first training step.
    """
    if not isinstance(loss_type, str) or loss_type not in available_weightings():
        known = ", ".join(available_weightings())
        raise ValueError(
            f"{where}={loss_type!r} is not a weighting scheme; choose one of: {known} "
            "(a new one is registered with infosft.register_weighting)"
        )
    token_weights(torch.zeros(1), loss_type, p_bar)
    return loss_type


def parse_loss_schedule(schedule: Any, p_bar: float) -> list[dict[str, Any]] | None:
    """Validate a loss schedule and return it as a list of ``{"loss_type", "until_epoch"}`` dicts.

    ``schedule`` is None, a list of dicts, or the same as a JSON string (from a command line).
    Every entry names a ``loss_type``; every entry but the last has an ``until_epoch`` (a float,
    strictly increasing): the entry is active while ``epoch < until_epoch``. The last entry has
    none and runs to the end. Example: ``[{"until_epoch": 1, "loss_type": "nll"},
    {"loss_type": "infosft"}]`` is one epoch of SFT, then InfoSFT.
    """
    if schedule is None:
        return None
    if isinstance(schedule, str):
        try:
            schedule = json.loads(schedule)
        except json.JSONDecodeError as err:
            raise ValueError(f"loss_schedule is not valid JSON ({err}): {schedule!r}") from None
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise ValueError(
            "loss_schedule must be a non-empty list such as "
            '[{"until_epoch": 1, "loss_type": "nll"}, {"loss_type": "infosft"}], '
            f"got {schedule!r}"
        )
    entries = []
    previous = -math.inf
    for index, entry in enumerate(schedule):
        where = f"loss_schedule[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a dict with 'loss_type', got {entry!r}")
        unknown = set(entry) - {"loss_type", "until_epoch"}
        if unknown:
            raise ValueError(
                f"{where} has unknown keys {sorted(unknown)}; allowed: 'loss_type', 'until_epoch'"
            )
        loss_type = check_loss_type(entry.get("loss_type"), p_bar, f"{where}.loss_type")
        is_last = index == len(schedule) - 1
        until = entry.get("until_epoch")
        if is_last:
            if until is not None:
                raise ValueError(
                    f"{where} is the last entry and must not have 'until_epoch': it runs to "
                    "the end of training"
                )
            entries.append({"loss_type": loss_type})
            continue
        if isinstance(until, bool) or not isinstance(until, (int, float)) or until <= previous:
            raise ValueError(
                f"{where}.until_epoch must be a number greater than the previous entry's "
                f"({previous}), got {until!r}"
            )
        previous = float(until)
        entries.append({"loss_type": loss_type, "until_epoch": previous})
    return entries


@dataclass
class InfoSFTConfig(SFTConfig):
    """SFTConfig for :class:`~infosft.training.InfoSFTTrainer`.

    ``loss_type`` accepts every registered weighting scheme (``nll``, ``dft``, ``infosft``, ...);
    all of them are computed by infosft's fused weighted NLL, never by TRL's own loss.
    """

    loss_type: str = field(
        default="infosft",
        metadata={
            "help": "Token weighting of the NLL: 'nll' (plain SFT, w=1), 'dft' (w=q), 'infosft' "
            "(w = q * max(0, 1 - logit(q)/logit(p_bar))) or any scheme registered with "
            "infosft.register_weighting. Ignored when loss_schedule is set."
        },
    )
    p_bar: float = field(
        default=DEFAULT_P_BAR,
        metadata={
            "help": "The expert's confidence in its own token; InfoSFT gives weight 0 to tokens "
            "with q >= p_bar. The paper uses 0.93 in every run."
        },
    )
    loss_schedule: list[dict[str, Any]] | str | None = field(
        default=None,
        metadata={
            "help": "Loss type by epoch, as a list (or JSON string) of {'until_epoch', "
            "'loss_type'} entries, the last without 'until_epoch'. E.g. one epoch of SFT then "
            'InfoSFT: [{"until_epoch": 1, "loss_type": "nll"}, {"loss_type": "infosft"}]. '
            "Read from the trainer state's epoch every step, so it resumes correctly."
        },
    )
    weight_source: str = field(
        default="current",
        metadata={
            "help": "Where q in the weight w(q) comes from: 'current' (the model being trained, "
            "recomputed every step; the paper's choice) or 'base' (the frozen base model, read "
            "from a 'base_log_probs' column computed once before training).",
            "choices": list(WEIGHT_SOURCES),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < float(self.p_bar) < 1.0:
            raise ValueError(f"p_bar must lie strictly between 0 and 1, got {self.p_bar!r}")
        self.p_bar = float(self.p_bar)
        self.loss_schedule = parse_loss_schedule(self.loss_schedule, self.p_bar)
        if self.loss_schedule is None:
            check_loss_type(self.loss_type, self.p_bar)
        if self.weight_source not in WEIGHT_SOURCES:
            raise ValueError(
                f"weight_source must be one of {', '.join(WEIGHT_SOURCES)}, "
                f"got {self.weight_source!r}"
            )

    def loss_type_at(self, epoch: float | None) -> str:
        """The loss type active at ``epoch`` (fractional; None before training starts)."""
        if self.loss_schedule is None:
            return self.loss_type
        current = 0.0 if epoch is None else epoch
        for entry in self.loss_schedule[:-1]:
            if current < entry["until_epoch"]:
                return entry["loss_type"]
        return self.loss_schedule[-1]["loss_type"]
