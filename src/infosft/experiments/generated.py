"""Built-in tasks generated from a seed: problems with worked solutions and checkable answers.

A :class:`GeneratedTask` is a sampler of problems plus how to present them: as chat SFT rows
(the worked solution is the completion, the only training target) and as an
:class:`infosft.evaluation.Task` scored on the final number. Held-out problems are drawn from
their own seed and excluded from every training draw by their *key* (the arithmetic behind the
wording), so held-out accuracy measures problems never seen in training, not just new wordings.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Held-out problems come from seed TEST_SEED_OFFSET + test_seed, apart from any training seed.
TEST_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class Problem:
    """One problem: the question, its worked solution (the SFT target) and the final answer.

    ``key`` identifies the problem behind the wording (two wordings of 3 x 8 share it); it
    defaults to the question.
    """

    question: str
    solution: str
    answer: int
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.question)


@dataclass(frozen=True)
class GeneratedTask:
    """A task drawn from a seed: ``sample(rng)`` returns one random :class:`Problem`."""

    name: str
    system_prompt: str
    sample: Callable[[random.Random], Problem]
    max_new_tokens: int = 64

    def generate(self, n: int, seed: int, exclude: Iterable[str] = ()) -> list[Problem]:
        """``n`` problems with distinct keys from ``seed``, none of whose keys is in ``exclude``."""
        rng = random.Random(seed)
        seen = set(exclude)
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < n:
            attempts += 1
            if attempts > 100 * n + 1000:
                raise ValueError(
                    f"cannot draw {n} distinct {self.name} problems (found {len(problems)}); "
                    "ask for fewer"
                )
            problem = self.sample(rng)
            if problem.key not in seen:
                seen.add(problem.key)
                problems.append(problem)
        return problems

    def split(
        self, n_train: int, n_test: int, seed: int, test_seed: int = 0
    ) -> tuple[list[Problem], list[Problem]]:
        """Training problems of ``seed`` and the held-out problems of ``test_seed``, disjoint.

        The held-out set depends only on ``test_seed`` and ``n_test``, so every training seed is
        measured on the same problems and none of them is trained on.
        """
        test = self.held_out(n_test, test_seed)
        train = self.generate(n_train, seed=seed, exclude={p.key for p in test})
        return train, test

    def held_out(self, n_test: int, test_seed: int = 0) -> list[Problem]:
        """The held-out problems of ``test_seed``."""
        return self.generate(n_test, seed=TEST_SEED_OFFSET + test_seed)

    def prompt_messages(self, problem: Problem) -> list[dict[str, str]]:
        """The chat prompt of a problem (system + user), without the answer."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": problem.question},
        ]

    def sft_example(self, problem: Problem) -> dict[str, list[dict[str, str]]]:
        """A conversational prompt-completion row, as TRL's SFTTrainer takes it; the loss
        covers only the completion (the worked solution), like assistant-only SFT."""
        return {
            "prompt": self.prompt_messages(problem),
            "completion": [{"role": "assistant", "content": problem.solution}],
        }

    def evaluation_task(self, problems: list[Problem], batch_size: int = 16) -> Any:
        """The problems as an :class:`infosft.evaluation.Task` (greedy, one answer each).

        Scored by the ``math`` scorer: the number after "####" or "the answer is", else the
        last number, so a model is judged on the number, not on whether it copies the
        demonstrations' format.
        """
        from infosft.evaluation import SamplingSettings, Task

        items = [
            {"id": f"{self.name}-{i}", "question": p.question, "answer": str(p.answer)}
            for i, p in enumerate(problems)
        ]
        system = self.system_prompt
        return Task(
            name=self.name,
            items=items,
            prompt=lambda item: [
                {"role": "system", "content": system},
                {"role": "user", "content": item["question"]},
            ],
            scorer="math",
            reference=lambda item: item["answer"],
            generation=SamplingSettings(max_new_tokens=self.max_new_tokens, batch_size=batch_size),
        )

    def default_evaluation_task(self) -> Any:
        """``load_task(name)``: the 100 held-out problems of test seed 0."""
        return self.evaluation_task(self.held_out(100))
