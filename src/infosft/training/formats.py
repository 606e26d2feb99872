"""Row formatters: raw rows of the paper's public datasets -> TRL standard-format rows.

A formatter maps one raw row (a dict, as ``datasets`` yields it) to one row that TRL's
``SFTTrainer`` reads directly:

- conversational prompt-completion, ``{"prompt": [messages], "completion": [messages]}``, for
  single-turn data: TRL then trains on the completion only (``completion_only_loss``), which is
  the paper's "assistant-only loss" without needing ``{% generation %}`` markers in the template;
- conversational language modeling, ``{"messages": [...]}``, for multi-turn data (ToolAlpaca),
  to be trained with ``assistant_only_loss: true``.

Dataset-level selection (the UltraFeedback code-keyword filter, the OpenR1 < 8192-token filter)
is a row filter applied before formatting, not part of the formatter: see :func:`get_row_filter`
and :func:`token_length_filter`. Use ``dataset.filter(row_filter).map(formatter,
remove_columns=dataset.column_names)``.

Schemas. Confirmed from the datasets' cards / the projects' code: NuminaMath-CoT (``problem``,
``solution``, ``messages``), OpenR1-Math-220k (``problem``, ``solution``, ``generations``,
``correctness_math_verify``, ``messages``), UltraFeedback (``instruction``, ``completions`` with
``response`` and ``annotations.{instruction_following,helpfulness}.Rating``), SciQ (``question``,
``distractor1..3``, ``correct_answer``, ``support``), ToolAlpaca (``train_data.json``: one entry
per API with ``NLDocumentation`` and ``Instances``). Assumed, because the paper does not give
them: the code keywords, the prompt layout of the science and tool-use tasks, and the use of the
math system prompt for OpenR1.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

Row = dict[str, Any]
Formatter = Callable[[Row], Row]
RowFilter = Callable[[Row], bool]

MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
"""The system prompt of the paper's math runs (arXiv 2605.14967)."""

# name -> (formatter, its row filter or None)
_FORMATTERS: dict[str, tuple[Formatter, RowFilter | None]] = {}


def register_formatter(
    name: str, fn: Formatter, *, row_filter: RowFilter | None = None, overwrite: bool = False
) -> None:
    """Make ``fn`` available as ``data_format: name`` (CLI ``--data-format name``).

    ``row_filter(raw_row) -> bool``, when given, is the dataset-level selection that belongs to
    this format (for example keeping only code prompts); :func:`get_row_filter` returns it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"formatter name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"formatter {name!r} must be callable as fn(row) -> row, got {fn!r}")
    if name in _FORMATTERS and not overwrite:
        raise ValueError(f"formatter {name!r} is already registered; pass overwrite=True")
    _FORMATTERS[name] = (fn, row_filter)


def available_formatters() -> list[str]:
    """Names accepted by :func:`get_formatter`, in registration order."""
    return list(_FORMATTERS)


def get_formatter(name: str) -> Formatter:
    """The formatter registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return _FORMATTERS[name][0]
    except KeyError:
        known = ", ".join(available_formatters())
        raise ValueError(
            f"unknown data format {name!r}; known formats: {known}. "
            "Add one with infosft.training.formats.register_formatter(name, fn)."
        ) from None


def get_row_filter(name: str) -> RowFilter | None:
    """The dataset-level row filter of format ``name`` (None when it keeps every row)."""
    get_formatter(name)
    return _FORMATTERS[name][1]


def _field(row: Row, key: str, dataset: str) -> Any:
    """``row[key]``, or a ValueError naming the dataset and the columns the row does have."""
    if key not in row or row[key] is None:
        raise ValueError(
            f"{dataset} row has no {key!r} field (columns: {sorted(row)}); "
            f"is this the right --data-format for the dataset?"
        )
    return row[key]


def _single_turn(prompt: str, answer: str, system: str | None = None) -> Row:
    """Conversational prompt-completion row: loss on the assistant answer only."""
    prompt_messages = [{"role": "system", "content": system}] if system else []
    prompt_messages.append({"role": "user", "content": prompt})
    return {"prompt": prompt_messages, "completion": [{"role": "assistant", "content": answer}]}


def _from_messages(messages: list[Row], dataset: str) -> tuple[str, str]:
    """(first user content, last assistant content) of a two-turn ``messages`` list."""
    user = [m["content"] for m in messages if m.get("role") == "user"]
    assistant = [m["content"] for m in messages if m.get("role") == "assistant"]
    if not user or not assistant:
        raise ValueError(f"{dataset} row's messages need a user and an assistant turn")
    return user[0], assistant[-1]


