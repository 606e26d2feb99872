"""Built-in measures of what the base model could already do, for the forgetting metrics.

Three kinds, all written for this package (no downloads):

- ``PROBES``: short-answer questions (facts, word knowledge, everyday reasoning) with the
  strings that count as a correct answer. Retention is measured on the items the base model
  gets right, so items it fails cost nothing.
- ``GENERAL_PROMPTS``: everyday instructions; KL(base || tuned) is estimated on the base
  model's own responses to them.
- ``GENERAL_TEXT``: plain-English paragraphs unrelated to arithmetic; their per-token NLL under
  a model measures drift in general language modelling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROBE_SYSTEM_PROMPT = "Answer the question briefly."


@dataclass(frozen=True)
class Probe:
    """A question and the answers that count as correct (case-insensitive substring match)."""

    question: str
    answers: tuple[str, ...]


def _probe(question: str, *answers: str) -> Probe:
    return Probe(question=question, answers=answers)


def probe_passed(completion: str, probe: Probe) -> bool:
    """Whether any accepted answer occurs in ``completion`` as a whole word, ignoring case."""
    return any(
        re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", completion, re.IGNORECASE)
        for answer in probe.answers
    )


def probe_records(model: Any, tokenizer: Any, items: Sequence[Probe]) -> list[dict[str, Any]]:
    """Greedy short answers to the probes, scored: ``{"task_id", "completion", "passed"}``."""
    from infosft.evaluation import SamplingSettings, generate

    prompts = [
        [
            {"role": "system", "content": PROBE_SYSTEM_PROMPT},
            {"role": "user", "content": probe.question},
        ]
        for probe in items
    ]
    settings = SamplingSettings(max_new_tokens=24, batch_size=len(prompts))
    completions = generate(model, tokenizer, prompts, settings, progress=False)
    return [
        {"task_id": f"probe-{i}", "completion": c[0], "passed": probe_passed(c[0], probe)}
        for i, (probe, c) in enumerate(zip(items, completions, strict=True))
    ]


PROBES: tuple[Probe, ...] = (
    _probe("What is the capital of France?", "Paris"),
    _probe("What is the capital of Japan?", "Tokyo"),
    _probe("What is the capital of Italy?", "Rome"),
    _probe("What is the capital of Germany?", "Berlin"),
    _probe("What is the capital of Spain?", "Madrid"),
    _probe("What is the capital of the United Kingdom?", "London"),
    _probe("What is the capital of Russia?", "Moscow"),
    _probe("What is the capital of Egypt?", "Cairo"),
    _probe("What is the capital of China?", "Beijing"),
    _probe("What is the capital of Canada?", "Ottawa"),
    _probe("What is the largest planet in our solar system?", "Jupiter"),
    _probe("Which planet is known as the Red Planet?", "Mars"),
    _probe("What star is at the center of our solar system?", "Sun"),
    _probe("What is the chemical symbol for water?", "H2O", "H₂O"),
    _probe("What gas do humans need to breathe to stay alive?", "oxygen"),
    _probe("What is the freezing point of water in degrees Celsius?", "0", "zero"),
    _probe("How many days are there in a week?", "7", "seven"),
    _probe("How many legs does a spider have?", "8", "eight"),
    _probe("How many continents are there on Earth?", "7", "seven"),
    _probe("How many hours are in a day?", "24", "twenty-four"),
    _probe("What is the largest ocean on Earth?", "Pacific"),
    _probe("What is the tallest mountain in the world?", "Everest"),
    _probe("What is the longest river in Africa?", "Nile"),
    _probe("Who wrote the play Romeo and Juliet?", "Shakespeare"),
    _probe("Who painted the Mona Lisa?", "Leonardo", "Vinci"),
    _probe("Who developed the theory of relativity?", "Einstein"),
    _probe("What language is mainly spoken in Brazil?", "Portuguese"),
    _probe("What language is mainly spoken in Mexico?", "Spanish"),
    _probe("What color do you get when you mix blue and yellow?", "green"),
    _probe("What color is a ripe banana?", "yellow"),
    _probe("What color is the sky on a clear day?", "blue"),
    _probe("What is the opposite of hot?", "cold"),
    _probe("What is the opposite of up?", "down"),
    _probe("What is the opposite of big?", "small", "little"),
    _probe("What is the plural of mouse?", "mice"),
    _probe("What is the plural of child?", "children"),
    _probe("What animal is known as the king of the jungle?", "lion"),
    _probe("What is the largest mammal on Earth?", "whale"),
    _probe("What do bees make?", "honey"),
    _probe("What is frozen water called?", "ice"),
    _probe("Which organ pumps blood through the human body?", "heart"),
    _probe("What do plants need from the sun to make food?", "light", "sunlight"),
    _probe("What is the main ingredient of bread?", "flour", "wheat"),
    _probe("What instrument has black and white keys?", "piano"),
    _probe("In which season do leaves fall from the trees?", "autumn", "fall"),
    _probe("What is the currency of the United States?", "dollar"),
    _probe("What do you call a baby cat?", "kitten"),
)

GENERAL_PROMPTS: tuple[str, ...] = (
    "Give me one tip for sleeping better.",
    "Describe a sunny day at the beach in two sentences.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a library is to a child.",
    "Write a short thank-you note to a neighbour.",
    "Why do people drink coffee in the morning?",
    "Suggest a name for a small bakery.",
    "How can I keep a houseplant healthy?",
    "Tell me a fun fact about octopuses.",
    "What are the benefits of walking every day?",
    "Describe the taste of a lemon.",
    "Give two reasons to learn a second language.",
    "How do you make a cup of tea?",
    "What is a good way to start learning to cook?",
    "Write one sentence about autumn.",
    "Why is it important to drink water?",
)

GENERAL_TEXT: tuple[str, ...] = (
    "The old lighthouse stood at the end of the rocky point, its white paint peeling after "
    "decades of salt and wind. Fishermen still used it to find their way home, even though "
    "the lamp had been replaced by a small automatic beacon that blinked every few seconds.",
    "Bread is made by mixing flour, water, salt and yeast into a dough. The yeast feeds on the "
    "sugars in the flour and releases gas, which makes the dough rise. Baking sets the "
    "structure and gives the crust its brown colour and rich smell.",
    "Every spring the town held a market in the main square. Farmers brought vegetables, "
    "cheese and flowers, and children ran between the stalls with paper kites. By the "
    "afternoon most of the tables were empty and the musicians had started to play.",
    "Rivers shape the land they flow through. Over thousands of years they carve valleys, "
    "carry sand and stones toward the sea, and build wide plains where they spill over their "
    "banks. Many of the world's great cities grew up beside them.",
    "She opened the letter slowly, unsure whether she wanted to know what it said. The "
    "handwriting was familiar, although she had not seen it in years, and the paper smelled "
    "faintly of the cedar box where her grandmother kept her things.",
    "A good night's sleep helps the body repair itself and helps the mind sort the events of "
    "the day. Most adults need seven to nine hours, and keeping a regular bedtime makes it "
    "easier to fall asleep and wake up feeling rested.",
    "The museum's new exhibition tells the story of early flight, from paper balloons to the "
    "first engines light enough to lift a person. Visitors can climb into a copy of an early "
    "cockpit and read the notes the inventors wrote while testing their designs.",
    "Cats spend a large part of the day asleep, but they wake quickly at the sound of food. "
    "They clean their fur with rough tongues, mark their territory by rubbing their cheeks on "
    "furniture, and often choose the one box nobody wanted them to sit in.",
)
