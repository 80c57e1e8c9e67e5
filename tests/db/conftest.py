"""A fresh, migrated database per test, on SQLite and on PostgreSQL (`db_url` is parametrized over both).

SQLite-only behaviour (WAL, busy timeout, file locks) is tested through `sqlite_url`.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import sessionmaker

from gateway.core.db import make_engine, run_migrations


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'medseg.db'}"
    run_migrations(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def db_engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine):
    with sessionmaker(bind=db_engine, expire_on_commit=False)() as session:
        yield session


@pytest.fixture
def postgres_server_if_used(request, db_url):
    """The PostgreSQL cluster when this test runs on PostgreSQL, else None."""
    return request.getfixturevalue("postgres_server") if db_url.startswith("postgresql") else None
