"""``infosft eval``: generate and score a task, or score pre-generated HumanEval samples."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on a task (acc@1, pass@k, forgetting vs a base model)",
        description=(
            "Generate with --model and score on --task; with --base-model also measure "
            "forgetting (retention, KL(base||tuned), general-text NLL) as a grid cell of "
            "`infosft compare` reports it. With --lm-eval, also run "
            "lm-evaluation-harness tasks on both models. With --samples, score "
            "pre-generated completions ({task_id, completion} per line) without a model."
        ),
    )
    parser.add_argument(
        "--task", help="built-in task name or task YAML file (optional with --lm-eval)"
    )
    parser.add_argument(
        "--model",
        help="model to evaluate: name, checkpoint dir or hub id (default: the embedded "
        "smollm2-135m-instruct)",
    )
    parser.add_argument("--base-model", help="the model before fine-tuning, for forgetting")
    parser.add_argument("--samples", help="JSON lines of {task_id, completion} to score")
    parser.add_argument(
        "--output",
        help="results JSON (default: runs/eval/<task>-<model or samples name>.json); results "
        "of another model or task there are not replaced without --overwrite",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output even if it holds other results"
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N items (N >= 1)")
    gen = parser.add_argument_group("generation (defaults come from the task)")
    gen.add_argument("--n", type=int, help="samples per prompt (pass@k for k <= n)")
    gen.add_argument("--temperature", type=float, help="0 = greedy")
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--batch-size", type=int)
    gen.add_argument("--stop", nargs="+", help="stop strings (replace the task's)")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    gen.add_argument("--dtype", help="float32, bfloat16, ... (default: as saved)")
    run_opts = parser.add_argument_group("code execution")
    run_opts.add_argument(
        "--sandbox",
        choices=["auto", "bwrap", "landlock"],
        default="auto",
        help="how model-written code is confined (docs/sandbox.md); auto: bwrap, else landlock",
    )
    run_opts.add_argument("--workers", type=int, default=2, help="programs run in parallel")
    run_opts.add_argument("--timeout", type=float, default=3.0, help="seconds per program")
    forget = parser.add_argument_group("forgetting (with --base-model)")
    forget.add_argument("--general-prompts", help="JSON lines or text file of general prompts")
    forget.add_argument("--heldout", help="JSON lines or text file of general text")
    harness = parser.add_argument_group(
        "lm-evaluation-harness tasks (needs: pip install 'infosft[lm-eval]')"
    )
    harness.add_argument(
        "--lm-eval",
        nargs="+",
        metavar="TASK",
        help="lm-eval task, group or tag names (comma or space separated: ifeval, mmlu, "
        "arc_easy, hellaswag, gsm8k, ...), run on --model and --base-model with --limit and "
        "--batch-size; built-in tasks download their data sets",
    )
    harness.add_argument("--lm-eval-include", metavar="DIR", help="directory of task YAMLs")
    harness.add_argument("--lm-eval-fewshot", type=int, metavar="N", help="default: the task's")
    harness.add_argument(
        "--lm-eval-chat-template", action="store_true", help="apply the tokenizer's chat template"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run)


def print_metrics(title: str, metrics: dict) -> None:
    """One line per metric: value and its confidence interval when there is one."""
    print(title)
    for key, value in metrics.items():
        if key.endswith(("_ci_low", "_ci_high")) or not isinstance(value, (int, float)):
            continue
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        ci = f"  [{low:.4f}, {high:.4f}]" if low is not None else ""
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<28}{shown:>12}{ci}")


def read_samples(path: str) -> list[dict]:
    """The ``{task_id, completion}`` rows of a JSON-lines file; errors name the file and line."""
    from infosft.files import read_text

    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise FileNotFoundError(f"samples file {path} {what}")
    samples = []
    for n, line in enumerate(read_text(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno}); each line is "
                'one {"task_id": ..., "completion": ...} object'
            ) from None
        if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
            raise ValueError(f"{path}:{n}: each line needs 'task_id' and 'completion'")
        # A completion that is not text is the sample's failure, scored as "rejected".
        if not isinstance(row["task_id"], str):
            raise ValueError(f"{path}:{n}: 'task_id' must be a string")
        samples.append(row)
    if not samples:
        raise ValueError(f"samples file {path} is empty")
    return samples


def file_name_part(text: str, fallback: str) -> str:
    """``text`` as part of one file name: runs of characters other than ASCII letters, digits
    and ``._-`` become ``-`` (no ``/``, NUL or ``..`` path step survives), no leading dot, at
    most 100 characters; ``fallback`` when nothing is left."""
    part = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip(".-").rstrip("-")
    return part[:100] or fallback


def slug(name: str) -> str:
    """A file-name-safe short name of a model or file: its last path component."""
    return file_name_part(Path(name.rstrip("/")).name or name, "model")


def check_output(output: Path, identity: dict, overwrite: bool) -> None:
    """Before any work: ``output`` must be a writable file path, and must not hold the results
    of another task, model or samples file (unless ``overwrite``)."""
    if output.is_dir():
        raise ValueError(
            f"--output {output} is a directory; give a file such as {output}/results.json"
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}."):
            pass
    except OSError as err:
        raise ValueError(f"cannot write --output {output}: {err}") from None
    if not output.exists() or overwrite:
        return
    try:
        previous = json.loads(output.read_bytes())
        same = all(previous.get(key) == value for key, value in identity.items())
    except (ValueError, AttributeError):
        same = False
    if not same:
        raise ValueError(
            f"--output {output} already holds other results (not {identity}); choose another "
            "--output, or pass --overwrite to replace them"
        )


def resolve_device(name: str | None) -> str:
    """The torch device to load models on; a clear error for unknown or absent devices."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"unknown --device {name!r} ({err}); use cpu, cuda, cuda:1, ...") from None
    if device.type == "cpu":
        return name
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type == "mps":
        available = torch.backends.mps.is_available
    if available is None or not available():
        raise ValueError(
            f"--device {name}: no {device.type} device is available here; use --device cpu"
        )
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"--device {name}: only {count()} {device.type} device(s) here")
    return name


