"""Migration 0007 (audit entries belong to a hospital) on SQLite and PostgreSQL: entries written before it get
the hospital of the account or key they are about, else of whoever acted, else (failed sign-ins) of the
account whose address was tried; the audit log stays append-only afterwards; downgrading keeps every entry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from gateway.core.db import alembic_config, make_engine
from tests.db.test_migration_0005 import _insert


def _columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("audit_log")}


def test_0007_gives_old_entries_their_hospital_and_keeps_the_log_append_only(db_url):
    config = alembic_config(db_url)
    command.downgrade(config, "0006")
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        assert "hospital" not in _columns(engine)
        with engine.begin() as conn:
            for email, hospital in (("a@example.org", "St. Anna"), ("b@example.org", "Bellevue")):
                _insert(conn, "users", email=email, password_hash="x", full_name="P", hospital=hospital,
                        role="doctor", status="active", created_at=now)  # fmt: skip
            user_a, user_b = (
                conn.execute(text(f"SELECT id FROM users WHERE email = '{e}'")).scalar_one()
                for e in ("a@example.org", "b@example.org")
            )
            _insert(conn, "api_keys", name="ris", prefix="p0007", hashed_secret="0" * 64,
                    scopes='["segment"]', created_at=now, hospital="Bellevue")  # fmt: skip
            entries = {  # target → (actor, action): the hospital each entry must get
                "segmentation:1": (f"user:{user_a}:a@example.org", "segmentation.choose"),  # the actor's
                f"user:{user_b}:b@example.org": ("user:99:root@example.org", "user.approve"),  # the account's
                "p0007": ("cli", "api_key.revoke"),  # the key's
                "dataset:1": ("api-key:p0007", "dataset.delete"),  # the acting key's
                "a@example.org": ("ip:10.0.0.9", "sign_in.failed"),  # the account tried
                "nobody@example.org": ("ip:10.0.0.9", "sign_in.failed"),  # no account: the platform's
                "model:liver:2": ("seed:model-store", "model.seed_default"),  # the platform's
            }
            for target, (actor, action) in entries.items():
                _insert(conn, "audit_log", at=now, actor=actor, action=action, target=target)

        command.upgrade(config, "0007")
        with engine.connect() as conn:
            hospitals = dict(conn.execute(text("SELECT target, hospital FROM audit_log")).all())
        assert hospitals == {
            "segmentation:1": "St. Anna",
            f"user:{user_b}:b@example.org": "Bellevue",
            "p0007": "Bellevue",
            "dataset:1": "Bellevue",
            "a@example.org": "St. Anna",
            "nobody@example.org": None,
            "model:liver:2": None,
        }
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET hospital = 'Elsewhere'"))

        command.downgrade(config, "0006")
        assert "hospital" not in _columns(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == len(entries)
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log"))
        command.upgrade(config, "head")
        assert "hospital" in _columns(engine)
    finally:
        engine.dispose()
