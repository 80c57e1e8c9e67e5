"""A fresh, migrated SQLite database per test."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import sessionmaker

from gateway.core.db import make_engine, run_migrations


@pytest.fixture
def db_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'medseg.db'}"
    run_migrations(url)
    return url


@pytest.fixture
def db_engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine):
    with sessionmaker(bind=db_engine, expire_on_commit=False)() as session:
        yield session
