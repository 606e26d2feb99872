"""The ``infosft`` command: thin recipes over the library.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; heavy imports
(transformers, TRL) happen inside the command's run function so ``infosft --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; the order is the order of ``infosft --help``.
COMMANDS = {
    "weights": "infosft.cli.weights",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infosft",
        description="InfoSFT: information-aware token weighting for supervised fine-tuning.",
    )
    from infosft import __version__

    parser.add_argument("--version", action="version", version=f"infosft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m infosft``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as err:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"infosft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infosft {args.command}: interrupted", file=sys.stderr)
        return 130
