"""Measuring a tuned model against its base, the same way for every cell of a grid.

For one model the suite measures

- **new-task accuracy**: the share of the task's held-out items whose first completion is
  correct (greedy tasks: acc@1), pooled over the task's evaluation sources;
- **retention**: of the prior-capability items the *base* model answers correctly (pooled over
  the prior tasks: built-in probes, task YAMLs, lm-eval tasks), the share the tuned model still
  answers correctly; a tuned model is asked only those items (the others cannot count);
- **KL(base || tuned)**: mean per-token KL over the vocabulary on the base model's own samples
  for general prompts (0 = unchanged where the base puts its mass);
- **general-text NLL**: nats per token of plain text, and its change from the base.

The comparison with the base is :func:`infosft.evaluation.forgetting.compare_to_base`, the one
``infosft eval --base-model`` reports too (the same keys and values for the same model).

Items are keyed ``"<source>/<item id>"`` so that several sources pool into one dict of
``{key: correct}``: ``task_correct`` and ``probe_correct``, the records
:mod:`infosft.experiments.fronts` builds its fronts from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import time
from typing import Any

from infosft.evaluation.forgetting import GENERAL_SAMPLE_TOKENS, share_correct
from infosft.experiments import probes
from infosft.experiments.grid import LM_EVAL_PREFIX, PROBES, GridSpec
from infosft.files import files_digest

EXAMPLES_KEPT = 2
# The grid key that sets a Suite field, to name it where its fingerprint changed.
GRID_KEY_OF = {"limit": "eval_limit", "batch_size": "eval_batch_size"}
# What a task's program builder is given in place of a model's completion when fingerprinted.
FINGERPRINT_COMPLETION = "<completion>"


@dataclasses.dataclass(frozen=True)
class Source:
    """Scored items from one place: the built-in probes, one of our tasks, or an lm-eval task."""

    name: str
    task: Any = None  # infosft.evaluation.Task
    lm_eval: str | None = None


@dataclasses.dataclass
class Suite:
    """Everything every model of a grid is measured on."""

    new_tasks: dict[str, list[Source]]
    priors: list[Source]
    general_prompts: list[list[dict[str, str]]]
    heldout_text: list[str]
    limit: int | None = None
    batch_size: int | None = None
    lm_eval_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fingerprint(self, task: str | None = None) -> dict[str, str]:
        """Digests of what decides the measurements of cells of ``task`` (all tasks: None), one
        per part so that a mismatch can name what changed. Every field of the suite is covered,
        an evaluation task whole (each of its fields, see :func:`task_content`)."""
        parts = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "new_tasks":
                for name in value if task is None else [task]:
                    for source in value[name]:
                        parts[f"evaluation task {source.name} of {name}"] = value_digest(
                            _source_content(source, self)
                        )
            elif field.name == "priors":
                for source in value:
                    parts[f"prior task {source.name}"] = value_digest(_source_content(source, self))
            elif field.name == "general_prompts":
                parts["general_prompts"] = value_digest([value, GENERAL_SAMPLE_TOKENS])
            elif field.name == "lm_eval_options":
                parts["lm_eval"] = value_digest(_lm_eval_content(self))
            else:
                parts[GRID_KEY_OF.get(field.name, field.name)] = value_digest(value)
        return parts


def build_suite(spec: GridSpec) -> Suite:
    """Load every task the grid names (a bad task YAML or unknown lm-eval task fails here,
    before any model is loaded)."""
    from infosft.evaluation import load_task
    from infosft.evaluation.forgetting import (
        DEFAULT_GENERAL_PROMPTS,
        DEFAULT_GENERAL_TEXTS,
        general_prompt_messages,
        read_texts,
    )
    from infosft.experiments import GENERATED_TASKS

    def source(entry: str) -> Source:
        if entry == PROBES:
            return Source(PROBES)
        if entry.startswith(LM_EVAL_PREFIX):
            from infosft.evaluation.lm_eval_tasks import lm_eval_task_name

            return Source(entry, lm_eval=lm_eval_task_name(entry))
        task = load_task(entry)
        return Source(task.name, task=task)

    new_tasks = {}
    for task in spec.tasks:
        if task.builtin:
            generated = GENERATED_TASKS[task.problems]
            evaluation = generated.evaluation_task(generated.held_out(task.n_test))
            new_tasks[task.name] = [Source(task.name, task=evaluation)]
        else:
            new_tasks[task.name] = [source(e) for e in task.evals]
    priors = [source(e) for e in spec.prior_tasks]
    groups = [priors, *new_tasks.values()]
    for sources in groups:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"two evaluation tasks share a name in {names}; rename one")
    lm_eval_names = [s.lm_eval for sources in groups for s in sources if s.lm_eval]
    if lm_eval_names:
        from infosft.evaluation.lm_eval_tasks import check_lm_eval_tasks

        check_lm_eval_tasks(lm_eval_names, spec.lm_eval.get("include_path"))
    prompts = read_texts(spec.general_prompts) if spec.general_prompts else DEFAULT_GENERAL_PROMPTS
    texts = read_texts(spec.heldout_text) if spec.heldout_text else DEFAULT_GENERAL_TEXTS
    return Suite(
        new_tasks=new_tasks,
        priors=priors,
        general_prompts=general_prompt_messages(prompts),
        heldout_text=list(texts),
        limit=spec.eval_limit,
        batch_size=spec.eval_batch_size,
        lm_eval_options=dict(spec.lm_eval),
    )


def score(
    model: Any, tokenizer: Any, source: Source, suite: Suite, only: set[str] | None = None
) -> tuple[dict[str, bool], list[str], dict[str, Any] | None]:
    """One model on one source: ``{key: first completion correct}``, the first completions
    (for the report) and, for lm-eval, its scores. ``only`` restricts our own sources to
    those keys (lm-eval tasks are always run whole)."""
    from infosft.evaluation import evaluate

    prefix = f"{source.name}/"
    if source.lm_eval is not None:
        from infosft.evaluation.lm_eval_tasks import run_lm_eval

        options = suite.lm_eval_options
        result = run_lm_eval(
            model,
            tokenizer,
            [source.lm_eval],
            limit=suite.limit,
            include_path=options.get("include_path"),
            num_fewshot=options.get("num_fewshot"),
            apply_chat_template=options.get("apply_chat_template", False),
            batch_size=options.get("batch_size") or 8,
            seed=0,
        )
        records = result["records"].get(source.lm_eval)
        if records is None:
            raise ValueError(
                f"lm-eval task {source.lm_eval} has no metric scored 0/1 per item; retention and "
                "accuracy need one (acc, exact_match, ...)"
            )
        correct = {prefix + r["task_id"]: bool(r["passed"]) for r in records}
        return correct, [], result["scores"].get(source.lm_eval)
    if source.task is None:
        keyed = {
            f"probe-{i}": probe
            for i, probe in enumerate(probes.PROBES[: suite.limit])
            if only is None or f"{prefix}probe-{i}" in only
        }
        asked = list(keyed.values())
        records = probes.probe_records(model, tokenizer, asked, list(keyed)) if keyed else []
    else:
        task = measured_task(source.task, suite)
        if only is not None:
            items = [item for item in task.items if prefix + str(item["id"]) in only]
            task = dataclasses.replace(task, items=items)
        records = evaluate(model, tokenizer, task, progress=False)["samples"] if task.items else []
    correct: dict[str, bool] = {}
    for record in records:
        correct.setdefault(prefix + str(record["task_id"]), bool(record["passed"]))
    examples = [r["completion"] for r in records[:EXAMPLES_KEPT]]
    return correct, examples, None


def measure_base(model: Any, tokenizer: Any, suite: Suite) -> dict[str, Any]:
    """The base model on every source, its samples on the general prompts, its general NLL."""
    from infosft.evaluation.forgetting import measure_base_general

    clock = _Clock()
    new_tasks = {}
    # Regimes of one task (its noisy or near-policy copy) share its held-out items: each set of
    # items is answered once, and its records carry each task's own key prefix.
    answered: dict[str, tuple[str, dict[str, bool], list[str]]] = {}
    for task, sources in suite.new_tasks.items():
        correct, examples = {}, []
        for source in sources:
            digest = value_digest(_source_content(source, suite))
            if digest not in answered:
                answered[digest] = (f"{source.name}/", *score(model, tokenizer, source, suite)[:2])
            prefix, first, shown = answered[digest]
            got = {f"{source.name}/{key.removeprefix(prefix)}": ok for key, ok in first.items()}
            correct.update(got)
            examples = examples or shown
        new_tasks[task] = {
            "accuracy": share_correct(correct),
            "correct": correct,
            "examples": examples,
        }
        clock.lap(task)
    priors, lm_eval_scores = {}, {}
    for source in suite.priors:
        got, _, scores = score(model, tokenizer, source, suite)
        priors[source.name] = got
        if scores is not None:
            lm_eval_scores[source.name] = scores
        clock.lap(source.name)
    general = measure_base_general(model, tokenizer, suite.general_prompts, suite.heldout_text)
    clock.lap("general")
    probe_correct = {key: ok for got in priors.values() for key, ok in got.items()}
    return {
        "new_tasks": new_tasks,
        "prior": {
            name: {
                "accuracy": share_correct(got),
                "correct": got,
                "base_correct": sum(got.values()),
            }
            for name, got in priors.items()
        },
        "probe_correct": probe_correct,
        "retention_items": sum(probe_correct.values()),
        "lm_eval_scores": lm_eval_scores,
        **general,
        "measure_seconds_by_part": clock.laps,
    }


def measure_tuned(
    model: Any,
    tokenizer: Any,
    suite: Suite,
    task: str,
    base: dict[str, Any],
    kl_reference: Any,
) -> dict[str, Any]:
    """A tuned model of ``task`` against the base: ``base`` from :func:`measure_base`,
    ``kl_reference`` a :class:`infosft.evaluation.forgetting.KLReference` of the base model on
    its general samples. :func:`infosft.evaluation.forgetting.compare_to_base`'s keys, and per
    source, the examples and the per-item records."""
    from infosft.evaluation.forgetting import compare_to_base, retention
    from infosft.evaluation.lm_eval_tasks import score_deltas

    clock = _Clock()
    task_correct, per_source, examples = {}, {}, []
    for source in suite.new_tasks[task]:
        got, shown, _ = score(model, tokenizer, source, suite)
        task_correct.update(got)
        per_source[source.name] = share_correct(got)
        examples = examples or shown
    clock.lap("new_task")
    probe_correct, retention_per_source, deltas = {}, {}, {}
    for source in suite.priors:
        known = {k for k, ok in base["prior"][source.name]["correct"].items() if ok}
        got, _, scores = score(model, tokenizer, source, suite, only=known)
        probe_correct.update(got)
        kept = retention(base["prior"][source.name]["correct"], got)
        retention_per_source[source.name] = kept["retention"]
        if scores is not None:
            deltas[source.name] = score_deltas(
                {"t": base["lm_eval_scores"][source.name]}, {"t": scores}
            )["t"]
    clock.lap("prior")
    base_scores = {
        "task_correct": base["new_tasks"][task]["correct"],
        "prior_correct": base["probe_correct"],
        "general_nll": base["general_nll"],
    }
    compared = compare_to_base(
        model, tokenizer, base_scores, task_correct, probe_correct, kl_reference, suite.heldout_text
    )
    clock.lap("kl_and_general_nll")
    return {
        **compared,
        "accuracy_per_source": per_source,
        "retention_per_source": retention_per_source,
        "lm_eval_delta": deltas,
        "examples": examples,
        "task_correct": task_correct,
        "probe_correct": probe_correct,
        "measure_seconds_by_part": clock.laps,
    }


class _Clock:
    """Seconds spent in each part of a measurement, for the progress lines and the results."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


