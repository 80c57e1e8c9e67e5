"""A non-editable install carries the pages: every template and static file (the vendor assets `make assets`
builds included) is matched by the package data declared in pyproject.toml, the way setuptools globs it."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "gateway" / "web"


def _declared(package: str) -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    return data.get("*", []) + data.get(package, [])


def test_templates_and_static_files_are_package_data():
    packaged = set()
    for pattern in _declared("gateway.web"):
        packaged.update(
            Path(p) for p in glob.glob(pattern, root_dir=WEB, recursive=True) if (WEB / p).is_file()
        )
    files = [
        p.relative_to(WEB)
        for folder in ("templates", "static")
        for p in (WEB / folder).rglob("*")
        if p.is_file() and not p.name.startswith(".")
    ]
    if not any(f.parts[:2] == ("static", "vendor") for f in files):
        pytest.fail(
            "gateway/web/static/vendor is empty: run `make assets` (the wheel would ship no Bootstrap)"
        )
    assert files and [str(f) for f in files if f not in packaged] == []
