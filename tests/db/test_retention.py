"""`medseg prune` (gateway/service/retention.py) on a real object store: unsaved segmentations past the
retention lose their row and their objects (a segmentation's one object, its probability map; a row written
before masks and thumbnails were derived, also its masks.zip and thumbnail); saved ones (a chosen threshold,
or a feedback thread pointing at them) and recent ones stay untouched; a dry run deletes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.core.db import make_engine, session_scope
from gateway.models import AuditLog, Feedback, ModelVersion, Segmentation
from gateway.service.masks import THRESHOLDS
from gateway.service.retention import prune_unsaved_segmentations

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _segmentation(session, store, age_days: float, *, legacy: bool = True, **fields) -> uuid.UUID:
    """A row and its objects: the probability map only, as the gateway writes them now, or (`legacy`) also
    the masks.zip its seven thresholds name and a thumbnail, as it wrote them before."""
    seg_id = uuid.uuid4()
    stored = {"probability_key": f"{seg_id}/probability.png", "mask_keys": {}, "thumbnail_key": None}
    if legacy:
        masks_zip = f"{seg_id}/masks.zip"
        stored.update(
            mask_keys={f"{t:.1f}": masks_zip for t in THRESHOLDS}, thumbnail_key=f"{seg_id}/thumbnail.png"
        )
    for key in {stored["probability_key"], *stored["mask_keys"].values(), stored["thumbnail_key"]} - {None}:
        store.put_bytes(store.buckets.results, key, key.encode())
    session.add(
        Segmentation(
            id=seg_id, organ="liver", model_name="liver", model_version="1", width=4, height=4,
            areas_px={"0.5": 1}, created_at=NOW - timedelta(days=age_days), **stored, **fields,
        )
    )  # fmt: skip
    return seg_id


def test_prune_deletes_only_old_unsaved_results_and_their_objects(sqlite_url, clean_buckets):
    store = clean_buckets
    engine = make_engine(sqlite_url)

    def sessions():
        return session_scope(engine)

    with sessions() as session:
        old = [_segmentation(session, store, 40), _segmentation(session, store, 40)]
        old.append(_segmentation(session, store, 40, legacy=False))
        chosen = _segmentation(session, store, 40, chosen_threshold=0.4, chosen_at=NOW - timedelta(days=39))
        discussed = _segmentation(session, store, 40)
        recent = _segmentation(session, store, 5)
        version = ModelVersion(organ="liver", model_name="liver", version="1", created_by="t")
        session.add(version)
        session.flush()
        session.add(Feedback(model_version_id=version.id, body="look", segmentation_id=discussed))

    def state():
        with sessions() as session:
            rows = set(session.scalars(select(Segmentation.id)).all())
        objects = {info.key.split("/")[0] for info in store.list(store.buckets.results)}
        return rows, objects

    everything = {*old, chosen, discussed, recent}
    dry = prune_unsaved_segmentations(sessions, store, store.buckets.results, timedelta(days=30), now=NOW,
                                      dry_run=True, batch=2)  # fmt: skip
    assert (dry.segmentations, dry.objects) == (3, 3 + 3 + 1)  # each object once (7 thresholds, 1 zip)
    assert state() == (everything, {str(i) for i in everything})

    result = prune_unsaved_segmentations(sessions, store, store.buckets.results, timedelta(days=30), now=NOW,
                                         batch=2)  # fmt: skip
    assert (result.segmentations, result.objects, result.objects_failed) == (3, 3 + 3 + 1, 0)
    kept = {chosen, discussed, recent}
    assert state() == (kept, {str(i) for i in kept})
    with sessions() as session:
        entries = session.scalars(select(AuditLog).where(AuditLog.action == "segmentations.pruned")).all()
        assert sum(e.detail["count"] for e in entries) == 3
        assert session.scalars(select(Feedback.segmentation_id)).one() == discussed
    again = prune_unsaved_segmentations(sessions, store, store.buckets.results, timedelta(days=30), now=NOW)
    assert again.segmentations == 0
    engine.dispose()


def test_prune_is_a_medseg_command_and_off_by_default(capsys):
    import argparse
    import importlib
    import tomllib

    from common.settings import REPO_ROOT, Settings

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    module = importlib.import_module(declared["medseg.commands"]["prune"])
    parser = argparse.ArgumentParser()
    module.add_commands(parser.add_subparsers(dest="command"))
    assert Settings.model_fields["unsaved_result_retention_days"].default == 0
    args = parser.parse_args(["prune", "--older-than-days", "0"])
    assert args.func(args) == 0 and "retention is off" in capsys.readouterr().out
