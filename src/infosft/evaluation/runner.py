"""Evaluate a model on a task, or score pre-generated samples: generation -> scoring -> metrics.

Results are a dict ``{"task", "settings", "metrics", "samples"}`` (plus ``"sandbox"``, the mode
that ran code); ``samples`` holds one record per completion (``task_id``, ``sample_index``,
``completion``, ``passed``; for code also ``status`` and, when it did not pass, ``returncode``,
``detail`` and the end of its ``output``) in input order. A sample whose content cannot be
scored (a completion that is not text, a program that cannot be built or written) fails alone
with status ``"rejected"`` and its ``detail``; the metrics count the samples of each status.

Completions are appended to a JSON-lines progress file as they are generated, so an interrupted
run resumes where it stopped. Each row carries the key of everything that decided it (model
weights and config, tokenizer and chat template, prompt, sampling settings): a row made by
another model or with other settings is never reused, and the run says how many it ignored.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from infosft.distributed import gather, my_batches, shares
from infosft.evaluation.generation import SamplingSettings, completions_key, generate
from infosft.evaluation.metrics import summarize
from infosft.evaluation.sandbox import (
    DEFAULT_TIMEOUT_S,
    SandboxError,
    SandboxResult,
    check_sandbox,
    describe,
    run_python,
)
from infosft.evaluation.scorers import SCORERS, run_programs
from infosft.evaluation.tasks import Task
from infosft.files import write_json_atomic

write_json = write_json_atomic  # the one atomic JSON writer, re-exported by infosft.evaluation

OUTPUT_TAIL_CHARS = 2000  # of a failed program's output, kept in its record as the reason
REASON_CHARS = 300  # of the error that kept a sample's program from being built


def default_ks(n: int) -> list[int]:
    """pass@k reported for k = 1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2**i for i in range(12)) if k <= n]
    return ks if n in ks else [*ks, n]


def validate_limit(limit: int | None) -> None:
    """None (every item) or a positive number of items; 0 and negatives are mistakes."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(
            f"limit must be a positive number of items (or None for all), got {limit!r}"
        )


def sandbox_record(result: SandboxResult) -> dict[str, Any]:
    """What a code sample's record keeps of its run: the verdict, and why when it failed."""
    record = {"passed": result.passed, "status": result.status}
    if not result.passed:
        record.update(
            returncode=result.returncode,
            detail=result.detail,
            output=result.output[-OUTPUT_TAIL_CHARS:],
        )
    return record


def rejected_record(reason: str) -> dict[str, Any]:
    """The record of a sample whose content could not be scored: it fails, and says why."""
    return {"passed": False, "status": "rejected", "returncode": None, "detail": reason}


def not_text(completion: object) -> str:
    """Why a completion that is not a str is rejected (a samples file may hold any JSON)."""
    return f"the completion is not text but {type(completion).__name__}"


def build_program(task: Task, item: dict[str, Any], completion: object) -> tuple[str, str]:
    """The program of one code sample and ``""``, or ``""`` and why it cannot be built. The
    builder only joins the task's text and the completion, so whatever it raises comes from
    that content: the sample's failure, never the run's."""
    if not isinstance(completion, str):
        return "", not_text(completion)
    try:
        return task.program(item, completion), ""
    except Exception as error:  # raised by this sample's content (see above)
        return "", f"its program could not be built: {error!r}"[:REASON_CHARS]


