"""The axolotl plugin: axolotl's own trainer trains with the fused weighted NLL.

In an axolotl config::

    plugins:
      - infosft.integrations.axolotl.InfoSFTPlugin
    infosft_method: infosft
    infosft_p_bar: 0.9

The keys are checked with the rest of the config, before any model loads; combinations that
would replace, bypass or silently change the loss (Liger's or cut-cross-entropy's fused losses,
chunked cross entropy, EAFT, ORPO and RL trainers, context or tensor parallelism) are
refused there in one line. After axolotl builds its trainer, :func:`infosft.integrations.
use_fused_loss` makes it train with the loss. This is the only module of the package that
imports axolotl.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, Field, model_validator

from infosft.integrations import use_fused_loss
from infosft.objectives import get_scheme

# Plugins whose loss or trainer would replace ours (matched on a part of the plugin path).
_LOSS_PLUGINS = {
    "cut_cross_entropy": "cut-cross-entropy replaces the model's loss with its own",
    "kd": "knowledge distillation trains with its own loss and trainer",
    "diffusion": "the diffusion trainer trains with its own loss",
}

# Config keys that switch on another loss, with the reason the plugin cannot honour them.
_LOSS_KEYS = {
    "liger_fused_linear_cross_entropy": "Liger's fused linear cross entropy is another loss",
    "liger_cross_entropy": "Liger's cross entropy is another loss",
    "liger_use_token_scaling": "Liger's token scaling is another token weighting",
    "chunked_cross_entropy": "the InfoSFT loss never builds logits, so it would never run",
    "use_eaft": "EAFT is another token weighting (set infosft_method: eaft instead)",
    "orpo_alpha": "ORPO adds its own loss term",
    "rl": "RL trainers (DPO, KTO, ORPO, GRPO, ...) train with their own loss",
    "reward_model": "a reward model trains with its own loss",
    "process_reward_model": "a reward model trains with its own loss",
}

# Keys that split a sequence or the LM head over ranks: the loss shifts the labels and
# projects the hidden states it sees on one rank, so either split would change it.
_SPLIT_KEYS = {
    "context_parallel_size": "context parallelism splits a sequence over ranks",
    "sequence_parallel_degree": "sequence parallelism splits a sequence over ranks",
    "tensor_parallel_size": "tensor parallelism splits the LM head over ranks",
}

_PLUGIN = "infosft.integrations.axolotl.InfoSFTPlugin"


def config_conflicts(cfg: Mapping[str, Any]) -> list[str]:
    """Why an axolotl config (its raw key -> value mapping) cannot train with the plugin's
    loss: one reason per offending plugin or key, each saying how to fix it; empty if it can."""
    conflicts = [
        f"{key}: not a key of the plugin ({', '.join(InfoSFTArgs.model_fields)}); fix its name"
        for key in cfg
        if str(key).startswith("infosft_") and key not in InfoSFTArgs.model_fields
    ]
    for plugin in cfg.get("plugins") or []:
        path_parts = str(plugin).split(".")
        for part, why in _LOSS_PLUGINS.items():
            # cut-cross-entropy is on once its plugin is listed, unless switched off
            switched_off = part == "cut_cross_entropy" and cfg.get("cut_cross_entropy") is False
            if part in path_parts and not switched_off:
                conflicts.append(f"plugin {plugin}: {why}; remove it")
    for key, why in _LOSS_KEYS.items():
        if cfg.get(key):
            conflicts.append(f"{key}: {cfg[key]!r}: {why}; remove it")
    for key, why in _SPLIT_KEYS.items():
        if isinstance(cfg.get(key), (int, float)) and cfg[key] > 1:
            conflicts.append(f"{key}: {cfg[key]!r}: {why}; set it to 1")
    return conflicts


class InfoSFTArgs(BaseModel):
    """The plugin's config keys, merged by axolotl into its config schema."""

    infosft_method: str = Field(
        default="infosft",
        json_schema_extra={"description": "Token weighting scheme (infosft, dft, eaft, ...)."},
    )
    infosft_p_bar: float | None = Field(
        default=None,
        json_schema_extra={"description": "InfoSFT's clip point p_bar in (0, 1)."},
    )
    infosft_method_args: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra={"description": "The scheme's other arguments by name."},
    )
    infosft_kl_to_base: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        json_schema_extra={"description": "Beta of the KL anchor to the model before training."},
    )

    @model_validator(mode="before")
    @classmethod
    def refuse_other_losses(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            conflicts = config_conflicts(data)
            if conflicts:
                raise ValueError(f"{_PLUGIN} refuses this config: " + "; ".join(conflicts))
        return data

    @model_validator(mode="after")
    def check_scheme(self) -> InfoSFTArgs:
        try:
            get_scheme(
                self.infosft_method, p_bar=self.infosft_p_bar, method_args=self.infosft_method_args
            )
        except ValueError as err:
            raise ValueError(
                f"{_PLUGIN}: infosft_method {self.infosft_method!r}, infosft_p_bar "
                f"{self.infosft_p_bar!r}, infosft_method_args {self.infosft_method_args!r}: {err}"
            ) from err
        return self


class InfoSFTPlugin(BasePlugin):
    """axolotl plugin: ``plugins: [infosft.integrations.axolotl.InfoSFTPlugin]``."""

    def get_input_args(self) -> str:
        return "infosft.integrations.axolotl.InfoSFTArgs"

    def pre_model_load(self, cfg: Any) -> None:
        # axolotl's own compute_loss adds inputs these models need; ours replaces it.
        model_type = cfg.model_config_type
        if model_type in ("gemma4", "gemma4_unified") or (
            model_type == "gemma3" and cfg.sample_packing
        ):
            raise ValueError(
                f"{_PLUGIN} does not support model type {model_type}"
                + (" with sample_packing" if model_type == "gemma3" else "")
                + ": axolotl prepares its inputs in its own loss, which the plugin replaces"
            )

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        use_fused_loss(
            trainer,
            method=cfg.infosft_method,
            p_bar=cfg.infosft_p_bar,
            method_args=cfg.infosft_method_args,
            kl_to_base=cfg.infosft_kl_to_base,
        )