def run(args: argparse.Namespace) -> int:
    from infosft.evaluation.sandbox import SandboxError

    try:
        return evaluate_command(args)
    except SandboxError as err:
        # Not the program's fault and not the user's input: say so, and score nothing.
        print(f"infosft eval: sandbox error: {err}", file=sys.stderr)
        return 1


# Flags that only apply when completions are generated (not with --samples), by attribute.
GENERATION_FLAGS = {
    "n": "--n",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "max_new_tokens": "--max-new-tokens",
    "stop": "--stop",
}
FORGETTING_FLAGS = {"general_prompts": "--general-prompts", "heldout": "--heldout"}
LM_EVAL_FLAGS = {
    "lm_eval_include": "--lm-eval-include",
    "lm_eval_fewshot": "--lm-eval-fewshot",
    "lm_eval_chat_template": "--lm-eval-chat-template",
}


def given(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """The names of the ``flags`` set on the command line."""
    # By identity: 0 == False, yet ``--seed 0`` and ``--temperature 0`` are given flags.
    values = {flag: getattr(args, attr) for attr, flag in flags.items()}
    return [flag for flag, value in values.items() if value is not None and value is not False]


# Flags naming a file, directory, model or device, by attribute.
NAME_FLAGS = {
    "task": "--task",
    "model": "--model",
    "base_model": "--base-model",
    "samples": "--samples",
    "output": "--output",
    "device": "--device",
    "dtype": "--dtype",
    **FORGETTING_FLAGS,
    "lm_eval_include": "--lm-eval-include",
}


def check_flags(args: argparse.Namespace) -> None:
    """Every flag the command would ignore is an error, and so is an empty name: nothing is
    silently dropped or replaced by a default."""
    for attr, flag in NAME_FLAGS.items():
        value = getattr(args, attr)
        if value is not None and not value.strip():
            raise ValueError(
                f"{flag} is empty (often an unset shell variable); give a value or drop {flag}"
            )
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.lm_eval_fewshot is not None and args.lm_eval_fewshot < 0:
        raise ValueError(f"--lm-eval-fewshot must be >= 0, got {args.lm_eval_fewshot}")
    if not args.lm_eval and given(args, LM_EVAL_FLAGS):
        raise ValueError(f"{', '.join(given(args, LM_EVAL_FLAGS))} need --lm-eval TASK ...")
    if args.samples:
        if not args.task:
            raise ValueError("--samples scores completions of a task: add --task NAME")
        generating = {"model": "--model", "base_model": "--base-model", "lm_eval": "--lm-eval"}
        generating.update({**GENERATION_FLAGS, **FORGETTING_FLAGS, "batch_size": "--batch-size"})
        generating.update({"seed": "--seed", "device": "--device", "dtype": "--dtype"})
        ignored = given(args, {**generating, "limit": "--limit"})
        if ignored:
            raise ValueError(
                f"--samples scores existing completions of --task; drop {', '.join(ignored)}: "
                "they apply when a model generates"
            )
        return
    if not args.task and given(args, GENERATION_FLAGS):
        raise ValueError(
            f"{', '.join(given(args, GENERATION_FLAGS))} set how --task is generated; lm-eval "
            "tasks use their own generation settings: drop them or add --task"
        )
    forgetting = given(args, FORGETTING_FLAGS)
    if forgetting and not (args.base_model and args.task):
        raise ValueError(
            f"{', '.join(forgetting)} measure forgetting on --task against --base-model; add "
            f"{'--base-model BASE' if not args.base_model else '--task TASK'} or drop them"
        )


def lm_eval_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The --lm-eval task names, split at commas, each once, in order."""
    names = [name.strip() for names in args.lm_eval for name in names.split(",")]
    names = [name for name in names if name]
    if not names:
        raise ValueError("--lm-eval needs at least one task name, e.g. --lm-eval arc_easy")
    return tuple(dict.fromkeys(names))


def check_models(args: argparse.Namespace, model: str, task) -> None:
    """From the tokenizers and configs, before any weights load: both models exist, a task
    (or lm-eval) that prompts with chat messages has a chat template, and with a forgetting
    report the tuned and base models share one vocabulary (KL and NLL compare them token by
    token)."""
    from infosft.models import load_config, load_tokenizer, resolve_dtype

    resolve_dtype(args.dtype)
    names = {"--model": model, "--base-model": args.base_model}
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
        if args.lm_eval_chat_template:
            raise ValueError(
                f"--lm-eval-chat-template: the tokenizer of {flag} {names[flag]} has no chat "
                "template; drop the flag"
            )
    if task is None or not args.base_model:
        return
    sizes = {}
    for flag, tokenizer in tokenizers.items():
        config = load_config(names[flag])
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        sizes[flag] = (len(tokenizer), getattr(text_config, "vocab_size", None))
    (tuned, base) = tokenizers.values()
    if sizes["--model"] != sizes["--base-model"] or tuned.get_vocab() != base.get_vocab():
        describe = {f: f"{t} tokens (embedding rows: {e})" for f, (t, e) in sizes.items()}
        raise ValueError(
            f"--model {model} has a vocabulary of {describe['--model']} and --base-model "
            f"{args.base_model} one of {describe['--base-model']}"
            + (", with other tokens" if sizes["--model"] == sizes["--base-model"] else "")
            + "; forgetting compares both models token by token: pass the model --model was "
            "fine-tuned from as --base-model"
        )


def evaluate_command(args: argparse.Namespace) -> int:
    import infosft.experiments  # noqa: F401 - registers the demo's tasks with load_task
    from infosft.evaluation.forgetting import read_texts
    from infosft.evaluation.runner import (
        score_samples,
        summarize_records,
        validate_limit,
        with_overrides,
    )
    from infosft.evaluation.sandbox import check_sandbox, validate_timeout
    from infosft.evaluation.tasks import load_task
    from infosft.files import write_json_atomic

    # Every flag and every file is read and checked here, before any model is loaded.
    validate_limit(args.limit)
    validate_timeout(args.timeout)
    if not args.task and not args.lm_eval:
        raise ValueError("name a task: --task NAME and/or --lm-eval TASK ...")
    check_flags(args)
    if args.lm_eval:
        from infosft.evaluation.lm_eval_tasks import check_lm_eval_tasks

        check_lm_eval_tasks(lm_eval_names(args), args.lm_eval_include)
    task = load_task(args.task) if args.task else None
    name = task.name if task else "lm_eval"
    # The task's name is free text (the model card shows it); a path uses a file-safe form.
    file_name = file_name_part(name, "task")
    if args.samples:
        samples = read_samples(args.samples)
        identity = {"task": name, "samples_file": str(Path(args.samples).resolve())}
        output = Path(args.output or f"runs/eval/{file_name}-{slug(Path(args.samples).stem)}.json")
    else:
        from infosft.models import DEFAULT_MODEL

        model = args.model if args.model is not None else DEFAULT_MODEL
        identity = {"task": name, "model": model, "base_model": args.base_model}
        output = Path(args.output or f"runs/eval/{file_name}-{slug(model)}.json")
        settings = task and with_overrides(  # None without --task (lm-eval only)
            task.generation,
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            stop=args.stop,
            seed=args.seed,
        )
        device = resolve_device(args.device)
        texts = {
            key: read_texts(path, flag) if path is not None else None
            for key, path, flag in (
                ("general_prompts", args.general_prompts, "--general-prompts"),
                ("general_texts", args.heldout, "--heldout"),
            )
        }
    check_output(output, identity, args.overwrite)
    if not args.samples:
        check_models(args, model, task)
    start = time.perf_counter()
    if args.samples:
        mode = check_sandbox(args.sandbox, args.timeout) if task.program else None
        records = score_samples(
            task, samples, args.workers, args.timeout, mode or args.sandbox, not args.no_progress
        )
        single = len(records) == len({r["task_id"] for r in records})
        results = {
            **identity,
            "metrics": summarize_records(records, greedy=single),
            "samples": records,
        }
        if mode is not None:
            results["sandbox"] = mode
    else:
        results = {
            **identity,
            **evaluate_models(args, model, task, settings, device, output, texts),
        }
    results["seconds"] = time.perf_counter() - start
    write_json_atomic(output, results)
    if task is not None:
        print_metrics(f"{task.name}: {len(results['samples'])} samples", results["metrics"])
    for key in ("base_metrics", "forgetting"):
        if key in results:
            print_metrics(key, results[key])
    if "lm_eval" in results:
        from infosft.evaluation.lm_eval_tasks import format_table

        print(format_table(results["lm_eval"]))
    print(f"wrote {output} ({results['seconds']:.0f} s)")
    if args.model and not args.samples:
        from infosft.training.card_evaluation import add_evaluation
        from infosft.training.outputs import is_infosft_card

        # A model trained by infosft keeps its evaluations in its own model card.
        if is_infosft_card(args.model):
            print(f"added the results to {add_evaluation(args.model, results, output)}")
    return 0


def evaluate_models(
    args: argparse.Namespace,
    model_name: str,
    task,
    settings,
    device: str,
    output: Path,
    texts: dict,
) -> dict:
    """Generate and score with --model, and with --base-model beside it the forgetting report
    (on ``texts``: ``general_prompts`` and ``general_texts``, None for the built-in ones)."""
    from infosft.evaluation.lm_eval_tasks import lm_eval_report
    from infosft.evaluation.runner import evaluate, evaluate_with_base
    from infosft.models import load_model_and_tokenizer

    def load(name: str) -> tuple:
        return load_model_and_tokenizer(name, dtype=args.dtype, device=device)

    model, tokenizer = load(model_name)
    base_model, base_tokenizer = load(args.base_model) if args.base_model else (None, None)
    options = {"limit": args.limit, "workers": args.workers, "timeout": args.timeout}
    options.update(sandbox=args.sandbox, progress=not args.no_progress)
    paths = [output.with_name(f"{output.stem}.{tag}.progress.jsonl") for tag in ("model", "base")]
    results = {}
    if task is not None and base_model is None:
        results = evaluate(model, tokenizer, task, settings, progress_path=paths[0], **options)
    elif task is not None:
        models = (model, tokenizer, base_model, base_tokenizer)
        results = evaluate_with_base(*models, task, settings, tuple(paths), **texts, **options)
    if args.lm_eval:
        tuned = run_lm_eval_tasks(args, model, tokenizer)
        base = run_lm_eval_tasks(args, base_model, base_tokenizer) if base_model else None
        results["lm_eval"] = lm_eval_report(tuned, base)
    return results


def run_lm_eval_tasks(args: argparse.Namespace, model, tokenizer) -> dict:
    """The --lm-eval tasks on one loaded model (see infosft.evaluation.lm_eval_tasks)."""
    from infosft.evaluation.lm_eval_tasks import run_lm_eval

    return run_lm_eval(
        model,
        tokenizer,
        list(lm_eval_names(args)),
        limit=args.limit,
        include_path=args.lm_eval_include,
        num_fewshot=args.lm_eval_fewshot,
        apply_chat_template=args.lm_eval_chat_template,
        batch_size=args.batch_size or 8,
        seed=args.seed,
    )
