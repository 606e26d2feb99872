"""``infosft eval``: generate and score a task, or score pre-generated HumanEval samples."""

from __future__ import annotations

import argparse
import sys
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


def slug(name: str) -> str:
    """A file-name-safe short name of a model or file: its last path component."""
    from infosft.files import file_name_part

    return file_name_part(Path(name.rstrip("/")).name or name, "model")


def run(args: argparse.Namespace) -> int:
    from infosft.evaluation.sandbox import SandboxError

    try:
        return evaluate_command(args)
    except SandboxError as err:
        # Not the program's fault and not the user's input: say so, and score nothing.
        print(f"infosft eval: sandbox error: {err}", file=sys.stderr)
        return 1


# Flags by the attribute argparse stores them in (``--top-p``: ``top_p``). Those that only apply
# when completions are generated (not with --samples):
GENERATION_FLAGS = ("n", "temperature", "top_p", "max_new_tokens", "stop")
FORGETTING_FLAGS = ("general_prompts", "heldout")
LM_EVAL_FLAGS = ("lm_eval_include", "lm_eval_fewshot", "lm_eval_chat_template")
# Flags naming a file, directory, model or device.
NAME_FLAGS = ("task", "model", "base_model", "samples", "output", "device", "dtype")
NAME_FLAGS += (*FORGETTING_FLAGS, "lm_eval_include")


def flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def given(args: argparse.Namespace, attrs: tuple[str, ...]) -> list[str]:
    """The flags of ``attrs`` set on the command line."""
    # By identity: 0 == False, yet ``--seed 0`` and ``--temperature 0`` are given flags.
    values = {flag(attr): getattr(args, attr) for attr in attrs}
    return [name for name, value in values.items() if value is not None and value is not False]


def check_flags(args: argparse.Namespace) -> None:
    """Every flag the command would ignore is an error, and so is an empty name: nothing is
    silently dropped or replaced by a default."""
    for attr in NAME_FLAGS:
        value, name = getattr(args, attr), flag(attr)
        if value is not None and not value.strip():
            raise ValueError(
                f"{name} is empty (often an unset shell variable); give a value or drop {name}"
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
        generating = ("model", "base_model", "lm_eval", *GENERATION_FLAGS, *FORGETTING_FLAGS)
        generating += ("batch_size", "seed", "device", "dtype", "limit")
        ignored = given(args, generating)
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


def evaluate_command(args: argparse.Namespace) -> int:
    import infosft.experiments  # noqa: F401 - registers the demo's tasks with load_task
    from infosft.evaluation.forgetting import read_texts
    from infosft.evaluation.runner import (
        check_models,
        evaluate_models,
        read_samples,
        score_samples,
        summarize_records,
        validate_limit,
        with_overrides,
    )
    from infosft.evaluation.sandbox import check_sandbox, validate_timeout
    from infosft.evaluation.tasks import load_task
    from infosft.files import check_results_file, file_name_part, write_json_atomic
    from infosft.models import resolve_device, resolve_dtype

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
        overrides = {
            attr: getattr(args, attr) for attr in (*GENERATION_FLAGS, "batch_size", "seed")
        }
        settings = task and with_overrides(task.generation, **overrides)  # None: lm-eval only
        device = resolve_device(args.device, "--device")
        texts = {
            key: read_texts(path, option) if path is not None else None
            for key, path, option in (
                ("general_prompts", args.general_prompts, "--general-prompts"),
                ("general_texts", args.heldout, "--heldout"),
            )
        }
    check_results_file(output, identity, args.overwrite)
    if not args.samples:
        resolve_dtype(args.dtype)
        check_models(model, args.base_model, task, bool(args.lm_eval_chat_template))
    start = time.perf_counter()
    if args.samples:
        mode = check_sandbox(args.sandbox, args.timeout) if task.program else None
        records = score_samples(
            task, samples, args.workers, args.timeout, mode or args.sandbox, not args.no_progress
        )
        single = len(records) == len({r["task_id"] for r in records})
        metrics = summarize_records(records, greedy=single)
        results = {**identity, "metrics": metrics, "samples": records}
        if mode is not None:
            results["sandbox"] = mode
    else:
        options = {"limit": args.limit, "workers": args.workers, "timeout": args.timeout}
        options.update(sandbox=args.sandbox, progress=not args.no_progress)
        paths = tuple(
            output.with_name(f"{output.stem}.{tag}.progress.jsonl") for tag in ("model", "base")
        )
        measured = evaluate_models(
            model,
            task,
            settings,
            base_model_name=args.base_model,
            device=device,
            dtype=args.dtype,
            progress_paths=paths,
            lm_eval=lm_eval_options(args) if args.lm_eval else None,
            **texts,
            **options,
        )
        results = {**identity, **measured}
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


def lm_eval_options(args: argparse.Namespace) -> dict:
    """The --lm-eval flags as :func:`infosft.evaluation.lm_eval_tasks.run_lm_eval` arguments."""
    return {
        "tasks": list(lm_eval_names(args)),
        "limit": args.limit,
        "include_path": args.lm_eval_include,
        "num_fewshot": args.lm_eval_fewshot,
        "apply_chat_template": args.lm_eval_chat_template,
        "batch_size": args.batch_size or 8,
        "seed": args.seed,
    }
