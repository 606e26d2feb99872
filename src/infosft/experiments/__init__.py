"""Experiments: the demo, grid comparisons and data inspection, with their plots and reports.

Importing this package registers the built-in generated tasks with the evaluation registry, so
that ``load_task("arith_chain")`` or ``load_task("word_problems")`` (and
``infosft eval --task ...``) finds them. ``GENERATED_TASKS`` maps each name to its
:class:`~infosft.experiments.generated.GeneratedTask` (training rows, held-out splits).
"""

from infosft.evaluation.tasks import register_task
from infosft.experiments.arith_task import ARITH_CHAIN
from infosft.experiments.generated import GeneratedTask
from infosft.experiments.word_problems import WORD_PROBLEMS

# Weak prior (a new skill: base accuracy 0) and strong prior (the base partly has the skill).
GENERATED_TASKS: dict[str, GeneratedTask] = {
    task.name: task for task in (ARITH_CHAIN, WORD_PROBLEMS)
}

for _task in GENERATED_TASKS.values():
    register_task(_task.name, _task.default_evaluation_task)
