"""The people/data API's `world` (tests/api/conftest.py) on one SQLite database per module, for the
hardening tests: the same app, fakes and callers, without the PostgreSQL round (the access matrix in
tests/api runs every route on both backends already).

tests/hardening/conftest.py makes them the fixtures of this package.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.core.db import run_migrations
from tests.api.conftest import world  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="module")
def people_db(tmp_path_factory) -> Iterator[str]:
    """A migrated SQLite database for this module (the `world` fixture builds on it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hardening-db') / 'medseg.db'}"
    run_migrations(url)
    yield url
