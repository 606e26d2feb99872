"""``infosft train``: fine-tune a model with a token-weighted loss (a thin layer over
:func:`infosft.training.run.train`)."""

from __future__ import annotations

import argparse
from typing import Any

from infosft.models import DEFAULT_MODEL
from infosft.objectives import DEFAULT_P_BAR, available_weightings, check_p_bar

EXAMPLES = """examples:
  infosft train --data train.jsonl --output-dir runs/infosft
  infosft train --data train.jsonl --loss nll --output-dir runs/sft --set max_steps=100
  infosft train --config recipe.yaml --output-dir runs/x --lora --lora-rank 32 --lora-alpha 64
  infosft train --config recipe.yaml --output-dir runs/x --resume

The config file holds InfoSFTConfig fields (every TrainingArguments / SFTConfig option: optim,
learning_rate, max_steps, per_device_train_batch_size, gradient_accumulation_steps, max_length,
bf16, save_strategy, save_steps, ...) and the keys model, data, eval_data, data_format, lora,
lora_rank, lora_alpha, lora_dropout. Command-line flags override the file."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model with a token-weighted loss (nll, dft, infosft, ...)",
        description="Fine-tune a causal LM with token-weighted SFT and write a Hugging Face "
        "checkpoint, run_config.json and metrics.jsonl to the output directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (see below)")
    parser.add_argument(
        "--model",
        help=f"local checkpoint directory, hub id, or {DEFAULT_MODEL!r} (embedded; the default)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        metavar="SOURCE",
        help="training data: .jsonl/.json/.parquet files or hub datasets NAME[@CONFIG][:SPLIT], "
        "with rows {text}, {prompt, completion} or {messages}",
    )
    parser.add_argument("--eval-data", nargs="+", metavar="SOURCE", help="evaluation data")
    parser.add_argument(
        "--data-format",
        metavar="NAME",
        help="formatter for raw public datasets (infosft.training.formats), e.g. numina_math_cot",
    )
    parser.add_argument(
        "--loss",
        dest="loss_type",
        metavar="NAME",
        help=f"weighting scheme: {', '.join(available_weightings())} (default: infosft)",
    )
    parser.add_argument(
        "--p-bar", type=float, help=f"InfoSFT's clip point in (0, 1) (default {DEFAULT_P_BAR})"
    )
    parser.add_argument("--output-dir", help="where the checkpoint and logs go (required)")
    parser.add_argument(
        "--lora", action="store_true", default=None, help="train LoRA adapters (all linear layers)"
    )
    parser.add_argument("--lora-rank", type=int, help="LoRA rank (default 16)")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 32)")
    parser.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.05)")
    parser.add_argument("--seed", type=int, help="random seed (default 42)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the last checkpoint in the output dir (or from CHECKPOINT)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any InfoSFTConfig field, value read as YAML (repeatable): --set max_steps=50",
    )
    parser.set_defaults(run=run)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["max_steps=5", "bf16=false"]`` -> ``{"max_steps": 5, "bf16": False}`` (values as YAML)."""
    from infosft.files import load_yaml

    values = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
        values[key.strip()] = load_yaml(text, f"--set {key.strip()}")
    return values


def first_set(*candidates: Any) -> Any:
    """The first candidate that is not None (flag, then config file, then default)."""
    return next((value for value in candidates if value is not None), None)


def lora_spec(args: argparse.Namespace, recipe: dict[str, Any]) -> Any:
    """The LoraSpec asked for by the flags and the config file, or None for full fine-tuning."""
    from infosft.training.run import LoraSpec

    options = {
        "rank": first_set(args.lora_rank, recipe.get("lora_rank")),
        "alpha": first_set(args.lora_alpha, recipe.get("lora_alpha")),
        "dropout": first_set(args.lora_dropout, recipe.get("lora_dropout")),
        "target_modules": recipe.get("lora_target_modules"),
    }
    options = {key: value for key, value in options.items() if value is not None}
    if not isinstance(recipe.get("lora", False), bool):
        raise ValueError(
            f"config key lora must be true or false, got {recipe['lora']!r}; set the adapter "
            "with lora_rank, lora_alpha, lora_dropout, lora_target_modules"
        )
    if not first_set(args.lora, recipe.get("lora"), False):
        if options:
            raise ValueError(f"LoRA options {sorted(options)} were given without --lora")
        return None
    if isinstance(options.get("target_modules"), list):
        options["target_modules"] = tuple(options["target_modules"])
    return LoraSpec(**options)


def as_sources(value: Any) -> list[str] | None:
    """A data option (one source or a list) as a list of sources."""
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(item) for item in value]


def run(args: argparse.Namespace) -> int:
    # Cheap checks first: a bad p_bar fails before torch and TRL are imported.
    if args.p_bar is not None:
        check_p_bar(args.p_bar)
    from infosft.training.run import RECIPE_KEYS, read_config_file, train

    values = read_config_file(args.config) if args.config else {}
    values.update(parse_assignments(args.set))
    recipe = {key: values.pop(key) for key in RECIPE_KEYS if key in values}
    output_dir = first_set(args.output_dir, values.pop("output_dir", None))
    if output_dir is None:
        raise ValueError("no output directory; pass --output-dir DIR (or output_dir in --config)")
    data = first_set(args.data, as_sources(recipe.get("data")))
    if data is None:
        raise ValueError("no training data; pass --data FILE [FILE ...] (or data in --config)")
    result = train(
        model=first_set(args.model, recipe.get("model"), DEFAULT_MODEL),
        data=data,
        output_dir=output_dir,
        eval_data=first_set(args.eval_data, as_sources(recipe.get("eval_data"))),
        data_format=first_set(args.data_format, recipe.get("data_format")),
        loss_type=args.loss_type,
        p_bar=args.p_bar,
        seed=args.seed,
        lora=lora_spec(args, recipe),
        overrides=values,
        resume=args.resume,
    )
    print(f"model:   {result.output_dir}")
    print(f"metrics: {result.metrics_path}")
    print(f"config:  {result.config_path}")
    print(f"trained {result.num_train_examples} examples in {result.train_seconds:.1f} s")
    return 0
