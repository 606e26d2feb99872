"""``infosft train``: fine-tune a model with a token-weighted loss (a thin layer over
:func:`infosft.training.resolve_spec` and :func:`infosft.training.train`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from infosft.models import DEFAULT_MODEL
from infosft.objectives import DEFAULT_P_BAR, available_schemes

if TYPE_CHECKING:
    from infosft.training.spec import RunSpec

EXAMPLES = """examples:
  infosft train --data train.jsonl --output-dir runs/infosft
  infosft train --data train.jsonl --method nll --output-dir runs/sft --set max_steps=100
  infosft train --config recipe.yaml --output-dir runs/x --lora --lora-rank 32 --lora-alpha 64
  infosft train --config recipe.yaml --output-dir runs/x --resume

The config file holds InfoSFTConfig fields (method, p_bar, method_args, loss_schedule,
weight_source, and every TrainingArguments / SFTConfig option: optim, learning_rate, max_steps,
per_device_train_batch_size, gradient_accumulation_steps, max_length, bf16, save_strategy,
save_steps, ...) and the keys model, model_init_kwargs, data, eval_data, data_format and
lora: {rank, alpha, dropout, target_modules}. Precedence: defaults < config file < --set <
flags."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model with a token-weighted loss (nll, dft, infosft, ...)",
        description="Fine-tune a causal LM with token-weighted SFT and write a Hugging Face "
        "checkpoint, run_config.json and metrics.jsonl to the output directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_spec_arguments(parser)
    parser.add_argument("--eval-data", nargs="+", metavar="SOURCE", help="evaluation data")
    parser.add_argument(
        "--method",
        metavar="NAME",
        help=f"weighting scheme: {', '.join(available_schemes())} (default: infosft)",
    )
    parser.add_argument("--output-dir", help="where the checkpoint and logs go (required)")
    parser.add_argument(
        "--lora", action="store_true", default=None, help="train LoRA adapters (all linear layers)"
    )
    parser.add_argument("--lora-rank", type=int, help="LoRA rank (default 16; implies --lora)")
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
    parser.set_defaults(run=run)


def add_run_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a run spec that ``train`` and ``inspect`` share (see
    :func:`infosft.training.resolve_spec`)."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of run options")
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
    parser.add_argument(
        "--data-format",
        metavar="NAME",
        help="formatter for raw public datasets (infosft.training.formats), e.g. numina_math_cot",
    )
    parser.add_argument(
        "--p-bar", type=float, help=f"InfoSFT's clip point in (0, 1) (default {DEFAULT_P_BAR})"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any run option, value read as YAML (repeatable): --set max_steps=50",
    )


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The RunSpec of a parsed ``infosft train`` command line (defaults < --config < --set <
    flags)."""
    from infosft.training import resolve_spec

    lora = {key: getattr(args, f"lora_{key}") for key in ("rank", "alpha", "dropout")}
    lora = {key: value for key, value in lora.items() if value is not None}
    keys = ("model", "data", "eval_data", "data_format", "method", "p_bar", "seed", "output_dir")
    flags = {key: getattr(args, key) for key in keys}
    return resolve_spec(args.config, args.set, {**flags, "lora": lora or args.lora})


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from infosft.training import train

    try:
        result = train(spec_from_args(args), resume=args.resume)
    finally:
        # Under torchrun / accelerate launch the process group Accelerate opened is still up.
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.destroy_process_group()
    print(f"model:   {result.output_dir}")
    print(f"metrics: {result.metrics_path}")
    print(f"config:  {result.config_path}")
    print(f"trained {result.num_train_examples} examples in {result.train_seconds:.1f} s")
    if distributed:
        _exit_after_distributed_run()
    return 0


def _exit_after_distributed_run() -> None:
    """End a finished multi-process run now, before the interpreter tears down native threads.

    A rank of a finished run can abort at interpreter exit, after its model, metrics and
    finished marker are written ("terminate called without an active exception", SIGABRT: a
    native thread still joinable when its owner is destroyed), even with the process group
    destroyed (above); the launcher would then report the whole run failed. Everything the run
    must leave is on disk by now, so run the Python exit handlers (trackers finishing their
    runs, logging flushing) and leave without the native teardown.
    """
    import atexit
    import os
    import sys

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