def numina_math_cot(row: Row) -> Row:
    """AI-MO/NuminaMath-CoT -> prompt (system + problem) / completion (solution).

    Reads ``problem`` and ``solution``; falls back to the ``messages`` column (user problem,
    assistant solution) when they are absent. Adds the paper's math system prompt.
    """
    if "problem" in row and "solution" in row:
        problem, solution = row["problem"], row["solution"]
    else:
        problem, solution = _from_messages(_field(row, "messages", "NuminaMath-CoT"), "NuminaMath")
    return _single_turn(problem, solution, MATH_SYSTEM_PROMPT)


def openr1_math(row: Row) -> Row:
    """open-r1/OpenR1-Math-220k -> prompt (system + problem) / completion (R1 reasoning trace).

    The completion is, in order of preference: the assistant turn of ``messages`` (the dataset's
    own choice of a correct trace), the first of ``generations`` whose
    ``correctness_math_verify`` is true, the first generation, and finally ``solution`` (a short
    human solution, not a long chain of thought). The math system prompt is added because the
    traces were generated with it in the user turn (assumed to match the paper's run).
    """
    problem = _field(row, "problem", "OpenR1-Math")
    if row.get("messages"):
        return _single_turn(
            problem, _from_messages(row["messages"], "OpenR1-Math")[1], MATH_SYSTEM_PROMPT
        )
    generations = row.get("generations") or []
    verified = row.get("correctness_math_verify") or []
    correct = [g for g, ok in zip(generations, verified, strict=False) if ok]
    chosen = (correct or generations or [None])[0]
    if chosen is None:
        chosen = _field(row, "solution", "OpenR1-Math")
    return _single_turn(problem, chosen, MATH_SYSTEM_PROMPT)


# Assumed keyword list: the paper says "filtered to code by keyword" without giving the words.
CODE_KEYWORDS = (
    "code", "coding", "program", "function", "python", "java", "javascript", "typescript",
    "c++", "c#", "golang", "rust", "sql", "html", "css", "script", "algorithm", "implement",
    "class", "method", "api", "regex", "bash", "shell", "compile", "debug", "snippet",
)  # fmt: skip
_CODE_PATTERN = re.compile(
    r"(?<![a-z])(" + "|".join(re.escape(k) for k in CODE_KEYWORDS) + r")(?![a-z])", re.IGNORECASE
)


def is_code_prompt(row: Row) -> bool:
    """UltraFeedback row whose ``instruction`` mentions a code keyword (whole word)."""
    return bool(_CODE_PATTERN.search(str(row.get("instruction") or "")))


def _rating(completion: Row, aspect: str) -> float | None:
    """``annotations[aspect]["Rating"]`` as a number; None for "N/A" or a missing rating."""
    try:
        return float(completion["annotations"][aspect]["Rating"])
    except (KeyError, TypeError, ValueError):
        return None


def best_ultrafeedback_completion(row: Row) -> str | None:
    """The response with the highest instruction-following + helpfulness rating.

    Completions lacking either rating are skipped; ties keep the first. None when no completion
    has both ratings.
    """
    best, best_score = None, float("-inf")
    for completion in row.get("completions") or []:
        scores = [_rating(completion, a) for a in ("instruction_following", "helpfulness")]
        if None in scores:
            continue
        if sum(scores) > best_score:
            best, best_score = completion.get("response"), sum(scores)
    return best


def is_rated_code_prompt(row: Row) -> bool:
    """The code run's row filter: a code prompt with at least one fully rated completion."""
    return is_code_prompt(row) and best_ultrafeedback_completion(row) is not None


def ultrafeedback_code(row: Row) -> Row:
    """openbmb/UltraFeedback -> prompt (instruction) / completion (best-rated response)."""
    instruction = _field(row, "instruction", "UltraFeedback")
    best = best_ultrafeedback_completion(row)
    if best is None:
        raise ValueError(
            "UltraFeedback row has no completion rated on both instruction_following and "
            "helpfulness; filter rows first with is_rated_code_prompt"
        )
    return _single_turn(instruction, best)


