"""ms-swift plugin: ``swift sft ... --external_plugins <this file> --loss_type infosft``.

``python -m infosft.integrations.swift`` prints this file's path. ms-swift executes the file
while it parses its arguments (before the model loads); the file then registers ``infosft`` in
ms-swift's ``loss_map`` and validates the options, which ms-swift's parser has no room for and
which are therefore read from the environment:

- ``INFOSFT_METHOD``: the weighting scheme (default ``infosft``; ``dft``, ``nll``, ...);
- ``INFOSFT_P_BAR``: InfoSFT's clip point in (0, 1) (default 0.93);
- ``INFOSFT_METHOD_ARGS``: the scheme's other arguments as a JSON object;
- ``INFOSFT_KL_TO_BASE``: beta of the KL anchor to the model before training (default 0).

ms-swift builds the loss before its trainer is complete, so the loss object makes the trainer's
``train()`` first call :func:`infosft.integrations.use_fused_loss`: from then on the trainer's
``compute_loss`` is ours (one forward, no [B, T, V] logits) and ms-swift's logits path with
its ``loss_map`` call is never reached. What that path would honour and ours cannot (per-token
loss scales, channel loss, sequence parallelism, packing, Liger, ...) is refused when the
trainer is built.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

from infosft.integrations import use_fused_loss
from infosft.objectives import get_scheme

LOSS_TYPE = "infosft"

# Keys ms-swift's trainer adds to a batch for its own compute_loss; the model must not see them.
_SWIFT_BATCH_KEYS = ("compute_loss_func", "text_position_ids", "channel")


def options_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The keyword arguments of :func:`use_fused_loss` from ``INFOSFT_*`` variables, validated.

    Raises:
        ValueError: a variable that is not a number / JSON object, or options the scheme
            refuses; the message names the variable.
    """

    def number(name: str, default: float | None) -> float | None:
        text = environ.get(name, "").strip()
        if not text:
            return default
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a number; set it to e.g. 0.93") from None

    method = environ.get("INFOSFT_METHOD", "").strip() or "infosft"
    p_bar = number("INFOSFT_P_BAR", None)
    kl_to_base = number("INFOSFT_KL_TO_BASE", 0.0)
    args_text = environ.get("INFOSFT_METHOD_ARGS", "").strip()
    try:
        method_args = json.loads(args_text) if args_text else None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"INFOSFT_METHOD_ARGS is not JSON ({err.msg}); "
            "write an object, e.g. '{\"top_k\": 20}'"
        ) from None
    if method_args is not None and not isinstance(method_args, dict):
        raise ValueError(
            f"INFOSFT_METHOD_ARGS must be a JSON object such as '{{\"top_k\": 20}}', "
            f"got {args_text!r}"
        )
    get_scheme(method, p_bar=p_bar, method_args=method_args)
    if not math.isfinite(kl_to_base) or kl_to_base < 0:
        raise ValueError(f"INFOSFT_KL_TO_BASE must be a finite number >= 0, got {kl_to_base}")
    return {"method": method, "p_bar": p_bar, "method_args": method_args, "kl_to_base": kl_to_base}


