"""The command line shared by the tools that work on one finished run of an organ (trainer.rescore,
trainer.inference_modes): the module's docstring as the description, --organ, --run and --threads."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.spec import organ_dirs


def run_tool_parser(doc: str | None, run_help: str) -> argparse.ArgumentParser:
    """A parser with --organ (one of services/<organ>/), --run (a run folder; `run_help` says what it holds)
    and --threads (torch's CPU threads, default 1); the tool adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organ", required=True, choices=sorted(organ_dirs()))
    parser.add_argument("--run", required=True, type=Path, help=run_help)
    parser.add_argument("--threads", type=int, default=1)
    return parser
