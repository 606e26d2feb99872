"""Training integration: InfoSFTConfig and InfoSFTTrainer on top of TRL's SFTTrainer, the run
spec, and the recipe that builds a trainer from it (``build_trainer``) and runs it (``train``).

Everything is imported on first use, so ``import infosft.training.<module>`` does not pull in TRL;
without the 'train' extra, the first use says to install it.
"""

from typing import Any

from infosft import extras

_LAZY = {
    "InfoSFTConfig": "infosft.training.config",
    "InfoSFTTrainer": "infosft.training.trainer",
    "NonFiniteLossError": "infosft.training.trainer",
    "LoraSpec": "infosft.training.spec",
    "RunSpec": "infosft.training.spec",
    "resolve_spec": "infosft.training.spec",
    "TrainResult": "infosft.training.recipe",
    "build_trainer": "infosft.training.recipe",
    "train": "infosft.training.recipe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(extras.import_module(_LAZY[name], f"infosft.training.{name}"), name)
    raise AttributeError(f"module 'infosft.training' has no attribute {name!r}")


__all__ = list(_LAZY)
