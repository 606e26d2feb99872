"""The strong-prior task: one-step word problems, demonstrated in a person's concise style.

A problem reads "Nina has 4 bags with 7 shells in each bag. How many shells does Nina have?"
(equal groups) or "Nina shares 28 shells equally among 4 friends. How many shells does each
friend get?" (fair sharing), and its demonstration is one sentence of working and the answer,
as a teacher would write it: "4 bags of 7 shells make 4 × 7 = 28 shells. The answer is 28."

Why this task represents the "strong prior, off-policy demonstrations" regime (the paper's
setting, scaled down): SmolLM2-135M-Instruct was trained on grade-school word problems and
already solves a fair share of these before any tuning (held-out accuracy measured by
``benchmarks/regimes.py``), but it answers in its own style ("To solve this problem, we need
to ...", "#### 28"), so the demonstrations are off-policy in wording and format while the skill
they teach is one the model partly has. Nothing in it favours a method: every method trains on
the same rows, every solution has the same two sentence shapes, and correctness is judged only
on the final number (the base's "#### 28" counts as much as "The answer is 28.").
"""

from __future__ import annotations

import random

from infosft.experiments.generated import GeneratedTask, Problem

TASK_NAME = "word_problems"
SYSTEM_PROMPT = "Solve the problem."

NAMES = ("Mia", "Tom", "Ava", "Leo", "Sara", "Ben", "Nina", "Omar", "Lily", "Jack", "Emma", "Noah")
THINGS = (
    "apples",
    "stickers",
    "marbles",
    "books",
    "pencils",
    "cookies",
    "shells",
    "cards",
    "coins",
    "eggs",
)
FACTOR_RANGE = (2, 9)


def sample_problem(rng: random.Random) -> Problem:
    """One multiplication (equal groups) or division (fair sharing) word problem.

    The key is the arithmetic and the object, so a held-out problem is never trained on in
    another wording (another name); the same product with other objects may be.
    """
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(*FACTOR_RANGE), rng.randint(*FACTOR_RANGE)
    if rng.random() < 0.5:
        question = (
            f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} does {name} have?"
        )
        solution = f"{a} bags of {b} {thing} make {a} × {b} = {a * b} {thing}. "
        return Problem(question, solution + f"The answer is {a * b}.", a * b, f"{a}*{b} {thing}")
    question = (
        f"{name} shares {a * b} {thing} equally among {a} friends. How many {thing} does each "
        "friend get?"
    )
    solution = f"{a * b} {thing} shared equally among {a} friends is {a * b} ÷ {a} = {b} each. "
    return Problem(question, solution + f"The answer is {b}.", b, f"{a * b}/{a} {thing}")


WORD_PROBLEMS = GeneratedTask(
    name=TASK_NAME, system_prompt=SYSTEM_PROMPT, sample=sample_problem, max_new_tokens=96
)
