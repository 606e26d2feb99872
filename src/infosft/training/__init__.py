"""Training integration: InfoSFTConfig and InfoSFTTrainer on top of TRL's SFTTrainer.

Both are imported on first use, so ``import infosft.training.<module>`` does not pull in TRL.
"""

import importlib
from typing import Any

_LAZY = {
    "InfoSFTConfig": "infosft.training.config",
    "InfoSFTTrainer": "infosft.training.trainer",
    "NonFiniteLossError": "infosft.training.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infosft.training' has no attribute {name!r}")


__all__ = ["InfoSFTConfig", "InfoSFTTrainer", "NonFiniteLossError"]
