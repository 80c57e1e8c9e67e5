"""`medseg prune`: delete unsaved segmentation results older than the retention period
(gateway/service/retention.py)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from common.objectstore import ObjectStore
from common.settings import get_settings
from gateway.core.db import run_migrations, session_scope
from gateway.service.retention import prune_unsaved_segmentations


def _prune(args: argparse.Namespace) -> int:
    settings = get_settings()
    days = (
        args.older_than_days if args.older_than_days is not None else settings.unsaved_result_retention_days
    )
    if days <= 0:
        print(
            "retention is off (MEDSEG_UNSAVED_RESULT_RETENTION_DAYS=0, no --older-than-days): nothing pruned"
        )
        return 0
    run_migrations(settings.sqlalchemy_url)
    result = prune_unsaved_segmentations(
        session_scope,
        ObjectStore.from_settings(settings),
        settings.bucket_results,
        timedelta(days=days),
        dry_run=args.dry_run,
    )
    verb = "would prune" if args.dry_run else "pruned"
    failed = f"; {result.objects_failed} objects not deleted (see the log)" if result.objects_failed else ""
    cutoff = f"{result.cutoff:%Y-%m-%d %H:%M} UTC"
    count = f"{result.segmentations} unsaved segmentations"
    print(f"{verb} {count} created before {cutoff} and {result.objects} objects{failed}")
    return 1 if result.objects_failed else 0


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="delete unsaved segmentation results (no chosen threshold, no feedback) past the retention",
    )
    parser.add_argument(
        "--older-than-days", type=float, default=None, help="default: MEDSEG_UNSAVED_RESULT_RETENTION_DAYS"
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    parser.set_defaults(func=_prune)
