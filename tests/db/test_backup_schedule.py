"""Scheduled backups with retention (issue 22: "a scheduled backup with retention is one setting",
gateway/core/backup_schedule.py): the schedule's two forms and its refusals, the retention rule, and the
scheduler itself on a short interval against the real object store and SQLite: backups taken one after
another, only the newest KEEP left (each one complete and verifying), an audit entry per backup; the object
store down → the run fails, nothing old is deleted."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from common.errors import InvalidInput
from gateway.core import backup as backups
from gateway.core.backup_schedule import (
    apply_retention,
    backup_dir,
    parse_schedule,
    run_once,
    run_scheduler,
)
from gateway.core.db import make_engine, session_scope
from gateway.models import AuditLog

pytestmark = pytest.mark.integration


def test_schedule_forms_and_next_run():
    daily = parse_schedule("daily@02:00")
    local = datetime(2026, 12, 1, 1, 30).astimezone()  # 01:30 local: today at 02:00
    assert daily.next_after(local) == local.replace(hour=2, minute=0)
    after = local.replace(hour=2, minute=0)  # at 02:00 exactly: tomorrow's
    assert daily.next_after(after) == after + timedelta(days=1)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_schedule("every:6h").next_after(now) == now + timedelta(hours=6)
    assert parse_schedule(" every:90s ").next_after(now) == now + timedelta(seconds=90)


@pytest.mark.parametrize(
    "text", ["", "daily", "daily@24:00", "daily@2:00", "every:0s", "every:5", "weekly@mon"]
)
def test_a_schedule_that_is_neither_form_is_refused_naming_both(text):
    with pytest.raises(InvalidInput) as refused:
        parse_schedule(text)
    assert refused.value.code == "invalid_backup_schedule"
    assert "daily@HH:MM" in refused.value.message and "every:N" in refused.value.message


def _backup_folder(root: Path, name: str, complete: bool) -> Path:
    folder = root / name
    (folder / "objects").mkdir(parents=True)
    if complete:
        (folder / backups.MANIFEST).write_text("{}")
    return folder


def test_retention_keeps_the_newest_complete_and_drops_interrupted_ones(tmp_path):
    names = ["20261201T020000Z", "20261202T020000Z", "20261203T020000Z", "20261203T020000Z-1"]
    for name in names:
        _backup_folder(tmp_path, name, complete=True)
    interrupted = _backup_folder(tmp_path, "20261202T030000Z", complete=False)
    running = _backup_folder(tmp_path, "20261204T020000Z", complete=False)
    foreign = _backup_folder(tmp_path, "before-upgrade", complete=True)  # taken by hand: never ours to delete
    deleted = apply_retention(tmp_path, 2, current=running)
    assert sorted(p.name for p in deleted) == sorted([*names[:2], interrupted.name])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*names[2:], running.name, foreign.name])


def _audits(url: str, action: str) -> list[AuditLog]:
    engine = make_engine(url)
    with session_scope(engine) as session:
        rows = list(session.scalars(select(AuditLog).where(AuditLog.action == action)))
    engine.dispose()
    return rows


def test_the_scheduler_backs_up_on_a_short_interval_and_keeps_the_newest(
    sqlite_url, clean_buckets, s3_settings, tmp_path
):
    store = clean_buckets
    store.put_bytes(store.buckets.results, "r1/probability.png", b"\x89PNG map", "image/png")
    settings = s3_settings.model_copy(
        update={
            "database_url": sqlite_url,
            "backup_schedule": "every:1s",
            "backup_keep": 2,
            "backup_dir": tmp_path / "backups",
        }
    )
    stop = threading.Event()
    scheduler = threading.Thread(target=run_scheduler, args=(settings,), kwargs={"stop": stop}, daemon=True)
    scheduler.start()
    deadline = time.monotonic() + 120
    while len(_audits(sqlite_url, "backup.scheduled")) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    scheduler.join(timeout=120)
    assert not scheduler.is_alive()
    taken = _audits(sqlite_url, "backup.scheduled")
    assert len(taken) >= 4, "four backups on a 1 s schedule within 2 minutes"
    assert all(row.actor == "system:backup-scheduler" and row.hospital is None for row in taken)
    left = sorted(p for p in backup_dir(settings).iterdir())
    assert [p.name for p in left] == sorted(Path(row.target).name for row in taken)[-2:]  # the newest two
    for folder in left:  # each complete: its manifest verifies every file's checksum
        backups.verify(folder, backups.read_manifest(folder))
        assert {o["key"] for o in backups.read_manifest(folder)["objects"]} == {"r1/probability.png"}


def test_a_failed_backup_deletes_nothing_old(sqlite_url, s3_settings, objectstore_down, tmp_path):
    settings = s3_settings.model_copy(
        update={"database_url": sqlite_url, "backup_keep": 1, "backup_dir": tmp_path / "backups"}
    )
    old = _backup_folder(tmp_path / "backups", "20261201T020000Z", complete=True)
    assert run_once(settings, datetime.now(UTC)) is None  # the object store is down
    assert old.is_dir() and (old / backups.MANIFEST).is_file()
    (failed,) = _audits(sqlite_url, "backup.failed")
    assert "object store" in failed.detail["error"].lower() or "unavailable" in failed.detail["error"].lower()
