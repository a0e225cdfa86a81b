"""``serial-console``: the command-line entry point (console script ``serial-console``).

Subcommands register themselves: add a module with ``register(subparsers)`` and list it
in ``COMMANDS``. Each sets ``func`` to a function ``(argparse.Namespace) -> int`` (the exit
status: 0 done, 1 failed, 2 bad usage or configuration).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway.cli import commands, lab, recording

Register = Callable[[Any], None]

COMMANDS: list[Register] = [lab.register, commands.register, recording.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serial-console",
        description="Azure Serial Console on one machine: run the lab and reach its consoles.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``serial-console`` with ``argv`` (default: the command line); the exit status."""
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
