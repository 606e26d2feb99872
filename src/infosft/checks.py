"""Checks of values a user wrote (a run YAML, a grid YAML, ``--set``, a Python call), with one
wording for every problem: ``<where> must be <what is expected>, got <value>``.

What a setting expects is written once, as data:

- a type annotation: ``bool``, ``int``, ``float``, ``str``, ``dict``, ``list``, a class, a
  ``Literal[...]`` of the allowed choices, or a union of them (``int | None``); or
- a :class:`Number`: a finite number, whole or not, within bounds, of a unit.

:func:`check_value` checks a value against it and returns it as the setting holds it (an
integral float such as ``2.0`` given for a whole number as ``2``, a whole number given for a
:class:`Number` that is not whole as a float); :func:`check_keys` checks the keys of a mapping.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
# YAML 1.1 booleans that YAML 1.2 (and so infosft) reads as strings.
_YAML11_BOOLEANS = {"yes", "no", "on", "off", "y", "n"}


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite number (``whole``: an integer) from ``low`` to ``high`` (None: unbounded);
    ``low_open`` / ``high_open`` leave the bound itself out. ``unit`` names what it counts in
    messages ("a positive whole number of steps")."""

    whole: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    unit: str = ""

    def fits(self, value: Any) -> bool:
        if not _is_number(value):
            return False
        if isinstance(value, float) and not (
            math.isfinite(value) and (value.is_integer() or not self.whole)
        ):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        kind = "whole number" if self.whole else "finite number"
        of = f" of {self.unit}" if self.unit else ""
        positive = (self.low == 0 and self.low_open) or (self.whole and self.low == 1)
        if self.high is None and positive:
            return f"a positive {kind}{of}"
        if self.low is None and self.high is None:
            return f"a {kind}{of}"
        if self.high is None:
            return f"a {kind}{of} {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"a {kind}{of} {'<' if self.high_open else '<='} {self.high:g}"
        low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a {kind}{of} in {low}{self.low:g}, {self.high:g}{high}"


def check_value(
    value: Any, expected: Any, where: str, *, null: bool | str = False, why: str = ""
) -> Any:
    """``value`` as the setting ``where`` holds it, if it is what ``expected`` (a type
    annotation or a :class:`Number`) allows; ValueError naming ``where``, what it must be and
    the value otherwise.

    Args:
        null: True to allow None as well; a string also says what None means
            (``null="for all"`` reads "... (or null for all)").
        why: a reason or hint appended to the message in parentheses.
    """
    if value is None and null is not False:
        return None
    if _fits(value, expected):
        number = isinstance(expected, Number)
        if isinstance(value, float) and (expected is int or (number and expected.whole)):
            return int(value)
        if number and not expected.whole:
            return float(value)
        return value
    what = _describe(expected)
    if null is not False:
        what += f" (or null {null})" if isinstance(null, str) else " or null"
    notes = [why] if why else []
    if isinstance(value, str) and value.lower() in _YAML11_BOOLEANS and _allows(expected, bool):
        notes.append("YAML 1.2 reads yes/no/on/off as text")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    raise ValueError(f"{where} must be {what}, got {value!r}{suffix}")


def check_keys(keys: list[str], where: str, allowed: list[str], list_allowed: bool = False) -> None:
    """ValueError naming each key not in ``allowed``, with the nearest valid names (and, with
    ``list_allowed``, every allowed name: for short lists)."""
    unknown = [key for key in keys if key not in allowed]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=3, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    listed = f"; allowed: {', '.join(allowed)}" if list_allowed else ""
    raise ValueError(
        f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {'; '.join(hints)}{listed}"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _allows(expected: Any, kind: type) -> bool:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return any(member is kind for member in typing.get_args(expected))
    return expected is kind


def _fits(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if isinstance(expected, Number):
        return expected.fits(value)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, member) for member in typing.get_args(expected))
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in expected.__args__)
    if expected is type(None) or expected is None:
        return value is None
    if expected is int:
        return _is_number(value) and (not isinstance(value, float) or value.is_integer())
    if expected is float:
        return _is_number(value) and math.isfinite(value)
    if origin is not None:
        expected = origin
    if isinstance(expected, type):
        # An enum-valued option (IntervalStrategy, SchedulerType, ...) is written as its name.
        if issubclass(expected, str) or expected.__module__.startswith("transformers"):
            return isinstance(value, (str, expected))
        return isinstance(value, expected)
    return True


def _describe(expected: Any) -> str:
    if isinstance(expected, Number):
        return expected.describe()
    if typing.get_origin(expected) is typing.Literal:
        return f"one of {', '.join(map(str, expected.__args__))}"
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(expected) if m is not type(None)]
        names = " or ".join(dict.fromkeys(_describe(m) for m in members))
        return names + (" or null" if len(members) < len(typing.get_args(expected)) else "")
    if expected in _KIND_NAMES:
        return _KIND_NAMES[expected] + (" (finite)" if expected is float else "")
    expected = typing.get_origin(expected) or expected
    if expected is dict:
        return "a mapping"
    if expected is list:
        return "a list"
    return getattr(expected, "__name__", str(expected))
