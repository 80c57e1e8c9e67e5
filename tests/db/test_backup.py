"""`medseg backup` / `medseg restore` (gateway/core/backup.py) on a real object store, on SQLite (online
backup API) and PostgreSQL (pg_dump/pg_restore): backup → wipe → restore gives back every row of every table
and byte-identical objects; a damaged, partial or foreign backup and a stack that holds work are refused."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import select, text

from common.objectstore import sha256_of
from common.settings import REPO_ROOT
from gateway.core import backup as backups
from gateway.core.db import make_engine, session_scope
from gateway.models import Dataset, Evaluation, EvaluationCase, Feedback, FeedbackReply, Segmentation
from tests.db.records import insert_records, table_rows

pytestmark = pytest.mark.integration


def _objects(store) -> dict[tuple[str, str], str]:
    return {
        (bucket, info.key): sha256_of(store.stream(bucket, info.key))
        for bucket in store.buckets.all()
        for info in store.list(bucket)
    }


def _wipe(url: str, store) -> None:
    """An empty stack: no database (SQLite) or an empty schema (PostgreSQL), empty buckets."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    for bucket in store.buckets.all():
        for info in store.list(bucket):
            store.delete(bucket, info.key)


@pytest.fixture
def filled(db_url, clean_buckets, s3_settings):
    """A database with one record of each kind and objects in every bucket (one stored under two keys)."""
    engine = make_engine(db_url)
    with engine.begin() as conn:
        ids = insert_records(conn, db_url)
    engine.dispose()
    store = clean_buckets
    seg = ids["segmentation"]
    store.put_bytes(store.buckets.results, f"{seg}/probability.png", b"\x89PNG probability", "image/png")
    store.put_bytes(store.buckets.results, f"{seg}/mask-0.5.png", bytes(range(256)) * 300, "image/png")
    store.put_bytes(store.buckets.datasets, "drecords/manifest.json", b'{"pairs": 1}', "application/json")
    store.put_bytes(store.buckets.models, "liver/mrecords/liver.mar", b"mar" * 1000)
    store.put_bytes(store.buckets.runs, "run-1/log.txt", b"mar" * 1000)  # same bytes, other key
    settings = s3_settings.model_copy(update={"database_url": db_url})
    return settings, store, ids


def test_backup_wipe_restore_gives_back_every_row_and_object(filled, tmp_path):
    settings, store, ids = filled
    engine = make_engine(settings.database_url)
    rows_before, objects_before = table_rows(engine), _objects(store)
    engine.dispose()

    summary = backups.backup(settings, tmp_path / "b")
    assert (summary.objects, summary.revision) == (5, rows_before["alembic_version"][0][0])
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert len(list((tmp_path / "b" / "objects").iterdir())) == 4  # the shared bytes are kept once

    _wipe(settings.database_url, store)
    assert _objects(store) == {}
    backups.restore(settings, tmp_path / "b")

    engine = make_engine(settings.database_url)
    assert table_rows(engine) == rows_before
    assert (
        _objects(store)
        == objects_before
        == {(o["bucket"], o["key"]): o["sha256"] for o in manifest["objects"]}
    )
    assert (
        store.stat(store.buckets.results, f"{ids['segmentation']}/probability.png").content_type
        == "image/png"
    )
    with session_scope(engine) as session:  # the records read back through the models
        seg = session.get(Segmentation, ids["segmentation"])
        assert seg.patient_id == "P-1" and seg.mask_keys == {"0.5": f"{ids['segmentation']}/mask-0.5.png"}
        evaluation = session.get(Evaluation, ids["evaluation"])
        assert evaluation.mean_dice == 0.9
        assert session.scalars(select(EvaluationCase.dice_at)).all() == [{"0.5": 0.9}]
        assert session.get(Dataset, "drecords").manifest_key == "drecords/manifest.json"
        thread = session.get(Feedback, ids["feedback"])
        assert thread.body == "P-1: part missing"
        assert session.scalars(select(FeedbackReply.body)).all() == ["looking"]
    engine.dispose()

    with pytest.raises(backups.InvalidInput) as refused:  # now the stack holds work
        backups.restore(settings, tmp_path / "b")
    assert refused.value.code == "not_empty" and "segmentations" in refused.value.message
    backups.restore(settings, tmp_path / "b", force=True)  # --force: replaced, same content
    engine = make_engine(settings.database_url)
    assert table_rows(engine) == rows_before
    engine.dispose()


def _refused(settings, folder: Path, words: str) -> None:
    with pytest.raises(backups.BackupError) as refused:
        backups.restore(settings, folder)
    assert words in refused.value.message, refused.value.message


def test_damaged_partial_or_foreign_backups_are_refused_before_anything_changes(filled, tmp_path, db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("the checks run before the database is touched: one backend shows them")
    settings, store, _ = filled
    backups.backup(settings, tmp_path / "good")
    _wipe(settings.database_url, store)

    def copy(name: str) -> Path:
        return Path(shutil.copytree(tmp_path / "good", tmp_path / name))

    flipped = copy("flipped")
    victim = next((flipped / "objects").iterdir())
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    _refused(settings, flipped, "checksum mismatch")

    missing = copy("missing")
    next((missing / "objects").iterdir()).unlink()
    _refused(settings, missing, "missing")

    partial = copy("partial")
    (partial / "manifest.json").unlink()
    _refused(settings, partial, "partial")

    foreign = copy("foreign")
    manifest = json.loads((foreign / "manifest.json").read_text())
    (foreign / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    _refused(settings, foreign, "version 99")

    newer = copy("newer")
    manifest["database"]["alembic_revision"] = "9999"
    (newer / "manifest.json").write_text(json.dumps(manifest))
    _refused(settings, newer, "newer than this MedSeg")

    # nothing was restored by any of them
    assert not Path(settings.database_url.removeprefix("sqlite:///")).exists() and _objects(store) == {}
    with pytest.raises(backups.BackupError, match="not empty"):
        backups.backup(settings, tmp_path / "good")  # never into a folder that holds something


def test_backup_and_restore_are_medseg_commands():
    """Registered as `medseg.commands` entry points (common/cli.py loads them from the installed metadata)."""
    import argparse
    import importlib

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    module = importlib.import_module(declared["medseg.commands"]["backup"])
    parser = argparse.ArgumentParser()
    module.add_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["backup", "/x"]).folder == "/x"
    assert parser.parse_args(["restore", "/x", "--force"]).force is True
