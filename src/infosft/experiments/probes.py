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


def probe_records(
    model: Any, tokenizer: Any, items: Sequence[Probe], ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Greedy short answers to the probes, scored: ``{"task_id", "completion", "passed"}``.

    ``ids`` names the items (default ``probe-<position in items>``), so that a subset of the
    probes keeps the ids the full set gave them.
    """
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
    ids = [f"probe-{i}" for i in range(len(items))] if ids is None else list(ids)
    return [
        {"task_id": item_id, "completion": c[0], "passed": probe_passed(c[0], probe)}
        for item_id, probe, c in zip(ids, items, completions, strict=True)
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
    _probe("In which season do trees lose their leaves?", "autumn", "fall"),
    _probe("What is the currency of the United States?", "dollar"),
    _probe("What do you call a baby cat?", "kitten"),
    # More capitals.
    _probe("What is the capital of Greece?", "Athens"),
    _probe("What is the capital of Portugal?", "Lisbon"),
    _probe("What is the capital of Ireland?", "Dublin"),
    _probe("What is the capital of Austria?", "Vienna"),
    _probe("What is the capital of Norway?", "Oslo"),
    _probe("What is the capital of Sweden?", "Stockholm"),
    _probe("What is the capital of Poland?", "Warsaw"),
    _probe("What is the capital of the Netherlands?", "Amsterdam"),
    _probe("What is the capital of Belgium?", "Brussels"),
    _probe("What is the capital of Argentina?", "Buenos Aires"),
    _probe("What is the capital of Peru?", "Lima"),
    _probe("What is the capital of Kenya?", "Nairobi"),
    _probe("What is the capital of South Korea?", "Seoul"),
    _probe("What is the capital of Thailand?", "Bangkok"),
    _probe("What is the capital of Cuba?", "Havana"),
    _probe("What is the capital of Denmark?", "Copenhagen"),
    _probe("What is the capital of Finland?", "Helsinki"),
    _probe("What is the capital of Hungary?", "Budapest"),
    _probe("What is the capital of the Czech Republic?", "Prague"),
    _probe("What is the capital of India?", "New Delhi", "Delhi"),
    _probe("What is the capital of the United States?", "Washington"),
    _probe("What is the capital of Australia?", "Canberra"),
    # Geography.
    _probe("On which continent is Kenya?", "Africa"),
    _probe("On which continent is Brazil?", "South America"),
    _probe("On which continent is France?", "Europe"),
    _probe("On which continent is Japan?", "Asia"),
    _probe("What is the largest desert in Africa?", "Sahara"),
    _probe("Which country is home to the Great Wall?", "China"),
    _probe("In which country are the pyramids of Giza?", "Egypt"),
    _probe("In which city is the Eiffel Tower?", "Paris"),
    _probe("What is the longest river in South America?", "Amazon"),
    _probe("Which ocean lies between Europe and North America?", "Atlantic"),
    # Science.
    _probe("What is the boiling point of water in degrees Celsius?", "100"),
    _probe("Which planet is closest to the sun?", "Mercury"),
    _probe("What is the natural satellite of the Earth called?", "Moon"),
    _probe("What gas do plants take in from the air to make food?", "carbon dioxide", "CO2"),
    _probe("Which element has the chemical symbol Fe?", "iron"),
    _probe("Which element has the chemical symbol Au?", "gold"),
    _probe("Which element has the chemical symbol O?", "oxygen"),
    _probe("What force pulls objects toward the Earth?", "gravity"),
    _probe("What is the hardest natural substance?", "diamond"),
    _probe("How many planets are in our solar system?", "8", "eight"),
    _probe("Which organs do humans use to breathe?", "lungs", "lung"),
    _probe("Which part of a plant takes in water from the soil?", "root", "roots"),
    _probe("What does a caterpillar turn into?", "butterfly", "butterflies", "moth"),
    _probe("What is the largest organ of the human body?", "skin"),
    _probe("What do you call an animal that eats only plants?", "herbivore", "herbivores"),
    _probe("What is the center of an atom called?", "nucleus"),
    _probe("What do we call the study of living things?", "biology"),
    _probe("Which body part do humans use to see?", "eyes", "eye"),
    _probe("What is the closest star to the Earth?", "Sun"),
    _probe("What is H2O more commonly called?", "water"),
    # Animals.
    _probe("What is a baby dog called?", "puppy", "pup"),
    _probe("What is a baby cow called?", "calf"),
    _probe("What is a baby sheep called?", "lamb"),
    _probe("What is a baby horse called?", "foal", "colt", "filly"),
    _probe("What sound does a cow make?", "moo"),
    _probe("What sound does a dog make?", "bark", "woof", "barks"),
    _probe("Which African animal has a very long neck?", "giraffe"),
    _probe("What is the fastest land animal?", "cheetah"),
    _probe("Which animal gives us wool?", "sheep"),
    _probe("How many legs does an insect have?", "6", "six"),
    _probe("Which animal is famous for its black and white stripes?", "zebra"),
    _probe("What large animal has a trunk?", "elephant"),
    _probe("Which bird cannot fly and lives in Antarctica?", "penguin", "penguins"),
    _probe("What do bees collect from flowers?", "nectar", "pollen"),
    _probe("Which animal is known as man's best friend?", "dog"),
    _probe("What animal hops and carries its baby in a pouch?", "kangaroo"),
    # Word knowledge.
    _probe("What is the opposite of day?", "night"),
    _probe("What is the opposite of fast?", "slow"),
    _probe("What is the opposite of happy?", "sad", "unhappy"),
    _probe("What is the opposite of wet?", "dry"),
    _probe("What is the opposite of early?", "late"),
    _probe("What is the opposite of empty?", "full"),
    _probe("What is the opposite of win?", "lose"),
    _probe("What is the opposite of black?", "white"),
    _probe("What is the opposite of north?", "south"),
    _probe("What is the opposite of love?", "hate"),
    _probe("What is the plural of foot?", "feet"),
    _probe("What is the plural of tooth?", "teeth"),
    _probe("What is the plural of goose?", "geese"),
    _probe("What is the plural of man?", "men"),
    _probe("What is the plural of woman?", "women"),
    _probe("What is the past tense of go?", "went"),
    _probe("What is the past tense of eat?", "ate"),
    _probe("What is the past tense of run?", "ran"),
    _probe("What is the past tense of see?", "saw"),
    _probe("What is the past tense of write?", "wrote"),
    _probe("What is the past tense of swim?", "swam"),
    _probe("What is another word for big?", "large", "huge", "enormous", "giant"),
    _probe("What is another word for happy?", "glad", "joyful", "cheerful", "content"),
    _probe("What is a word that rhymes with cat?", "hat", "bat", "mat", "rat", "sat", "fat"),
    # Everyday knowledge and reasoning.
    _probe("What do you use to cut paper?", "scissors"),
    _probe("Where do people go to borrow books?", "library"),
    _probe("What do you need to open a locked door?", "key"),
    _probe("Which season comes after winter?", "spring"),
    _probe("Which meal do people eat in the morning?", "breakfast"),
    _probe("What do you call the day after today?", "tomorrow"),
    _probe("Which day comes after Monday?", "Tuesday"),
    _probe("Which month comes after January?", "February"),
    _probe("How many months are in a year?", "12", "twelve"),
    _probe("How many minutes are in an hour?", "60", "sixty"),
    _probe("Who takes care of people's teeth?", "dentist"),
    _probe("Who flies an airplane?", "pilot"),
    _probe("Who teaches students at school?", "teacher"),
    _probe("What do firefighters put out?", "fire", "fires"),
    _probe("What color is grass?", "green"),
    _probe("What color are ripe strawberries?", "red"),
    _probe("What color is fresh snow?", "white"),
    _probe("What do you use to write on a blackboard?", "chalk"),
    _probe("What do people use to keep dry in the rain?", "umbrella"),
    _probe("What do you call a house made of snow blocks?", "igloo"),
    _probe("What do cows give us to drink?", "milk"),
    _probe("Which fruit is used to make wine?", "grape", "grapes"),
    _probe("What do you call frozen rain that falls as small balls of ice?", "hail"),
    _probe("What is the main language spoken in Germany?", "German"),
    _probe("What is the main language spoken in France?", "French"),
    _probe("How many wheels does a bicycle have?", "2", "two"),
    _probe("How many sides does a triangle have?", "3", "three"),
    _probe("How many sides does a square have?", "4", "four"),
    _probe("How many players are on a soccer team on the field?", "11", "eleven"),
    _probe("What sport is played at Wimbledon?", "tennis"),
    _probe("What is the name of the toy bear named after Theodore Roosevelt?", "teddy"),
    # Simple arithmetic (not the fine-tuning tasks' multiplication, division or chains).
    _probe("What is 2 plus 2?", "4", "four"),
    _probe("What is 10 minus 3?", "7", "seven"),
    _probe("What is half of 10?", "5", "five"),
    _probe("What number comes after 99?", "100"),
    _probe("What is 5 plus 5?", "10", "ten"),
    _probe("How many items are in a dozen?", "12", "twelve"),
    # Following an instruction.
    _probe("Complete the saying: The early bird catches the ...", "worm"),
    _probe("Complete the line: Twinkle, twinkle, little ...", "star"),
    _probe("Translate 'hello' into Spanish.", "hola"),
    _probe("Translate 'thank you' into French.", "merci"),
    _probe("Name one primary color.", "red", "blue", "yellow"),
    _probe("Name a yellow fruit.", "banana", "lemon", "pineapple", "mango"),
    _probe("Name one day of the weekend.", "Saturday", "Sunday"),
    _probe("Write the number seven using digits.", "7"),
    _probe("Answer with one word: what is the color of the sky at night?", "black", "dark"),
    _probe("What is a young frog called?", "tadpole", "froglet"),
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
