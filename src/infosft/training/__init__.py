"""Training integration: InfoSFTConfig and InfoSFTTrainer on top of TRL's SFTTrainer, the run
spec, and the recipe that builds a trainer from it (``build_trainer``) and runs it (``train``).

Everything is imported on first use, so ``import infosft.training.<module>`` does not pull in TRL.
"""

import importlib
from typing import Any

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
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infosft.training' has no attribute {name!r}")


__all__ = list(_LAZY)