def run_checked(
    programs: Sequence[str], workers: int, timeout: float, mode: str, progress: bool
) -> list[SandboxResult]:
    """Run the programs; an infrastructure failure ("error") is retried once, alone, and a
    second one raises SandboxError: it must never be scored as wrong code."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(programs), desc="running tests", disable=not progress)
    lock = threading.Lock()

    def advance(_index: int, _result: Any) -> None:
        with lock:
            bar.update()

    try:
        results = run_programs(programs, workers, timeout, mode, on_result=advance)
    finally:
        bar.close()
    for i, result in enumerate(results):
        if result.status == "error":
            results[i] = run_python(programs[i], timeout=timeout, mode=mode)
    errors = [i for i, r in enumerate(results) if r.status == "error"]
    if errors:
        first = describe(results[errors[0]])
        raise SandboxError(
            f"the {mode} sandbox could not run {len(errors)} of {len(programs)} programs, so "
            f"nothing was scored; the first ended {first}"
        )
    return results


def score_samples(
    task: Task,
    samples: Sequence[dict[str, Any]],
    workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT_S,
    sandbox: str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score ``{"task_id", "completion"}`` records; returns them, in order, with ``passed``.

    Code is run in the sandbox after it has shown it can run a known-good program and fail a
    known-bad one; SandboxError otherwise, or when programs cannot be run (never a 0 score).
    A sample whose own content cannot be scored gets status ``"rejected"`` and the rest are
    scored (see the module docstring).
    """
    items = task.by_id()
    missing = sorted({s["task_id"] for s in samples} - set(items))
    if missing:
        raise ValueError(f"samples name task ids not in task {task.name!r}: {missing[:5]}")
    records = [dict(s) for s in samples]
    if task.program is not None:
        mode = check_sandbox(sandbox, timeout)
        built = [build_program(task, items[s["task_id"]], s["completion"]) for s in samples]
        runnable = [i for i, (_, rejection) in enumerate(built) if not rejection]
        # Under a distributed measurement each rank runs a share of the programs; an error
        # is raised on every rank (none may leave the others waiting).
        ran = []
        for share, programs in my_batches(shares([built[i][0] for i in runnable])):
            try:
                ran.append((share, run_checked(programs, workers, timeout, mode, progress)))
            except SandboxError as err:
                ran.append((share, err))
        results = []
        for part in gather(ran):
            if isinstance(part, SandboxError):
                raise part
            results.extend(part)
        for i, (_, rejection) in enumerate(built):
            if rejection:
                records[i].update(rejected_record(rejection))
        for i, result in zip(runnable, results, strict=True):
            records[i].update(sandbox_record(result))
    else:
        texts = []
        for i, sample in enumerate(samples):
            if isinstance(sample["completion"], str):
                texts.append(i)
            else:
                records[i].update(rejected_record(not_text(sample["completion"])))
        completions = [samples[i]["completion"] for i in texts]
        references = [task.reference(items[samples[i]["task_id"]]) for i in texts]
        scores = SCORERS[task.scorer](completions, references)
        for i, ok in zip(texts, scores, strict=True):
            records[i]["passed"] = bool(ok)
    return records


def summarize_records(
    records: Sequence[dict[str, Any]], greedy: bool, seed: int = 0
) -> dict[str, float]:
    """Group records by ``task_id`` (first-seen order) and compute acc@1 / pass@k with CIs,
    plus ``num_<status>``: how many samples ended with each status (code, rejected)."""
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(r["task_id"], []).append(bool(r["passed"]))
    n = min(len(g) for g in groups.values())
    metrics = summarize(list(groups.values()), default_ks(n), greedy=greedy, seed=seed)
    statuses = Counter(r["status"] for r in records if "status" in r)
    return metrics | {f"num_{status}": count for status, count in sorted(statuses.items())}


def item_key(run_key: str, task: Task, item: dict[str, Any]) -> str:
    """The progress key of one item: the run's key, the item's id and its prompt."""
    prompt = json.dumps([item["id"], task.prompt(item)], sort_keys=True)
    return hashlib.sha256(f"{run_key}\0{prompt}".encode()).hexdigest()


def load_progress(path: Path, keys: dict[str, str], n: int) -> dict[str, list[str]]:
    """Saved completions whose key matches ``keys`` (item id -> key), ``n`` strings each.
    Rows made under another key (model, tokenizer, prompt, settings), cut by an interruption
    or malformed are not reused; a warning says how many of them there were."""
    if not path.is_file():
        return {}
    done: dict[str, list[str]] = {}
    ignored = 0
    for line in path.read_bytes().splitlines():
        try:
            row = json.loads(line)
            completions = row["completions"]
            reusable = (
                keys.get(row["task_id"]) == row["key"]
                and isinstance(completions, list)
                and len(completions) == n
                and all(isinstance(c, str) for c in completions)
            )
        except (ValueError, KeyError, TypeError):  # a line cut by an interruption, or no key
            reusable = False
        if reusable:
            done[row["task_id"]] = row["completions"]
        elif line.strip():
            ignored += 1
    if ignored:
        warnings.warn(
            f"{path}: ignored {ignored} saved rows made by another model, tokenizer, prompt or "
            "generation settings (or cut short); their items are generated again",
            stacklevel=3,
        )
    return done


