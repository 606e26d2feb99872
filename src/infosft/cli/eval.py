"""``infosft eval``: generate and score a task, or score pre-generated HumanEval samples."""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--output", help="results JSON (default: runs/eval/<task>.json)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
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
    run_opts.add_argument("--sandbox", choices=["auto", "bwrap", "rlimit"], default="auto")
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
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    samples = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "task_id" not in row or "completion" not in row:
            raise ValueError(f"{path}:{n}: each line needs 'task_id' and 'completion'")
        samples.append(row)
    if not samples:
        raise ValueError(f"samples file {path} is empty")
    return samples


def run(args: argparse.Namespace) -> int:
    import infosft.experiments  # noqa: F401 - registers the demo's tasks with load_task
    from infosft.evaluation.runner import score_samples, summarize_records, write_json
    from infosft.evaluation.tasks import load_task

    if args.lm_eval:
        from infosft.evaluation.lm_eval_tasks import require_lm_eval

        require_lm_eval()  # before any model is loaded
    elif not args.task:
        raise ValueError("name a task: --task NAME and/or --lm-eval TASK ...")
    task = load_task(args.task) if args.task else None
    output = Path(args.output or f"runs/eval/{task.name if task else 'lm_eval'}.json")
    start = time.perf_counter()
    if args.samples:
        if args.model or args.base_model or args.lm_eval or task is None:
            raise ValueError(
                "--samples scores existing completions of --task; drop --model/--base-model/"
                "--lm-eval"
            )
        samples = read_samples(args.samples)
        records = score_samples(
            task, samples, args.workers, args.timeout, args.sandbox, not args.no_progress
        )
        single = len(records) == len({r["task_id"] for r in records})
        results = {
            "task": task.name,
            "metrics": summarize_records(records, greedy=single),
            "samples": records,
        }
    else:
        results = evaluate_models(args, task, output)
    results["seconds"] = time.perf_counter() - start
    write_json(output, results)
    if task is not None:
        print_metrics(f"{task.name}: {len(results['samples'])} samples", results["metrics"])
    for name in ("base_metrics", "forgetting"):
        if name in results:
            print_metrics(name, results[name])
    if "lm_eval" in results:
        from infosft.evaluation.lm_eval_tasks import format_table

        print(format_table(results["lm_eval"]))
    print(f"wrote {output} ({results['seconds']:.0f} s)")
    return 0


def evaluate_models(args: argparse.Namespace, task, output: Path) -> dict:
    """Generate and score with --model (and --base-model for the forgetting report)."""
    import torch

    from infosft.evaluation.forgetting import forgetting_report, read_texts
    from infosft.evaluation.lm_eval_tasks import lm_eval_report
    from infosft.evaluation.runner import evaluate, with_overrides
    from infosft.models import DEFAULT_MODEL, load_model_and_tokenizer

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
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
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
    results["model"] = args.model or DEFAULT_MODEL
    base = {}
    if args.base_model:
        base, base_model, _ = run_one(args.base_model, "base")
        results["base_model"] = args.base_model
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