def check_supported(args: Any, trainer: Any) -> None:
    """Refuse the ms-swift settings the fused loss cannot honour, in one line each.

    ``args`` is ms-swift's ``TrainingArguments``; ``trainer`` its trainer, possibly before
    ``transformers.Trainer.__init__`` ran (``template`` and ``model_meta`` are set).

    Raises:
        ValueError: naming the setting and what to do instead.
    """
    template = trainer.template
    # The classes of the template's hierarchy that define compute_sft_loss, nearest first.
    loss_owners = [cls for cls in type(template).__mro__ if "compute_sft_loss" in vars(cls)]
    loss_scale = getattr(template, "loss_scale", None)
    binary_scale = getattr(template, "is_binary_loss_scale", None)
    if binary_scale is None:
        binary_scale = getattr(loss_scale, "is_binary_loss_scale", True)
    refusals = [
        (
            "BaseMegatronTrainer" in {cls.__name__ for cls in type(trainer).__mro__},
            "the Megatron trainer takes no custom loss; use `swift sft`",
        ),
        (
            getattr(template, "task_type", "causal_lm") != "causal_lm",
            f"--task_type {getattr(template, 'task_type', '')}: the loss is for causal_lm",
        ),
        (
            getattr(template, "is_encoder_decoder", False),
            "encoder-decoder models are not supported; use a decoder-only model",
        ),
        (
            len(loss_owners) > 1,
            f"template {type(template).__name__} computes its own loss; it cannot be replaced",
        ),
        (
            not binary_scale,
            "--loss_scale with per-token weights is not supported (the scheme sets the weights);"
            " use the default loss_scale",
        ),
        (
            getattr(template, "padding_free", False),
            "--packing / --padding_free are not supported; drop them",
        ),
        (
            getattr(template, "sequence_parallel_size", 1) > 1,
            "--sequence_parallel_size > 1 is not supported; drop it",
        ),
        (
            getattr(args, "enable_channel_loss", False),
            "--enable_channel_loss needs per-token losses from logits; drop it",
        ),
        (
            getattr(args, "enable_dft_loss", False),
            "--enable_dft_loss would be ignored; set INFOSFT_METHOD=dft instead",
        ),
        (
            getattr(args, "use_liger_kernel", False),
            "--use_liger_kernel: Liger's loss would be bypassed and the infosft loss is already"
            " fused (no logits); drop the flag",
        ),
        (
            getattr(args, "label_smoothing_factor", 0.0) > 0,
            "--label_smoothing_factor would be ignored; set it to 0",
        ),
        (
            getattr(getattr(trainer, "model_info", None), "is_moe_model", False)
            and (getattr(args, "router_aux_loss_coef", 0.0) or 0.0) > 0,
            "the MoE router's auxiliary loss would be dropped; set --router_aux_loss_coef 0",
        ),
    ]
    for refused, reason in refusals:
        if refused:
            raise ValueError(f"--loss_type {LOSS_TYPE}: {reason}")


class InfoSFTLoss:
    """ms-swift's ``loss_map`` entry: ``loss_map[args.loss_type](args, trainer)`` (see the
    module doc)."""

    def __init__(self, args: Any, trainer: Any):
        check_supported(args, trainer)
        self.options = options_from_env()
        train = trainer.train

        def train_with_fused_loss(*train_args: Any, **train_kwargs: Any) -> Any:
            trainer.train = train  # installed once; a second train() keeps the fused loss
            use_fused_loss(trainer, **self.options)
            fused = trainer.compute_loss

            def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
                inputs = {k: v for k, v in inputs.items() if k not in _SWIFT_BATCH_KEYS}
                if inputs.pop("loss_scale", None) is not None:
                    raise ValueError(
                        f"--loss_type {LOSS_TYPE}: per-token loss_scale is not supported"
                    )
                return fused(model, inputs, return_outputs, num_items_in_batch)

            trainer.compute_loss = compute_loss
            return train(*train_args, **train_kwargs)

        trainer.train = train_with_fused_loss

    def __call__(self, outputs: Any, labels: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"--loss_type {LOSS_TYPE} computes its loss inside trainer.train(); "
            "ms-swift called it with logits outside training (not supported)"
        )


def register() -> None:
    """Add ``infosft`` to ms-swift's ``loss_map`` after validating the ``INFOSFT_*`` options."""
    from swift.loss import loss_map

    options_from_env()
    loss_map[LOSS_TYPE] = InfoSFTLoss


if __name__ == "__main__":
    print(os.path.abspath(__file__))
elif "swift.loss" in sys.modules:
    # ms-swift is running and imports this file for --external_plugins.
    register()
