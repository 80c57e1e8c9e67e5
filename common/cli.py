"""`medseg` command line. Each area contributes its sub-commands through the `medseg.commands` entry points
(pyproject.toml): a module with `add_commands(subparsers)` that sets `func` on its parsers. The command line
names no area itself, so the gateway and the trainer each bring their own commands without importing the
other."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

COMMAND_GROUP = "medseg.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="MedSeg platform command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load().add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
