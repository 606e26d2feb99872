"""Experiments: the demo, grid comparisons and data inspection, with their plots and reports.

Importing this package registers the demo's task with the evaluation registry, so that
``load_task("arith_chain")`` (and ``infosft eval --task arith_chain``) finds it.
"""

from infosft.evaluation.tasks import register_task
from infosft.experiments.arith_task import TASK_NAME, default_evaluation_task

register_task(TASK_NAME, default_evaluation_task)