def generate_for_task(
    model: Any,
    tokenizer: Any,
    task: Task,
    settings: SamplingSettings,
    items: Sequence[dict[str, Any]],
    progress_path: Path | None = None,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Completions for each item (id -> list of ``settings.n``), resuming from progress_path."""
    keys, done = {}, {}
    if progress_path is not None:
        run_key = completions_key(model, tokenizer, settings)
        keys = {item["id"]: item_key(run_key, task, item) for item in items}
        done = load_progress(progress_path, keys, settings.n)
    todo = [item for item in items if item["id"] not in done]

    def save(indices: list[int], completions: list[list[str]]) -> None:
        with progress_path.open("a", encoding="utf-8") as f:
            for i, c in zip(indices, completions, strict=True):
                item_id = todo[i]["id"]
                row = {"task_id": item_id, "key": keys[item_id], "completions": c}
                f.write(json.dumps(row) + "\n")

    if todo:
        if progress_path is not None:
            progress_path.parent.mkdir(parents=True, exist_ok=True)
        prompts = [task.prompt(i) for i in todo]
        sample_keys = [item["id"] for item in todo]
        on_batch = save if progress_path is not None else None
        outputs = generate(model, tokenizer, prompts, settings, progress, on_batch, sample_keys)
        done.update({item["id"]: out for item, out in zip(todo, outputs, strict=True)})
    return {item["id"]: done[item["id"]] for item in items}


def evaluate(
    model: Any,
    tokenizer: Any,
    task: Task,
    settings: SamplingSettings | None = None,
    limit: int | None = None,
    workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT_S,
    sandbox: str = "auto",
    progress_path: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate completions for the task's items (the first ``limit``), score them, summarise.

    For a code task the sandbox is checked before anything is generated. Returns ``{"task",
    "settings", "metrics", "samples"}`` (and ``"sandbox"`` for code; see the module docstring).
    """
    settings = settings or task.generation
    validate_limit(limit)
    items = task.items[:limit] if limit is not None else task.items
    mode = check_sandbox(sandbox, timeout) if task.program is not None else None
    path = Path(progress_path) if progress_path else None
    completions = generate_for_task(model, tokenizer, task, settings, items, path, progress)
    samples = [
        {"task_id": item["id"], "sample_index": j, "completion": c}
        for item in items
        for j, c in enumerate(completions[item["id"]])
    ]
    records = score_samples(task, samples, workers, timeout, mode or sandbox, progress)
    results = {
        "task": task.name,
        "settings": asdict(settings),
        "metrics": summarize_records(records, greedy=settings.greedy, seed=settings.seed),
        "samples": records,
    }
    if mode is not None:
        results["sandbox"] = mode
    return results


def evaluate_with_base(
    model: Any,
    tokenizer: Any,
    base_model: Any,
    base_tokenizer: Any,
    task: Task,
    settings: SamplingSettings | None = None,
    progress_paths: tuple[str | Path | None, str | Path | None] = (None, None),
    general_prompts: Sequence[str] | None = None,
    general_texts: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """:func:`evaluate` (``options``) of a tuned model and of its base, each with its own
    tokenizer and progress file: ``model``'s results with ``base_metrics`` and ``forgetting``,
    :func:`infosft.evaluation.forgetting.compare_to_base` with ``task`` as both new task and
    prior capability (the keys and values a grid cell reports). KL and general NLL compare both
    models through ``tokenizer``; None for ``general_prompts`` or ``general_texts``: built-in."""
    from infosft.evaluation import forgetting

    forgetting.check_shared_vocabulary(base_model, model, tokenizer)
    if general_prompts is None:
        general_prompts = forgetting.DEFAULT_GENERAL_PROMPTS
    texts = list(forgetting.DEFAULT_GENERAL_TEXTS if general_texts is None else general_texts)
    prompts = list(general_prompts)
    if getattr(tokenizer, "chat_template", None):
        prompts = forgetting.general_prompt_messages(prompts)
    # First: it refuses empty prompts or texts before anything is generated for the task.
    general = forgetting.measure_base_general(base_model, tokenizer, prompts, texts)
    reference = forgetting.KLReference(base_model, tokenizer, prompts, general["general_samples"])
    results = evaluate(model, tokenizer, task, settings, progress_path=progress_paths[0], **options)
    base = evaluate(
        base_model, base_tokenizer, task, settings, progress_path=progress_paths[1], **options
    )
    base_correct = forgetting.first_samples(base["samples"])
    tuned_correct = forgetting.first_samples(results["samples"])
    base_scores = {**general, "task_correct": base_correct, "prior_correct": base_correct}
    results["base_metrics"] = base["metrics"]
    results["forgetting"] = forgetting.compare_to_base(
        model, tokenizer, base_scores, tuned_correct, tuned_correct, reference, texts
    )
    return results


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """The ``{task_id, completion}`` records of a JSON-lines (or JSON list) file; errors name
    the file and line."""
    from infosft.files import read_records

    samples = read_records(Path(path), "samples file")[0]
    for n, row in enumerate(samples, 1):
        # A completion that is not text is the sample's failure, scored as "rejected".
        if "task_id" not in row or "completion" not in row:
            raise ValueError(f"{path}: record {n} needs 'task_id' and 'completion'")
        if not isinstance(row["task_id"], str):
            raise ValueError(f"{path}: record {n}'s 'task_id' must be a string")
    if not samples:
        raise ValueError(f"samples file {path} is empty")
    return samples


def check_models(
    model: str, base_model: str | None, task: Task | None, lm_eval_chat_template: bool = False
) -> None:
    """From the tokenizers and configs, before any weights load: both models exist, a task
    (or lm-eval with ``lm_eval_chat_template``) that prompts with chat messages has a chat
    template, and with ``task`` and ``base_model`` (a forgetting report) both share one
    vocabulary (KL and NLL compare them token by token). Errors name the models by the
    ``infosft eval`` flags that give them."""
    from infosft.models import load_config, load_tokenizer

    names = {"--model": model, "--base-model": base_model}
    tokenizers = {flag: load_tokenizer(name) for flag, name in names.items() if name}
    chat = task is not None and task.items and not isinstance(task.prompt(task.items[0]), str)
    for flag, tokenizer in tokenizers.items():
        if getattr(tokenizer, "chat_template", None) is not None:
            continue
        if chat:
            raise ValueError(
                f"task {task.name!r} prompts with chat messages, but the tokenizer of {flag} "
                f"{names[flag]} has no chat template; use a chat model or a prompt: template"
            )
        if lm_eval_chat_template:
            raise ValueError(
                f"--lm-eval-chat-template: the tokenizer of {flag} {names[flag]} has no chat "
                "template; drop the flag"
            )
    if task is None or not base_model:
        return
    sizes = {}
    for flag, tokenizer in tokenizers.items():
        text_config = load_config(names[flag]).get_text_config()
        sizes[flag] = (len(tokenizer), getattr(text_config, "vocab_size", None))
    (tuned, base) = tokenizers.values()
    if sizes["--model"] != sizes["--base-model"] or tuned.get_vocab() != base.get_vocab():
        describe = {f: f"{t} tokens (embedding rows: {e})" for f, (t, e) in sizes.items()}
        raise ValueError(
            f"--model {model} has a vocabulary of {describe['--model']} and --base-model "
            f"{base_model} one of {describe['--base-model']}"
            + (", with other tokens" if sizes["--model"] == sizes["--base-model"] else "")
            + "; forgetting compares both models token by token: pass the model --model was "
            "fine-tuned from as --base-model"
        )


def evaluate_models(
    model_name: str,
    task: Task | None,
    settings: SamplingSettings | None = None,
    *,
    base_model_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress_paths: tuple[str | Path | None, str | Path | None] = (None, None),
    general_prompts: Sequence[str] | None = None,
    general_texts: Sequence[str] | None = None,
    lm_eval: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Load ``model_name`` (and ``base_model_name``) and run :func:`evaluate` on ``task``, or
    :func:`evaluate_with_base` with a base; ``lm_eval``: the keyword arguments of
    :func:`infosft.evaluation.lm_eval_tasks.run_lm_eval` (``tasks``, ``limit``, ...), run on
    both models and reported side by side. ``options``: :func:`evaluate`'s."""
    from infosft.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype, device=device)
    base = None  # (model, tokenizer)
    if base_model_name:
        base = load_model_and_tokenizer(base_model_name, dtype=dtype, device=device)
    results: dict[str, Any] = {}
    if task is not None and base is None:
        results = evaluate(
            model, tokenizer, task, settings, progress_path=progress_paths[0], **options
        )
    elif task is not None:
        texts = {"general_prompts": general_prompts, "general_texts": general_texts}
        results = evaluate_with_base(
            model, tokenizer, *base, task, settings, progress_paths, **texts, **options
        )
    if lm_eval is not None:
        from infosft.evaluation.lm_eval_tasks import lm_eval_report, run_lm_eval

        tuned = run_lm_eval(model, tokenizer, **lm_eval)
        base_lm_eval = run_lm_eval(*base, **lm_eval) if base else None
        results["lm_eval"] = lm_eval_report(tuned, base_lm_eval)
    return results


def with_overrides(settings: SamplingSettings, **overrides: Any) -> SamplingSettings:
    """``settings`` with the given fields replaced (``None`` values are ignored)."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
