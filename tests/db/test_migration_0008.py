"""Migration 0008 (studies remember their PACS series and the SEGs stored back) upgrades and downgrades on
SQLite and PostgreSQL keeping the studies already there (not from a PACS, nothing to store back)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import inspect, text

from gateway.core.db import alembic_config, make_engine

COLUMNS = {"pacs_study_uid", "pacs_series_uid", "pacs_store_result", "pacs_segs"}


def _columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("studies")}


def test_0008_adds_and_drops_the_pacs_columns_keeping_the_studies(db_url):
    config = alembic_config(db_url)
    command.downgrade(config, "0007")
    engine = make_engine(db_url)
    study_id = uuid.uuid4()
    try:
        assert not COLUMNS & _columns(engine)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO studies (id, organ, source, status, progress, attempts, shape, spacing_mm, "
                    "labels, volumes_ml, input_key, size_bytes, created_at) VALUES (:id, 'liver', 'dicom', "
                    "'done', 1.0, 1, :shape, :spacing, :labels, '{}', 'studies/x/source.zip', 10, :now)"
                ),
                {
                    "id": study_id.hex if engine.dialect.name == "sqlite" else study_id,
                    "shape": json.dumps([2, 4, 4]),
                    "spacing": json.dumps([2.5, 0.8, 0.8]),
                    "labels": json.dumps(["liver"]),
                    "now": datetime.now(UTC),
                },
            )
        command.upgrade(config, "0008")
        assert COLUMNS <= _columns(engine)
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT organ, pacs_study_uid, pacs_store_result, pacs_segs FROM studies")
            ).one()
        assert row[0] == "liver" and row[1] is None and not row[2] and row[3] is None
        command.downgrade(config, "0007")
        assert not COLUMNS & _columns(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM studies")).scalar() == 1
        command.upgrade(config, "head")
        assert COLUMNS <= _columns(engine)
    finally:
        engine.dispose()
