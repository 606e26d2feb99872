"""Regimes built from a task's own demonstrations: near-policy and noisy.

Both take training rows in a TRL format (prompt-completion, conversational or plain, or
``messages`` ending in the assistant's answer) and return rows of the same format, so any task
of a grid, built-in or the user's, can be turned into the regime:

- :func:`near_policy`: the demonstrations are the model's own correct answers (rejection-sampling
  fine-tuning / self-distillation): several samples per prompt from the model, the first one the
  acceptance test passes replaces the demonstration; prompts with no accepted sample are dropped.
  Most target tokens then have a high q under the model.
- :func:`corrupt`: a known share of the demonstrations made wrong as a careless annotator would:
  ``"answer"`` changes the final number (every occurrence of it, so the worked solution reads as
  an arithmetic slip), ``"swap"`` pastes another row's answer (for any data).
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]
CORRUPTIONS = ("answer", "swap")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?![\w.]*\d)")


def split_row(row: Row) -> tuple[list[dict[str, str]] | str, str]:
    """(prompt, answer text) of a training row: the prompt as messages (or a plain string) and
    the assistant's demonstrated answer. ValueError for a row with no single assistant answer."""
    if "messages" in row:
        messages = row["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("a messages row must end with the assistant's answer")
        return list(messages[:-1]), str(messages[-1]["content"])
    if "prompt" in row and "completion" in row:
        completion = row["completion"]
        if isinstance(completion, str):
            return row["prompt"], completion
        if len(completion) != 1 or completion[0].get("role") != "assistant":
            raise ValueError("a conversational completion must be one assistant message")
        return row["prompt"], str(completion[0]["content"])
    raise ValueError(
        f"a row needs 'messages' or 'prompt' and 'completion' to take its answer, has {sorted(row)}"
    )


def with_answer(row: Row, answer: str) -> Row:
    """A copy of ``row`` whose assistant answer is ``answer`` (the format kept)."""
    new = copy.deepcopy(row)
    if "messages" in new:
        new["messages"][-1]["content"] = answer
    elif isinstance(new["completion"], str):
        new["completion"] = answer
    else:
        new["completion"][0]["content"] = answer
    return new


def _wrong_number(text: str, rng: random.Random) -> str | None:
    """``text`` with its last number changed everywhere it occurs, as a slip would change it
    (off by a little, or two digits swapped); None when the text holds no number."""
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    right = int(numbers[-1])
    digits = str(abs(right))
    if len(digits) > 1 and digits[-1] != digits[-2] and rng.random() < 0.5:
        swapped = int(digits[:-2] + digits[-1] + digits[-2])
        wrong = -swapped if right < 0 else swapped
    else:
        wrong = right + rng.choice([-1, 1]) * rng.randint(1, max(2, abs(right) // 5))
    pattern = re.compile(rf"(?<![\w.]){re.escape(numbers[-1])}(?![\w.]*\d)")
    return pattern.sub(str(wrong), text)


def corrupt(
    rows: Sequence[Row], *, share: float, seed: int, how: str = "answer"
) -> tuple[list[Row], list[int]]:
    """Rows with ``round(share * len(rows))`` answers made wrong, and the indices changed.

    Args:
        rows: training rows in a TRL format (see :func:`split_row`).
        share: the fraction of rows to corrupt, in [0, 1].
        seed: which rows, and how each is changed.
        how: ``"answer"`` (the final number changed wherever it occurs; a row without a number
            is refused) or ``"swap"`` (the answer of another row whose answer differs).
    """
    if how not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {list(CORRUPTIONS)}, got {how!r}")
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise ValueError(
            f"the share of corrupted answers must be a number in [0, 1], got {share!r}"
        )
    rng = random.Random(seed)
    answers = [split_row(row)[1] for row in rows]
    chosen = sorted(rng.sample(range(len(rows)), round(share * len(rows))))
    out = list(rows)
    for index in chosen:
        if how == "answer":
            wrong = _wrong_number(answers[index], rng)
            if wrong is None:
                raise ValueError(
                    f"row {index} has no number in its answer to change; use the 'swap' "
                    "corruption for data whose answers are not numbers"
                )
        else:
            others = [a for a in answers if a != answers[index]]
            if not others:
                raise ValueError("every row has the same answer: 'swap' cannot make one wrong")
            wrong = rng.choice(others)
        out[index] = with_answer(rows[index], wrong)
    return out, chosen


def agrees_with_demonstration(scorer: str) -> Callable[[Row, str], bool]:
    """``accept(row, completion)`` for :func:`near_policy`: the completion's answer equals the
    row's demonstrated one under the scorer (``math``: the demonstration's final answer,
    ``choice``: its option letter, ``exact``: its whole text)."""
    from infosft.evaluation.scorers import SCORERS, extract_choice, extract_math_answer

    extract = {"math": extract_math_answer, "choice": extract_choice, "exact": str}[scorer]

    def accept(row: Row, completion: str) -> bool:
        reference = extract(split_row(row)[1])
        return reference is not None and bool(SCORERS[scorer]([completion], [reference])[0])

    return accept


def near_policy(
    rows: Sequence[Row],
    sample: Callable[[list[Any]], list[list[str]]],
    accept: Callable[[Row, str], bool],
) -> tuple[list[Row], dict[str, int]]:
    """The model's own accepted answers in place of the demonstrations.

    Args:
        rows: training rows in a TRL format (see :func:`split_row`).
        sample: ``sample(prompts) -> completions`` [len(prompts)][n], the model's samples for
            each prompt (e.g. :func:`infosft.evaluation.generate` with ``n`` and a temperature).
        accept: ``accept(row, completion)``: whether a sample may stand for the row's
            demonstration (typically the task's scorer against the row's reference answer).

    Returns:
        The rows whose prompts got an accepted sample, each with its first accepted sample as
        the answer, and counts ``{"rows", "kept", "samples", "accepted"}``.
    """
    prompts = [split_row(row)[0] for row in rows]
    completions = sample(prompts)
    if len(completions) != len(rows):
        raise ValueError(f"sample() returned {len(completions)} lists for {len(rows)} prompts")
    kept, accepted, drawn = [], 0, 0
    for row, samples in zip(rows, completions, strict=True):
        drawn += len(samples)
        good = [s for s in samples if accept(row, s)]
        accepted += len(good)
        if good:
            kept.append(with_answer(row, good[0]))
    counts = {"rows": len(rows), "kept": len(kept), "samples": drawn, "accepted": accepted}
    return kept, counts
