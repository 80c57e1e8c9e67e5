"""`medseg backup DIR`, `medseg restore DIR [--force]` (gateway/core/backup.py) and `medseg backup-scheduler`
(gateway/core/backup_schedule.py); docs/operations.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import MedSegError
from common.settings import get_settings
from gateway.core import backup as backups


def _backup(args: argparse.Namespace) -> int:
    try:
        summary = backups.backup(get_settings(), Path(args.folder))
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"backup in {summary.folder}: {summary.database} database at revision {summary.revision}, "
        f"{summary.objects} objects ({summary.object_bytes} bytes)"
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    try:
        summary = backups.restore(get_settings(), Path(args.folder), force=args.force)
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"restored {summary.folder}: {summary.database} database at revision {summary.revision}, "
        f"{summary.objects} objects ({summary.object_bytes} bytes); start the gateway (it migrates to head)"
    )
    return 0


def _scheduler(_args: argparse.Namespace) -> int:
    from gateway.core.backup_schedule import run_scheduler

    settings = get_settings()
    if not settings.backup_schedule:
        print("no MEDSEG_BACKUP_SCHEDULE: no scheduled backups", file=sys.stderr)
        return 2
    try:
        return run_scheduler(settings)
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def add_commands(subparsers) -> None:
    take = subparsers.add_parser(
        "backup", help="copy the database and every bucket's objects into a new folder, with a manifest"
    )
    take.add_argument("folder", help="a new (or empty) folder")
    take.set_defaults(func=_backup)
    put = subparsers.add_parser(
        "restore", help="check a backup (manifest, checksums) and restore it into an empty stack"
    )
    put.add_argument("folder", help="a folder `medseg backup` wrote")
    put.add_argument("--force", action="store_true", help="restore into a stack that already holds work")
    put.set_defaults(func=_restore)
    schedule = subparsers.add_parser(
        "backup-scheduler",
        help="(the stack's `backup` program) back up on MEDSEG_BACKUP_SCHEDULE, keep MEDSEG_BACKUP_KEEP",
    )
    schedule.set_defaults(func=_scheduler)