def text_digest(text: str) -> str:
    """The short hash every fingerprint of a grid run uses: sha256 of ``text``, 16 hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def value_digest(content: Any) -> str:
    """:func:`text_digest` of ``content`` as canonical JSON (keys sorted)."""
    return text_digest(json.dumps(content, sort_keys=True, default=str))


def measured_task(task: Any, suite: Suite) -> Any:
    """A task as this suite measures it: its first ``suite.limit`` items, drawn with the task's
    own generation settings but for the suite's batch size when it sets one."""
    generation = task.generation
    if suite.batch_size is not None:
        generation = dataclasses.replace(generation, batch_size=suite.batch_size)
    return dataclasses.replace(task, items=task.items[: suite.limit], generation=generation)


def _source_content(source: Source, suite: Suite) -> Any:
    """What decides a source's items and their scoring (for fingerprints)."""
    if source.lm_eval is not None:
        return {"lm_eval": source.lm_eval}
    if source.task is None:
        return {
            "probes": [dataclasses.astuple(p) for p in probes.PROBES[: suite.limit]],
            "system": probes.PROBE_SYSTEM_PROMPT,
        }
    return task_content(measured_task(source.task, suite))


def task_content(task: Any) -> dict[str, Any]:
    """Every field of an evaluation task (:class:`infosft.evaluation.Task`) as plain values,
    for fingerprints: data fields as they are (every item whole, the generation settings), and
    a function field (prompt, reference, program) by what it returns for each item, given a
    stand-in completion where it takes one. A field added to Task later is covered too."""
    content = {}
    for field in dataclasses.fields(task):
        value = getattr(task, field.name)
        if callable(value):
            takes = len(inspect.signature(value).parameters)
            extra = (FINGERPRINT_COMPLETION,)[: takes - 1]
            value = [value(item, *extra) for item in task.items]
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        content[field.name] = value
    return content


def _lm_eval_content(suite: Suite) -> dict[str, Any]:
    """The lm-eval options, the content of the task directories they include, and the
    lm-eval version (which defines its built-in tasks) when a source is an lm-eval task."""
    options = suite.lm_eval_options
    include = options.get("include_path") or []
    sources = [*suite.priors, *(s for ss in suite.new_tasks.values() for s in ss)]
    version = None
    if any(s.lm_eval for s in sources):
        from importlib.metadata import version as installed

        version = installed("lm_eval")
    return {
        "options": options,
        "included": files_digest(include if isinstance(include, list) else [include]),
        "version": version,
    }
