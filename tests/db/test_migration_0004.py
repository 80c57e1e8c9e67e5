"""Migration 0004 (users.language) upgrades and downgrades on SQLite and PostgreSQL without touching the
accounts or their sessions, and the schema at head still matches the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from gateway.core.db import alembic_config, make_engine


def _revision(engine) -> str:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _user_columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("users")}


def test_0004_adds_and_drops_users_language_keeping_accounts_and_sessions(db_url):
    config = alembic_config(db_url)
    command.downgrade(config, "0003")
    engine = make_engine(db_url)
    try:
        assert _revision(engine) == "0003"
        assert "language" not in _user_columns(engine)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (email, password_hash, full_name, role, status, created_at) "
                    "VALUES ('li@example.org', 'x', 'Li Wei', 'doctor', 'active', :now)"
                ),
                {"now": now},
            )
            user_id = conn.execute(text("SELECT id FROM users WHERE email = 'li@example.org'")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO user_sessions (token_hash, user_id, csrf_token, created_at, expires_at) "
                    "VALUES (:h, :u, 'csrf', :now, :later)"
                ),
                {"h": "a" * 64, "u": user_id, "now": now, "later": now + timedelta(hours=1)},
            )

        command.upgrade(config, "0004")
        assert _revision(engine) == "0004" and "language" in _user_columns(engine)
        with engine.begin() as conn:
            assert (
                conn.execute(text("SELECT language FROM users WHERE id = :u"), {"u": user_id}).scalar()
                is None
            )
            conn.execute(text("UPDATE users SET language = 'zh' WHERE id = :u"), {"u": user_id})
            assert (
                conn.execute(text("SELECT language FROM users WHERE id = :u"), {"u": user_id}).scalar()
                == "zh"
            )

        command.downgrade(config, "0003")
        assert "language" not in _user_columns(engine)
        with engine.connect() as conn:
            # no rebuild of `users`: with foreign keys on, that would cascade into the sessions
            assert conn.execute(
                text("SELECT full_name FROM users WHERE id = :u"), {"u": user_id}
            ).scalar() == ("Li Wei")
            assert (
                conn.execute(
                    text("SELECT count(*) FROM user_sessions WHERE user_id = :u"), {"u": user_id}
                ).scalar()
                == 1
            )

        command.upgrade(config, "head")
        assert "language" in _user_columns(engine)
    finally:
        engine.dispose()
