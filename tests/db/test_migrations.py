"""Alembic migrations on a fresh SQLite file, the schema they build, and SQLite's connection settings."""

from __future__ import annotations

import io
import time
import uuid
from contextlib import redirect_stdout
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from common.errors import ServiceUnavailable
from gateway.core.db import alembic_config, commit, make_engine, run_migrations, session_scope
from gateway.models import ApiKey, AuditLog, Base, Segmentation, audit
from tests.fixtures.db_lock import write_lock_held


def test_fresh_database_is_migrated_to_head_and_matches_the_models(db_url, db_engine):
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
        assert context.get_current_revision() == head
        assert set(inspect(conn).get_table_names()) >= {"api_keys", "segmentations", "datasets", "audit_log"}
        # the migration and the ORM describe the same schema (no pending autogenerate diff)
        assert compare_metadata(context, Base.metadata) == []
    run_migrations(db_url)  # idempotent


def test_migrations_render_for_postgresql():
    """Portability: the same migrations produce PostgreSQL DDL (offline mode, no server needed)."""
    out = io.StringIO()
    with redirect_stdout(out):
        command.upgrade(alembic_config("postgresql://u:p@localhost/medseg"), "head", sql=True)
    ddl = out.getvalue()
    assert "CREATE TABLE segmentations" in ddl
    assert "UUID" in ddl and "TIMESTAMP WITH TIME ZONE" in ddl and "BIGSERIAL" in ddl


def test_sqlite_runs_in_wal_with_foreign_keys_and_a_busy_timeout(sqlite_url):
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    engine.dispose()


def test_foreign_keys_are_enforced(db_session):
    db_session.add(
        Segmentation(
            organ="liver",
            model_name="m",
            model_version="1",
            width=4,
            height=4,
            probability_key="k",
            api_key_id=999,
        )
    )
    with pytest.raises(IntegrityError):
        db_session.commit()


def test_datetimes_come_back_timezone_aware_utc(db_session):
    key = ApiKey(name="n", prefix="abcd1234", hashed_secret="0" * 64, scopes=["segment"])
    db_session.add(key)
    db_session.commit()
    db_session.expire_all()
    row = db_session.get(ApiKey, key.id)
    assert row.created_at.tzinfo is not None and row.created_at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - row.created_at).total_seconds()) < 60


def test_segmentation_row_round_trip(db_session):
    seg = Segmentation(
        organ="liver",
        model_name="erunet",
        model_version="3",
        patient_id=None,
        width=512,
        height=512,
        probability_key="s/p.png",
        mask_keys={"0.5": "s/m.png"},
        areas_px={"0.5": 1234},
    )
    db_session.add(seg)
    db_session.commit()
    db_session.expire_all()
    row = db_session.get(Segmentation, seg.id)
    assert isinstance(row.id, uuid.UUID) and row.areas_px == {"0.5": 1234}


def test_audit_log_is_append_only(db_session):
    row = audit(db_session, "alice", "dataset.push", "liver-1", {"pairs": 5})
    db_session.commit()
    row.actor = "mallory"
    with pytest.raises(PermissionError, match="append-only"):
        db_session.commit()
    db_session.rollback()
    db_session.delete(db_session.get(AuditLog, row.id))
    with pytest.raises(PermissionError, match="append-only"):
        db_session.commit()


def test_a_locked_database_gives_a_clear_error_not_a_hang(db_url):
    waiter = make_engine(db_url, busy_timeout_s=0.3)
    try:
        with write_lock_held(db_url, wait_s=5):
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable, match="locked"):
                with session_scope(waiter) as session:
                    audit(session, "y", "blocked")
            assert time.monotonic() - started < 3.0
    finally:
        waiter.dispose()


def test_the_services_commit_answers_503_for_a_locked_database_and_lets_a_bad_statement_through(db_url):
    """gateway.core.db.commit, which evaluations, evaluation jobs and history commit through: a database
    that stays locked is a 503 and the session is rolled back (usable again); a constraint error is the
    caller's."""
    waiter = make_engine(db_url, busy_timeout_s=0.3)
    try:
        with write_lock_held(db_url, wait_s=5), Session(bind=waiter) as session:
            audit(session, "y", "blocked")
            with pytest.raises(ServiceUnavailable, match="locked"):
                commit(session)
            assert not session.new  # rolled back: the row is gone from the session
        with Session(bind=waiter) as session:
            session.add(ApiKey(name="k", prefix="p", hashed_secret="h"))
            commit(session)
            session.add(ApiKey(name="k", prefix="p", hashed_secret="h"))
            with pytest.raises(IntegrityError):
                commit(session)
    finally:
        waiter.dispose()


def test_a_read_only_database_gives_a_clear_error(db_url, postgres_server_if_used, tmp_path, monkeypatch):
    """A read-only SQLite file (opened with mode=ro) or a read-only PostgreSQL database: 503, not a 500."""
    if db_url.startswith("sqlite"):
        path = db_url.removeprefix("sqlite:///")
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        read_only = make_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
        assert list(cwd.iterdir()) == []  # a URI filename is not a path to create folders for
    else:
        database = db_url.rsplit("/", 1)[1]
        postgres_server_if_used.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        read_only = make_engine(db_url)
    try:
        with pytest.raises(ServiceUnavailable, match="read-only"):
            with session_scope(read_only) as session:
                audit(session, "y", "blocked")
    finally:
        read_only.dispose()


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"])
def test_audit_log_is_append_only_in_sql_too(db_engine, statement):
    with session_scope(db_engine) as session:
        audit(session, "alice", "sign_in")
    with pytest.raises(DBAPIError, match="append-only"):
        with db_engine.begin() as conn:
            conn.execute(text(statement))
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT actor FROM audit_log")).scalars().all() == ["alice"]
