"""The demo's new task: multi-step arithmetic chains with a written chain of thought.

A problem reads "Start with 12, add 7, then multiply by 3, then subtract 5. What number do you
get?" and its demonstration works it out one line per step, ending in "The answer is 52.".
Every problem is generated from a seed, so answers are checkable and held-out problems are
guaranteed unseen in training.

Why this task: SmolLM2-135M-Instruct answers such prompts with a paragraph of prose and gets
almost none right, so the demonstrations' first tokens (a bare number instead of "To solve"),
the one-line-per-step format and the products are all very unlikely under the base model,
as in real SFT data. Nothing in it favours any weighting: the loss of every method sees the
same tokens, and correctness is judged only on the final number.
"""

from __future__ import annotations

import operator
import random
from dataclasses import replace
from functools import partial

from infosft.experiments.generated import GeneratedTask, Problem

SYSTEM_PROMPT = "Solve the problem step by step."
TASK_NAME = "arith_chain"

# (wording in the question, symbol in the worked solution, operand range, operation)
_OPERATIONS = (
    ("add", "+", (2, 20), operator.add),
    ("subtract", "-", (2, 20), operator.sub),
    ("multiply by", "*", (2, 9), operator.mul),
)
_START_RANGE = (2, 20)
_MAX_VALUE = 200


def sample_problem(rng: random.Random, steps: int = 3) -> Problem:
    """One random problem with ``steps`` operations whose intermediate values stay in [0, 200].

    Bounding the values keeps every product within what a 135M model can learn in a few dozen
    steps and keeps answers non-negative, so "the last integer" is unambiguous.
    """
    if steps < 1:
        raise ValueError(f"a problem needs at least one step, got steps={steps}")
    while True:
        start = rng.randint(*_START_RANGE)
        value, phrases, lines = start, [], []
        for _ in range(steps):
            word, symbol, operand_range, operation = rng.choice(_OPERATIONS)
            operand = rng.randint(*operand_range)
            result = operation(value, operand)
            if not 0 <= result <= _MAX_VALUE:
                break
            phrases.append(f"{word} {operand}")
            lines.append(f"{value} {symbol} {operand} = {result}")
            value = result
        else:
            question = (
                f"Start with {start}, " + ", then ".join(phrases) + ". What number do you get?"
            )
            solution = "\n".join(lines) + f"\nThe answer is {value}."
            return Problem(question=question, solution=solution, answer=value)


ARITH_CHAIN = GeneratedTask(
    name=TASK_NAME, system_prompt=SYSTEM_PROMPT, sample=sample_problem, max_new_tokens=48
)


def generate_problems(
    n: int, seed: int, steps: int = 3, exclude: frozenset[str] | set[str] = frozenset()
) -> list[Problem]:
    """``n`` distinct problems from ``seed``, none of whose questions is in ``exclude``."""
    task = replace(ARITH_CHAIN, sample=partial(sample_problem, steps=steps))
    return task.generate(n, seed, exclude)


def train_test_split(n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Disjoint training and held-out problems; the held-out set depends only on ``seed``.

    The held-out problems are drawn first (from a seed derived from ``seed``) and excluded from
    the training draw, so accuracy measures generalisation to unseen problems. (Use
    ``ARITH_CHAIN.split(..., test_seed=0)`` to keep one held-out set across training seeds.)
    """
    return ARITH_CHAIN.split(n_train, n_test, seed=seed, test_seed=seed)


def to_sft_example(problem: Problem) -> dict[str, list[dict[str, str]]]:
    """The problem as a conversational prompt-completion row (:meth:`GeneratedTask.sft_example`)."""
    return ARITH_CHAIN.sft_example(problem)


def evaluation_task(problems: list[Problem], max_new_tokens: int = 48, batch_size: int = 16):
    """The problems as an :class:`infosft.evaluation.Task` (see
    :meth:`GeneratedTask.evaluation_task`). Worked solutions need about 35 tokens;
    ``max_new_tokens`` leaves room for that and cuts off the base model's long prose.
    """
    task = replace(ARITH_CHAIN, max_new_tokens=max_new_tokens)
    return task.evaluation_task(problems, batch_size=batch_size)
