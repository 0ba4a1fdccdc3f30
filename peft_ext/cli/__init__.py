"""The ``peft-ext`` command. Subcommands beyond ``train`` come through the ``peft_ext.cli`` entry-point group (the
``hub`` package adds ``peft-ext hub ...``; ``demo``, ``serve`` and ``generate`` are this package's applications), so
the command names none of them and ``--help`` imports nothing heavy."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from ..errors import PeftExtError


def build_parser() -> argparse.ArgumentParser:
    from . import train

    parser = argparse.ArgumentParser(prog="peft-ext", description="Soft prompts as shareable PEFT adapters.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.register(commands)
    for entry_point in entry_points(group="peft_ext.cli"):
        entry_point.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command's handler; a user error is one line on stderr (exit code 2)."""
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PeftExtError as error:
        # A user error: one line that says what to do, no traceback.
        print(f"peft-ext: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peft-ext: interrupted", file=sys.stderr)
        return 130
