"""Migration 0005 (tenancy) on SQLite and PostgreSQL: evaluations, segmentations and feedback get their
owner's hospital, backfilled from the person, else the API key; feedback gets its key and `shared` (false);
datasets without a hospital get their uploader's; downgrading drops the columns and keeps every row (no
table rebuild: with foreign keys on, that would cascade into the cases and replies)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import inspect, text

from gateway.core.db import alembic_config, make_engine


def _columns(engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def _insert(conn, table: str, **values) -> None:
    names = ", ".join(values)
    conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)


def test_0005_backfills_the_owner_s_hospital_and_downgrades_keeping_the_rows(db_url):
    config = alembic_config(db_url)
    command.downgrade(config, "0004")
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    ev_doctor, ev_key, seg = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        assert "hospital" not in _columns(engine, "evaluations")
        uid = (lambda u: u) if db_url.startswith("postgresql") else (lambda u: u.hex)
        with engine.begin() as conn:
            _insert(
                conn,
                "users",
                email="a@example.org",
                password_hash="x",
                full_name="A",
                hospital="St. Anna",
                role="doctor",
                status="active",
                created_at=now,
            )
            user = conn.execute(text("SELECT id FROM users WHERE email = 'a@example.org'")).scalar_one()
            _insert(
                conn,
                "api_keys",
                name="ris",
                prefix="p0005",
                hashed_secret="0" * 64,
                scopes='["evaluate"]',
                created_at=now,
                hospital="Bellevue",
            )
            key = conn.execute(text("SELECT id FROM api_keys WHERE prefix = 'p0005'")).scalar_one()
            for eid, u, k in ((ev_doctor, user, None), (ev_key, None, key)):
                _insert(
                    conn,
                    "evaluations",
                    id=uid(eid),
                    organ="liver",
                    model_name="liver",
                    model_version="1",
                    purpose="test",
                    threshold=0.5,
                    case_count=1,
                    mean_dice=0.9,
                    std_dice=0.0,
                    mean_iou=0.8,
                    per_threshold="[]",
                    best_threshold=0.5,
                    created_by="t",
                    user_id=u,
                    api_key_id=k,
                    created_at=now,
                )
            _insert(
                conn,
                "segmentations",
                id=uid(seg),
                organ="liver",
                model_name="liver",
                model_version="1",
                width=4,
                height=4,
                probability_key="p",
                mask_keys="{}",
                areas_px="{}",
                created_at=now,
                user_id=user,
            )
            _insert(
                conn,
                "model_versions",
                organ="liver",
                model_name="liver",
                version="m0005",
                state="candidate",
                card="{}",
                metrics="{}",
                created_by="t",
                created_at=now,
            )
            version = conn.execute(text("SELECT id FROM model_versions WHERE version = 'm0005'")).scalar_one()
            _insert(
                conn,
                "feedback",
                model_version_id=version,
                author_user_id=user,
                body="P-1: part missing",
                status="open",
                created_at=now,
                updated_at=now,
            )
            _insert(
                conn,
                "datasets",
                id="d0005",
                organ="liver",
                name="d",
                pair_count=1,
                size_bytes=1,
                dataset_hash="0" * 64,
                manifest_key="k",
                status="ready",
                created_at=now,
                uploaded_by_user_id=user,
            )

        command.upgrade(config, "0005")
        with engine.connect() as conn:
            hospitals = dict(conn.execute(text("SELECT user_id IS NULL, hospital FROM evaluations")).all())
            assert hospitals == {False: "St. Anna", True: "Bellevue"}
            assert conn.execute(text("SELECT hospital FROM segmentations")).scalar_one() == "St. Anna"
            row = conn.execute(text("SELECT hospital, shared, author_api_key_id FROM feedback")).one()
            assert (row[0], bool(row[1]), row[2]) == ("St. Anna", False, None)
            assert (
                conn.execute(text("SELECT hospital FROM datasets WHERE id = 'd0005'")).scalar_one()
                == "St. Anna"
            )

        command.downgrade(config, "0004")
        assert "hospital" not in _columns(engine, "evaluations")
        assert not {"hospital", "shared", "author_api_key_id"} & _columns(engine, "feedback")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM evaluations")).scalar() == 2
            assert conn.execute(text("SELECT count(*) FROM feedback")).scalar() == 1
        command.upgrade(config, "head")
        assert "hospital" in _columns(engine, "segmentations")
    finally:
        engine.dispose()