def sciq(row: Row) -> Row:
    """allenai/sciq -> four-option multiple choice, completion "The answer is X. <answer>".

    The option order is a deterministic shuffle keyed on the question text (stable across runs
    and machines), so the correct letter is spread over A-D. The ``support`` paragraph is not
    shown (closed-book). The prompt layout is assumed; the paper does not give it.
    """
    question = _field(row, "question", "SciQ")
    correct = _field(row, "correct_answer", "SciQ")
    options = [correct] + [_field(row, f"distractor{i}", "SciQ") for i in (1, 2, 3)]
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    order = sorted(range(4), key=lambda i: (digest[i], i))
    options = [options[i] for i in order]
    letters = "ABCD"
    letter = letters[options.index(correct)]
    lines = [question, ""] + [f"{letters[i]}. {opt}" for i, opt in enumerate(options)]
    lines += ["", "Answer with the letter of the correct option."]
    return _single_turn("\n".join(lines), f"The answer is {letter}. {correct}")


def explode_toolalpaca(api_entries: Iterable[Row]) -> list[Row]:
    """ToolAlpaca ``train_data.json`` (one entry per API) -> one row per instance.

    Each row carries the API's ``Name`` and ``NLDocumentation``, the instance's ``input``,
    ``output`` and ``Final Thought``, and ``steps``: the instance's ``intermediate_steps``
    (``[[action, action_input, thought_action_text], observation]``, mixed lists that Arrow
    cannot store) as a list of ``{"action", "action_input", "text", "observation"}`` strings.
    Entries without ``Instances`` contribute nothing.
    """
    rows = []
    for api in api_entries:
        for instance in api.get("Instances") or []:
            steps = [
                {"action": str(action), "action_input": str(action_input), "text": str(text),
                 "observation": str(observation)}
                for (action, action_input, text), observation in instance.get(
                    "intermediate_steps") or []
            ]  # fmt: skip
            rows.append(
                {"Name": str(api.get("Name", "")),
                 "NLDocumentation": str(api.get("NLDocumentation", "")),
                 "input": str(instance.get("input", "")),
                 "output": str(instance.get("output", "")),
                 "Final Thought": str(instance.get("Final Thought") or ""),
                 "steps": steps}
            )  # fmt: skip
    return rows


def toolalpaca(row: Row) -> Row:
    """One ToolAlpaca instance row (see :func:`explode_toolalpaca`) -> multi-turn ``messages``.

    system: the API's natural-language documentation; user: the instruction (without the
    generator's "Hint:" line); then for each step an assistant turn with the model's
    "Thought/Action/Action Input" text and a user turn "Observation: ..."; finally an assistant
    turn with the final thought and answer. Train with ``assistant_only_loss: true`` so tool
    outputs are not learned, as in ToolAlpaca. The turn layout is assumed (ToolAlpaca itself
    trains on one ReAct text).
    """
    documentation = _field(row, "NLDocumentation", "ToolAlpaca")
    instruction = str(_field(row, "input", "ToolAlpaca")).rsplit("\nHint: ", 1)[0]
    system = (
        f"You can use the API {row.get('Name', '')!s} through these functions:\n{documentation}\n"
        "Answer in the format Thought / Action / Action Input, then give the final answer."
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": instruction}]
    for step in _field(row, "steps", "ToolAlpaca"):
        text = step["text"].strip() or (
            f"Action: {step['action']}\nAction Input: {step['action_input']}"
        )
        messages.append({"role": "assistant", "content": text})
        messages.append({"role": "user", "content": f"Observation: {step['observation']}"})
    final_thought = row.get("Final Thought") or "I can respond to the user now."
    answer = _field(row, "output", "ToolAlpaca")
    messages.append({"role": "assistant", "content": f"Thought: {final_thought}\n{answer}"})
    return {"messages": messages}


def token_length_filter(tokenizer: Any, max_tokens: int) -> RowFilter:
    """Row filter on FORMATTED rows: keep those whose chat-templated length is < ``max_tokens``.

    The paper drops OpenR1 examples of 8192 tokens or more instead of truncating them; use
    ``dataset.map(openr1_math).filter(token_length_filter(tokenizer, 8192))``.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")

    def keep(row: Row) -> bool:
        messages = row["messages"] if "messages" in row else row["prompt"] + row["completion"]
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return len(ids) < max_tokens

    return keep


register_formatter("numina_math_cot", numina_math_cot)
register_formatter("openr1_math", openr1_math)
register_formatter("ultrafeedback_code", ultrafeedback_code, row_filter=is_rated_code_prompt)
register_formatter("sciq", sciq)
register_formatter("toolalpaca", toolalpaca)
