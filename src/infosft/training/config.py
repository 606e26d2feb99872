"""InfoSFTConfig: TRL's SFTConfig plus the weighting scheme (``method``, ``p_bar``,
``method_args``), a loss schedule, the KL anchor to the base model and the source of q.

The scheme is resolved and validated once, when the config is built: a bad name, p_bar or
schedule fails here, before any model is loaded, and the trainer only looks up which resolved
entry of the schedule is active at the current step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from trl import SFTConfig

from infosft.checks import Number, check_value
from infosft.objectives import DEFAULT_P_BAR, Scheme, check_p_bar, get_scheme

WEIGHT_SOURCES = ("current", "base")
KL_TO_BASE = Number(low=0)
"""What ``kl_to_base`` may be: the weight of the KL anchor, 0 for none."""
SCHEDULE_KEYS = ("method", "method_args", "until_epoch", "until_step")
STEPS = Number(whole=True, low=1, unit="steps")
EPOCHS = Number(low=0, low_open=True, unit="epochs")
"""How long a run trains (fractions of an epoch allowed), or when a schedule entry ends."""
SCHEDULE_ENDS = {"until_step": STEPS, "until_epoch": EPOCHS}
# SFTConfig.loss_type is TRL's own loss; InfoSFT computes every scheme itself and never reads it.
TRL_LOSS_TYPE = "nll"


@dataclass(frozen=True)
class ScheduleEntry:
    """One resolved entry of a loss schedule: ``scheme`` is active until ``until_epoch`` epochs
    or ``until_step`` optimizer steps are done (neither: until the end of training)."""

    method: str
    scheme: Scheme
    method_args: dict[str, Any] | None = None
    until_epoch: float | None = None
    until_step: int | None = None

    def active(self, epoch: float, global_step: int) -> bool:
        """Whether this entry applies to the step after ``global_step`` steps, ``epoch`` epochs."""
        if self.until_step is not None:
            return global_step < self.until_step
        if self.until_epoch is not None:
            return epoch < self.until_epoch
        return True


def resolve_scheme(
    method: Any, p_bar: float, method_args: dict[str, Any] | None, where: str = "method"
) -> Scheme:
    """The weighting scheme ``method`` with ``p_bar`` and its arguments, resolved and validated
    once (:func:`infosft.objectives.get_scheme`); ValueError naming ``where`` otherwise."""
    if not isinstance(method, str):
        raise ValueError(f"{where} must be a scheme name such as 'infosft', got {method!r}")
    try:
        return get_scheme(method, p_bar=p_bar, method_args=method_args)
    except ValueError as err:
        raise ValueError(f"{where}={method!r}: {err}") from None


def parse_loss_schedule(schedule: Any, p_bar: float) -> list[ScheduleEntry] | None:
    """Validate a loss schedule and resolve the scheme of every entry.

    ``schedule`` is None, a list of dicts, or the same as a JSON string (from a command line).
    Every entry names a ``method``; every entry but the last ends at ``until_epoch`` (a number
    of epochs, fractions allowed: 0.25 is a quarter of the first epoch) or ``until_step`` (a
    number of optimizer steps), strictly later than the previous entry's end; the last entry
    has neither and runs to the end. An entry may carry its scheme's ``method_args``.
    Example, one epoch of SFT then InfoSFT:
    ``[{"method": "nll", "until_epoch": 1}, {"method": "infosft"}]``.
    """
    if schedule is None:
        return None
    if isinstance(schedule, str):
        try:
            schedule = json.loads(schedule)
        except json.JSONDecodeError as err:
            raise ValueError(f"loss_schedule is not valid JSON ({err}): {schedule!r}") from None
    example = '[{"method": "nll", "until_epoch": 0.25}, {"method": "infosft"}]'
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise ValueError(
            f"loss_schedule must be a non-empty list such as {example}, got {schedule!r}"
        )
    entries: list[ScheduleEntry] = []
    for index, entry in enumerate(schedule):
        where = f"loss_schedule[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping with 'method', got {entry!r}")
        unknown = set(entry) - set(SCHEDULE_KEYS)
        if unknown:
            hint = " (the key is 'method' now)" if "loss_type" in unknown else ""
            raise ValueError(
                f"{where} has unknown keys {sorted(unknown)}{hint}; "
                f"allowed: {', '.join(SCHEDULE_KEYS)}"
            )
        method, method_args = entry.get("method"), entry.get("method_args")
        scheme = resolve_scheme(method, p_bar, method_args, f"{where}.method")
        ends = [key for key in ("until_epoch", "until_step") if entry.get(key) is not None]
        until: dict[str, Any] = {}
        if index == len(schedule) - 1:
            if ends:
                raise ValueError(
                    f"{where} is the last entry and must not have {ends[0]!r}: it runs to the end "
                    "of training"
                )
        elif len(ends) != 1:
            raise ValueError(f"{where} needs exactly one of 'until_epoch' or 'until_step'")
        else:
            until[ends[0]] = _checked_end(where, ends[0], entry[ends[0]], entries)
        entries.append(ScheduleEntry(method, scheme, method_args, **until))
    return entries


def check_schedule_fits(
    schedule: list[ScheduleEntry],
    *,
    steps: int | None = None,
    epochs: float | None = None,
    trained: str = "the run trains",
) -> None:
    """ValueError when a switch of ``schedule`` comes at or after the end of training, which
    lasts ``steps`` optimizer steps or ``epochs`` epochs (None: not known); the later entries
    would never train, while the run would be recorded under them.

    ``trained`` says what lasts that long in the message ("cells train" for a grid).
    """
    for entry in schedule[:-1]:
        if entry.until_step is not None and steps is not None and entry.until_step >= steps:
            raise ValueError(
                f"the loss_schedule switches at step {entry.until_step}, but {trained} {steps} "
                f"step(s); switch earlier (e.g. until_step: {max(1, steps // 4)}) or train longer"
            )
        if entry.until_epoch is not None and epochs is not None and entry.until_epoch >= epochs:
            raise ValueError(
                f"the loss_schedule switches at epoch {entry.until_epoch:g}, but {trained} "
                f"{epochs:g} epoch(s); give a fraction of the run (e.g. until_epoch: "
                f"{epochs / 4:g})"
            )


def _checked_end(where: str, key: str, value: Any, previous: list[ScheduleEntry]) -> Any:
    """``value`` of an entry's end ``key``, checked to come after the previous entry's end."""
    until = check_value(value, SCHEDULE_ENDS[key], f"{where}.{key}")
    if previous:
        last = previous[-1]
        last_key = "until_step" if last.until_step is not None else "until_epoch"
        if last_key != key:
            raise ValueError(
                f"{where} ends at {key} but the entry before it at {last_key}; use one unit for "
                "the whole schedule"
            )
        if until <= getattr(last, key):
            raise ValueError(
                f"{where}.{key}={until} must be later than the previous entry's "
                f"{getattr(last, key)}"
            )
    return until


@dataclass
class InfoSFTConfig(SFTConfig):
    """SFTConfig for :class:`~infosft.training.InfoSFTTrainer`.

    ``method`` names the token weighting (``nll``, ``dft``, ``infosft`` or any registered
    scheme), computed by infosft's fused weighted NLL. TRL's own ``loss_type`` stays at its
    default and is never read.
    """

    method: str = field(
        default="infosft",
        metadata={
            "help": "Token weighting of the NLL: 'nll' (plain SFT, w=1), 'dft' (w=q), 'infosft' "
            "(w = q * max(0, 1 - logit(q)/logit(p_bar))) or any scheme registered with "
            "infosft.register_scheme. Ignored when loss_schedule is set."
        },
    )
    p_bar: float = field(
        default=DEFAULT_P_BAR,
        metadata={
            "help": "The expert's confidence in its own token; InfoSFT gives weight 0 to tokens "
            "with q >= p_bar. The paper uses 0.93 in every run."
        },
    )
    method_args: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "The scheme's other named parameters (e.g. eaft's top_k and alpha)."},
    )
    kl_to_base: float = field(
        default=0.0,
        metadata={
            "help": "Weight of a KL(base || current) term per target token, anchoring the model "
            "to the base model it started from (0: no anchor, no extra forward pass)."
        },
    )
    loss_schedule: list[dict[str, Any]] | str | None = field(
        default=None,
        metadata={
            "help": "Weighting by training progress, as a list (or JSON string) of {'method', "
            "'until_epoch' | 'until_step'} entries, the last without an end. E.g. a quarter "
            'epoch of SFT then InfoSFT: [{"method": "nll", "until_epoch": 0.25}, '
            '{"method": "infosft"}]. Read from the trainer state every step, so it resumes '
            "correctly."
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
        if self.loss_type != TRL_LOSS_TYPE:
            raise ValueError(
                f"loss_type={self.loss_type!r}: InfoSFT's weighting scheme is set with "
                f"method={self.loss_type!r} (loss_type is TRL's own field and stays "
                f"{TRL_LOSS_TYPE!r})"
            )
        super().__post_init__()
        self.p_bar = check_p_bar(self.p_bar)
        self._check_run_length()
        check_value(self.method_args, dict, "method_args", null=True)
        self.kl_to_base = check_value(self.kl_to_base, KL_TO_BASE, "kl_to_base")
        check_value(self.weight_source, Literal[WEIGHT_SOURCES], "weight_source")
        self._schedule = self._resolve_schedule()

    def _resolve_schedule(self) -> list[ScheduleEntry]:
        """The schedule's entries with their schemes resolved (one entry without a schedule)."""
        entries = parse_loss_schedule(self.loss_schedule, self.p_bar)
        if entries is None:
            scheme = resolve_scheme(self.method, self.p_bar, self.method_args)
            entries = [ScheduleEntry(self.method, scheme, self.method_args)]
        elif self.method_args:
            raise ValueError(
                "method_args belongs to method; with a loss_schedule give each entry its own "
                "method_args"
            )
        else:
            self.loss_schedule = [_entry_dict(entry) for entry in entries]
        if self.weight_source == "base":
            for entry in entries:
                if not entry.scheme.q_only:
                    needs = " and ".join(entry.scheme.depends_on())
                    raise ValueError(
                        f"weight_source='base' fixes w(q) from the base model's q, but "
                        f"{entry.method!r} also depends on {needs}"
                    )
        return entries

    def __getstate__(self) -> dict[str, Any]:
        # Resolved schemes hold functions and read-only mappings; the Trainer pickles its
        # arguments into every checkpoint (training_args.bin), so they are resolved again on load.
        state = self.__dict__.copy()
        state.pop("_schedule", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._schedule = self._resolve_schedule()

    def _check_run_length(self) -> None:
        """ValueError for settings TrainingArguments accepts but that train nothing or fail late
        (a batch of 0, a division by zero, a negative learning rate at the first step)."""
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        ):
            check_value(getattr(self, name), Number(whole=True, low=1), name)
        tokens = Number(whole=True, low=1, unit="tokens")
        check_value(self.max_length, tokens, "max_length", null="for no limit")
        check_value(self.learning_rate, Number(low=0), "learning_rate")
        if self.max_steps != -1:
            check_value(self.max_steps, STEPS, "max_steps", why="or -1 to train num_train_epochs")
        else:
            check_value(self.num_train_epochs, EPOCHS, "num_train_epochs", why="max_steps is unset")

    @property
    def schedule(self) -> list[ScheduleEntry]:
        """The run's weighting, resolved: the loss schedule's entries in order (one entry, for
        ``method``, without a schedule)."""
        return list(self._schedule)

    @property
    def methods(self) -> list[str]:
        """The weighting methods of the run, each once, in schedule order."""
        return list(dict.fromkeys(entry.method for entry in self._schedule))

    def schedule_entry(self, epoch: float | None, global_step: int) -> ScheduleEntry:
        """The schedule entry (method and resolved scheme) active for the next optimizer step,
        after ``global_step`` steps and ``epoch`` epochs (fractional; None before training)."""
        for entry in self._schedule[:-1]:
            if entry.active(epoch or 0.0, global_step):
                return entry
        return self._schedule[-1]


def _entry_dict(entry: ScheduleEntry) -> dict[str, Any]:
    """A resolved schedule entry as the plain mapping it was given as (for to_dict / YAML)."""
    return {key: getattr(entry, key) for key in SCHEDULE_KEYS if getattr(entry, key)}
