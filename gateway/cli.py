"""`medseg` command line. Each area contributes its sub-commands through `add_commands(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute sub-commands; each exposes add_commands(subparsers) and sets `func` on its parsers.
COMMAND_MODULES = (
    "gateway.commands.stack",
    "gateway.commands.api_keys",
    "gateway.commands.users",
    "trainer.cli",
    "trainer.dataset_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="MedSeg platform command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue  # area not built yet
        module.add_commands(sub)
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
