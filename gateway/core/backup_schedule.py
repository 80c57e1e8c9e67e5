"""Scheduled backups with retention: `MEDSEG_BACKUP_SCHEDULE` and `MEDSEG_BACKUP_KEEP` (docs/operations.md).

    MEDSEG_BACKUP_SCHEDULE=daily@02:00   # every day at 02:00, the server's local time
    MEDSEG_BACKUP_SCHEDULE=every:6h      # or every N s / m / h / d (from the end of the last one)
    MEDSEG_BACKUP_KEEP=7                 # the newest 7 complete backups are kept, older ones deleted

With a schedule set, the local stack runs `medseg backup-scheduler` as one more supervised program
(tools/stack.py): at each time it writes `medseg backup` into `<MEDSEG_BACKUP_DIR>/<UTC timestamp>` (default
`.medseg/backups/`), then deletes the complete backups beyond the newest KEEP and the folders an interrupted
backup left (no manifest.json). A failed backup deletes nothing old: the last good ones stay. Each run is an
audit entry of the platform's (`backup.scheduled`, `backup.failed`).
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common.errors import InvalidInput, MedSegError
from common.settings import Settings
from gateway.core import backup as backups

logger = logging.getLogger(__name__)

NAME_FORMAT = "%Y%m%dT%H%M%SZ"  # a backup folder's name: when it was started, UTC
NAME = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_DAILY = re.compile(r"^daily@([01]\d|2[0-3]):([0-5]\d)$")
_EVERY = re.compile(r"^every:(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
AUDIT_ACTOR = "system:backup-scheduler"


@dataclass(frozen=True)
class Schedule:
    """`daily@HH:MM` (local time) or `every:N<s|m|h|d>`."""

    text: str
    at: tuple[int, int] | None = None  # daily: (hour, minute)
    every: timedelta | None = None

    def next_after(self, now: datetime) -> datetime:
        """The first run strictly after `now` (an aware datetime in the server's local zone for daily)."""
        if self.every is not None:
            return now + self.every
        hour, minute = self.at
        local = now.astimezone()
        run = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return run if run > local else run + timedelta(days=1)


def parse_schedule(text: str) -> Schedule:
    """The schedule of MEDSEG_BACKUP_SCHEDULE; InvalidInput naming the two forms when it is neither."""
    text = text.strip()
    if m := _DAILY.match(text):
        return Schedule(text, at=(int(m[1]), int(m[2])))
    if (m := _EVERY.match(text)) and int(m[1]) > 0:
        return Schedule(text, every=timedelta(seconds=int(m[1]) * _UNITS[m[2]]))
    raise InvalidInput(
        f"MEDSEG_BACKUP_SCHEDULE={text!r} is not a schedule: use daily@HH:MM (e.g. daily@02:00, the server's "
        "local time) or every:N followed by s, m, h or d (e.g. every:6h)",
        code="invalid_backup_schedule",
    )


def backup_dir(settings: Settings) -> Path:
    return Path(settings.backup_dir) if settings.backup_dir else settings.state_dir / "backups"


def new_folder(root: Path, now: datetime) -> Path:
    """A fresh folder name for a backup started at `now` (its UTC time; -1, -2 … if taken)."""
    base = now.astimezone(UTC).strftime(NAME_FORMAT)
    folder, n = root / base, 0
    while folder.exists():
        n += 1
        folder = root / f"{base}-{n}"
    return folder


def apply_retention(root: Path, keep: int, *, current: Path | None = None) -> list[Path]:
    """Delete the complete backups (with manifest.json) beyond the newest `keep` and every interrupted one
    (a folder of ours without it), never `current`; the folders deleted. Folders not named by the scheduler
    are never touched."""
    ours = sorted(p for p in root.iterdir() if p.is_dir() and NAME.match(p.name)) if root.is_dir() else []
    complete = [p for p in ours if (p / backups.MANIFEST).is_file()]
    doomed = [p for p in ours if p not in complete and p != current] + complete[
        : max(0, len(complete) - keep)
    ]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("backup retention: deleted %s", folder)
    return doomed


def run_once(settings: Settings, now: datetime) -> Path | None:
    """One scheduled backup and its retention; the new folder, or None when the backup failed (then nothing
    old is deleted, and the half-written folder goes at the next good run)."""
    root = backup_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    folder = new_folder(root, now)
    try:
        summary = backups.backup(settings, folder)
    except (MedSegError, OSError) as exc:
        message = exc.message if isinstance(exc, MedSegError) else f"{type(exc).__name__}: {exc}"
        logger.error("scheduled backup into %s failed: %s", folder, message)
        _audit(settings, "backup.failed", str(folder), {"error": message[:500]})
        return None
    deleted = apply_retention(root, settings.backup_keep, current=folder)
    logger.info(
        "scheduled backup in %s (%d objects); retention deleted %d", folder, summary.objects, len(deleted)
    )
    detail = {"objects": summary.objects, "bytes": summary.object_bytes, "deleted": [p.name for p in deleted]}
    _audit(settings, "backup.scheduled", str(folder), detail)
    return folder


def _audit(settings: Settings, action: str, target: str, detail: dict) -> None:
    from gateway.core.system_audit import system_audit

    system_audit(settings, AUDIT_ACTOR, action, target, detail)


def run_scheduler(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Take backups on the schedule until `stop` is set (the supervised program runs until it is stopped)."""
    schedule = parse_schedule(settings.backup_schedule)
    stop = stop or threading.Event()
    root = backup_dir(settings)
    logger.info("backups %s into %s, keeping %d", schedule.text, root, settings.backup_keep)
    due = schedule.next_after(clock())
    while not stop.is_set():
        wait_s = (due - clock()).total_seconds()
        if wait_s > 0:
            stop.wait(min(wait_s, 60.0))  # re-read the clock at least every minute (suspend, clock changes)
            continue
        run_once(settings, clock())
        due = schedule.next_after(clock())  # every:N counts from the end of this backup
    return 0
