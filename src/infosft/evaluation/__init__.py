"""Evaluation: generation, scorers, pass@k with CIs, forgetting metrics, and the code sandbox.

Typical use::

    from infosft.evaluation import evaluate, load_task
    results = evaluate(model, tokenizer, load_task("humaneval"))
    results["metrics"]["pass@1"]
"""

from infosft.evaluation.generation import SamplingSettings, generate
from infosft.evaluation.metrics import bootstrap_interval, pass_at_k, summarize, wilson_interval
from infosft.evaluation.runner import evaluate, evaluate_with_base, score_samples, write_json
from infosft.evaluation.sandbox import SandboxResult, run_python
from infosft.evaluation.tasks import Task, available_tasks, load_task, register_task

__all__ = [
    "SamplingSettings",
    "SandboxResult",
    "Task",
    "available_tasks",
    "bootstrap_interval",
    "evaluate",
    "evaluate_with_base",
    "generate",
    "load_task",
    "pass_at_k",
    "register_task",
    "run_python",
    "score_samples",
    "summarize",
    "wilson_interval",
    "write_json",
]
