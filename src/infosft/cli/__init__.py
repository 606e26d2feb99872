"""The ``infosft`` command: thin recipes over the library.

Each subcommand is a module of this package exposing ``add_parser(subparsers)``, which sets
``run`` as the parser default; heavy imports (transformers, TRL) happen inside ``run`` so that
``infosft --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from infosft.extras import missing_extra_error, require_extra

# The order of ``infosft --help``; command modules not listed here follow alphabetically.
ORDER = ["train", "eval", "demo", "compare", "inspect", "weights"]
# The extra each command needs (infosft.extras.EXTRAS), checked before it runs; a command not
# listed runs on the core alone.
COMMAND_EXTRAS = {
    "train": "train",
    "eval": "eval",
    "demo": "experiments",
    "compare": "experiments",
    "inspect": "experiments",
}


def command_modules() -> list[str]:
    """Names of the subcommand modules in this package, in help order."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infosft",
        description="InfoSFT: information-aware token weighting for supervised fine-tuning.",
    )
    from infosft import __version__

    parser.add_argument("--version", action="version", version=f"infosft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


# Bad input is the user's to fix: a ValueError (a value the user gave is wrong; infosft raises
# it for every bad option, file content or setting, and so do the libraries it hands values to)
# or an OSError about a path the user named. Anything else (TypeError, KeyError,
# AttributeError, RuntimeError, ...) is a bug and keeps its traceback. So is a missing module,
# unless an extra installs it: then it is a MissingExtraError (a ValueError) naming the extra.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
TRACEBACK_ENV = "INFOSFT_TRACEBACK"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m infosft``; returns the exit code.

    A user error, or a missing extra (a module that an extra installs is not installed), is
    printed as one line (exit code 2); set ``INFOSFT_TRACEBACK=1`` to see its traceback too.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command in COMMAND_EXTRAS:
            require_extra(COMMAND_EXTRAS[args.command])
        return int(args.run(args) or 0)
    except (*USER_ERRORS, ModuleNotFoundError) as raised:
        err = missing_extra_error(raised) if isinstance(raised, ModuleNotFoundError) else raised
        if os.environ.get(TRACEBACK_ENV) or not isinstance(err, USER_ERRORS):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"infosft {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infosft {args.command}: interrupted", file=sys.stderr)
        return 130
