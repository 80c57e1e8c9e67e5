"""Retention of unsaved segmentation results (`medseg prune`, docs/operations.md "Disk").

A segmentation is *saved* once a doctor chose its threshold (`chosen_at`), or when a feedback thread points at
it; every other one older than the retention period is pruned: its row (it leaves the history and the
patient's trend) and its objects in the results bucket (its probability map; rows written before masks and
thumbnails were derived from it also name a masks.zip and a thumbnail). Rows go first,
in one transaction with an audit entry, then the objects: an object the store fails to delete stays as an
orphan (logged and counted) but no row ever points at a missing object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from common.errors import MedSegError
from gateway.models import Feedback, Segmentation, audit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    segmentations: int
    objects: int
    objects_failed: int


def _keys(row: Segmentation) -> list[str]:
    """The row's objects, each once: its probability map; for a row written before masks and thumbnails were
    made from the map, also its masks.zip (named by all seven thresholds) and its thumbnail."""
    keys = [row.probability_key, *(row.mask_keys or {}).values(), row.thumbnail_key]
    return list(dict.fromkeys(key for key in keys if key))


def prune_unsaved_segmentations(
    sessions: Callable[[], AbstractContextManager[Session]],
    store,
    bucket: str,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    batch: int = 500,
    actor: str = "cli",
) -> PruneResult:
    """Prune unsaved segmentations created before `now - older_than` (see the module's doc)."""
    cutoff = (now or datetime.now(UTC)) - older_than
    unsaved = (
        select(Segmentation)
        .where(Segmentation.chosen_at.is_(None), Segmentation.created_at < cutoff)
        .where(~exists().where(Feedback.segmentation_id == Segmentation.id))
        .order_by(Segmentation.created_at)
        .limit(batch)
    )
    pruned = deleted = failed = 0
    while True:
        with sessions() as session:
            rows = session.scalars(unsaved.offset(pruned if dry_run else 0)).all()
            if not rows:
                break
            keys = [key for row in rows for key in _keys(row)]
            if not dry_run:
                session.execute(delete(Segmentation).where(Segmentation.id.in_([row.id for row in rows])))
                audit(
                    session,
                    actor,
                    "segmentations.pruned",
                    None,
                    {"count": len(rows), "before": cutoff.isoformat()},
                )
                session.commit()
        pruned += len(rows)
        if dry_run:
            deleted += len(keys)
            continue
        for key in keys:
            try:
                store.delete(bucket, key)
                deleted += 1
            except MedSegError as exc:
                failed += 1
                logger.warning("pruned segmentation object %s/%s not deleted: %s", bucket, key, exc.message)
    return PruneResult(cutoff, pruned, deleted, failed)
