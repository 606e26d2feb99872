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
            "forgetting (retention, KL(base||tuned), held-out NLL). With --lm-eval, also run "
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
    forget.add_argument("--heldout", help="JSON lines or text file of held-out general text")
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


def slug(name: str) -> str:
    """A file-name-safe short name of a model or file: its last path component."""
    last = Path(name.rstrip("/")).name or name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-") or "model"


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


def evaluate_command(args: argparse.Namespace) -> int:
    import infosft.experiments  # noqa: F401 - registers the demo's tasks with load_task
    from infosft.evaluation.runner import (
        score_samples,
        summarize_records,
        validate_limit,
        with_overrides,
    )
    from infosft.evaluation.sandbox import check_sandbox, validate_timeout
    from infosft.evaluation.tasks import load_task
    from infosft.files import write_json_atomic

    # Every option is checked before anything is loaded, generated or run.
    validate_limit(args.limit)
    validate_timeout(args.timeout)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.lm_eval:
        from infosft.evaluation.lm_eval_tasks import require_lm_eval

        require_lm_eval()  # before any model is loaded
    elif not args.task:
        raise ValueError("name a task: --task NAME and/or --lm-eval TASK ...")
    task = load_task(args.task) if args.task else None
    name = task.name if task else "lm_eval"
    if args.samples:
        if args.model or args.base_model or args.lm_eval or task is None:
            raise ValueError(
                "--samples scores existing completions of --task; drop --model/--base-model/"
                "--lm-eval"
            )
        identity = {"task": name, "samples_file": str(Path(args.samples).resolve())}
        output = Path(args.output or f"runs/eval/{name}-{slug(Path(args.samples).stem)}.json")
    else:
        from infosft.models import DEFAULT_MODEL

        model = args.model or DEFAULT_MODEL
        identity = {"task": name, "model": model, "base_model": args.base_model}
        output = Path(args.output or f"runs/eval/{name}-{slug(model)}.json")
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
    check_output(output, identity, args.overwrite)
    start = time.perf_counter()
    if args.samples:
        samples = read_samples(args.samples)
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
        results = {**identity, **evaluate_models(args, task, settings, device, output)}
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
        from infosft.training.model_card import add_evaluation, is_infosft_card

        # A model trained by infosft keeps its evaluations in its own model card.
        if is_infosft_card(args.model):
            print(f"added the results to {add_evaluation(args.model, results, output)}")
    return 0


def evaluate_models(args: argparse.Namespace, task, settings, device: str, output: Path) -> dict:
    """Generate and score with --model (and --base-model for the forgetting report)."""
    from infosft.evaluation.forgetting import forgetting_report, read_texts
    from infosft.evaluation.lm_eval_tasks import lm_eval_report
    from infosft.evaluation.runner import evaluate
    from infosft.models import DEFAULT_MODEL, load_model_and_tokenizer

    progress = not args.no_progress

    def run_one(name: str, tag: str) -> tuple[dict, object, object]:
        model, tokenizer = load_model_and_tokenizer(name, dtype=args.dtype, device=device)
        if task is None:
            return {"lm_eval": run_lm_eval_tasks(args, model, tokenizer)}, model, tokenizer
        result = evaluate(
            model,
            tokenizer,
            task,
            settings,
            limit=args.limit,
            workers=args.workers,
            timeout=args.timeout,
            sandbox=args.sandbox,
            progress_path=output.with_name(f"{output.stem}.{tag}.progress.jsonl"),
            progress=progress,
        )
        if args.lm_eval:
            result["lm_eval"] = run_lm_eval_tasks(args, model, tokenizer)
        return result, model, tokenizer

    results, model, tokenizer = run_one(args.model or DEFAULT_MODEL, "model")
    base = {}
    if args.base_model:
        base, base_model, _ = run_one(args.base_model, "base")
    if args.lm_eval:
        results["lm_eval"] = lm_eval_report(results.pop("lm_eval"), base.pop("lm_eval", None))
    if args.base_model and task is not None:
        results["base_metrics"] = base["metrics"]
        results["forgetting"] = forgetting_report(
            base_model,
            model,
            tokenizer,
            base["samples"],
            results["samples"],
            general_prompts=read_texts(args.general_prompts) if args.general_prompts else None,
            heldout_texts=read_texts(args.heldout) if args.heldout else None,
            seed=settings.seed,
            progress=progress,
        )
    return results


def run_lm_eval_tasks(args: argparse.Namespace, model, tokenizer) -> dict:
    """The --lm-eval tasks on one loaded model (see infosft.evaluation.lm_eval_tasks)."""
    from infosft.evaluation.lm_eval_tasks import run_lm_eval

    return run_lm_eval(
        model,
        tokenizer,
        [name for names in args.lm_eval for name in names.split(",") if name],
        limit=args.limit,
        include_path=args.lm_eval_include,
        num_fewshot=args.lm_eval_fewshot,
        apply_chat_template=args.lm_eval_chat_template,
        batch_size=args.batch_size or 8,
        seed=args.seed,
    )
