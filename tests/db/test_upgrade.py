"""Upgrades: a database with people's work at the previous schema (Alembic revision 0005, before studies;
there is no release tag yet, so the revision before head stands for the previous release) is upgraded to head
the way the gateway does at its start (run_migrations), and every record reads back through the models."""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select

from gateway.core.db import alembic_config, make_engine, run_migrations, session_scope
from gateway.models import (
    Base,
    Dataset,
    Evaluation,
    EvaluationCase,
    Feedback,
    FeedbackReply,
    Segmentation,
)
from tests.db.records import insert_records, table_rows

PREVIOUS = "0005"


def test_previous_schema_with_records_upgrades_to_head_and_every_record_reads(db_url):
    config = alembic_config(db_url)
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head != PREVIOUS
    command.downgrade(config, PREVIOUS)  # the previous release's schema (its tables only)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            ids = insert_records(conn, db_url)
        before = table_rows(engine)
        assert "studies" not in before and before["alembic_version"] == [(PREVIOUS,)]

        run_migrations(db_url)  # what `medseg serve` (make up) does first

        after = table_rows(engine)
        assert after["alembic_version"] == [(head,)]
        for table, rows in before.items():  # every row kept (columns a migration adds come at the end)
            if table != "alembic_version":
                assert [row[: len(rows[0])] for row in after[table]] == rows, table
        with session_scope(engine) as session:
            for mapper in Base.registry.mappers:  # every record of every model loads (types, JSON, UUIDs)
                loaded = session.scalars(select(mapper.class_)).all()
                assert len(loaded) == len(after[mapper.class_.__tablename__])
            assert session.get(Segmentation, ids["segmentation"]).areas_px == {"0.5": 3}
            assert session.get(Evaluation, ids["evaluation"]).mean_dice == 0.9
            assert session.scalars(select(EvaluationCase.dice_at)).all() == [{"0.5": 0.9}]
            assert session.get(Dataset, ids["dataset"]).status == "ready"
            thread = session.get(Feedback, ids["feedback"])
            assert thread.body == "P-1: part missing"
            assert session.scalars(select(FeedbackReply.body)).all() == ["looking"]
    finally:
        engine.dispose()
