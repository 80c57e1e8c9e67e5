"""Datasets as the gateway sees them: an upload validated and stored by common.datasets (the one
validator), recorded as a `Dataset` row with its uploader and hospital; listing by who may see what.
The gateway owns the database, so recording a pushed dataset (the API's uploads and `medseg dataset push`,
gateway/commands/datasets.py) happens here, never in common/ or the trainer.

Visibility and deletion follow the access table (gateway/access.py DATASET_READ, DATASET_DELETE): a doctor
or a key sees their hospital's datasets and their own uploads, researchers every dataset, an admin their
hospital's (a platform admin every one). Deletion is soft (row and objects stay, the dataset is hidden): by
its uploader or an admin.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from common.datasets import MANIFEST, DatasetLimits, push_dataset
from common.errors import MedSegError, NotFound
from gateway import tenancy
from gateway.access import DATASET_DELETE, DATASET_READ
from gateway.core.db import database_unavailable, is_unavailable
from gateway.models import Dataset, audit
from gateway.principal import Principal

logger = logging.getLogger(__name__)


def upload_dataset(
    session: Session,
    store,
    principal: Principal,
    *,
    organ: str,
    archive: Path,
    name: str | None = None,
    notes: str | None = None,
    limits: DatasetLimits | None = None,
    filename: str | None = None,
) -> Dataset:
    """Validate and store the zip at `archive`, then record it. Nothing is left behind on failure:

    bad input → DatasetError naming the entry (nothing was uploaded); store down → ServiceUnavailable
    (push_dataset deletes its partial upload); database failure → the uploaded objects are deleted.
    `filename`: the uploader's own name of the file, which error messages name instead of `archive`
    (the server's temporary file: its name and folder are nobody's business).
    """
    try:
        manifest = push_dataset(store, organ, archive, name=name or None, limits=limits)
    except MedSegError as exc:
        _name_the_users_file(exc, archive, filename)
        raise
    return record_dataset(
        session,
        store,
        manifest,
        actor=principal.actor,
        action="dataset.upload",
        notes=notes,
        uploaded_by_user_id=principal.user.id if principal.user else None,
        uploaded_by_api_key_id=principal.api_key.id if principal.api_key else None,
        hospital=principal.hospital,
    )


def record_dataset(
    session: Session,
    store,
    manifest: dict,
    *,
    actor: str,
    action: str = "dataset.push",
    notes: str | None = None,
    uploaded_by_user_id: int | None = None,
    uploaded_by_api_key_id: int | None = None,
    hospital: str | None = None,
) -> Dataset:
    """Record a dataset `push_dataset` just stored: its `Dataset` row and an audit entry (`action`, `actor`).

    On any failure the session is rolled back and the dataset's objects are deleted, so no unrecorded
    dataset is left in the bucket; a database that does not answer is ServiceUnavailable.
    """
    try:
        row = Dataset.from_manifest(
            manifest,
            MANIFEST,
            notes=notes,
            uploaded_by_user_id=uploaded_by_user_id,
            uploaded_by_api_key_id=uploaded_by_api_key_id,
            hospital=hospital,
        )
        session.add(row)
        audit(
            session,
            actor,
            action,
            manifest["id"],
            {"organ": manifest["organ"], "pairs": manifest["pair_count"], "hash": manifest["dataset_hash"]},
        )
        session.commit()
    except BaseException as exc:
        session.rollback()
        _delete_objects(store, manifest["id"])
        if isinstance(exc, DBAPIError) and is_unavailable(exc):
            raise database_unavailable(exc) from exc
        raise
    return row


def _name_the_users_file(exc: MedSegError, archive: Path, filename: str | None) -> None:
    """Reword the error in place (its message and its values): the uploader's file where the validator named
    the temporary one."""
    shown = (filename or "").replace("\\", "/").rsplit("/", 1)[-1][:200] or "the uploaded file"
    message = exc.message.replace(str(archive), shown).replace(archive.name, shown)
    if message != exc.message:
        exc.message = message
        exc.args = (message, *exc.args[1:])
    for key, value in exc.params.items():
        if value in (str(archive), archive.name):
            exc.params[key] = shown


def _delete_objects(store, dataset_id: str) -> None:
    try:
        store.delete_prefix(store.buckets.datasets, f"{dataset_id}/")
    except (
        MedSegError
    ) as exc:  # its manifest goes too, or nothing does: an incomplete dataset is never listed
        logger.error("dataset %s was not recorded and its objects could not be deleted: %s", dataset_id, exc)


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """The WHERE clause selecting the datasets `principal` may see (deleted ones excluded elsewhere): the
    access table's rule (access.DATASET_READ), enforced by gateway/tenancy.py."""
    return tenancy.where(principal, DATASET_READ)


def list_datasets(session: Session, principal: Principal, organ: str | None = None) -> list[Dataset]:
    query = select(Dataset).where(visible_to(principal), Dataset.deleted_at.is_(None))
    if organ:
        query = query.where(Dataset.organ == organ)
    return list(session.scalars(query.order_by(Dataset.created_at.desc(), Dataset.id)))


def get_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    """The dataset if `principal` may see it; NotFound otherwise (no hint that it exists elsewhere)."""
    row = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, visible_to(principal), Dataset.deleted_at.is_(None))
    )
    if row is None:
        raise NotFound(f"no dataset {dataset_id!r}", code="unknown_dataset", params={"id": dataset_id})
    return row


def delete_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    """Soft-delete: hidden from every listing; the row and the objects stay for the audit trail."""
    row = get_dataset(session, principal, dataset_id)
    tenancy.check(
        session,
        principal,
        DATASET_DELETE,
        row,
        "only the dataset's uploader or an admin may delete it",
        code="not_your_dataset",
    )
    row.deleted_at = datetime.now(UTC)
    row.status = "deleted"
    audit(session, principal.actor, "dataset.delete", row.id, {"organ": row.organ})
    session.commit()
    return row
