"""Database writes the service layer needs (one function per operation; the caller owns the session)."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from gateway.core.db import database_unavailable
from gateway.models import Segmentation, audit
from gateway.service.dataplane import SegmentationRecord


def record_segmentation(session: Session, record: SegmentationRecord) -> Segmentation:
    """Insert the Segmentation row, complete (who asked it: a person or a key; its areas and stability), and
    its audit record, in one commit: the probability map it names already exists. Its masks and thumbnail
    are made from that map when asked for, so the row names no mask or thumbnail object (rows written before
    do, and are read as they are)."""
    spacing = record.spacing_mm
    row = Segmentation(
        id=uuid.UUID(record.id),
        organ=record.organ,
        model_name=record.model.name,
        model_version=record.model.version,
        patient_id=record.patient_id,
        width=record.width,
        height=record.height,
        pixel_spacing_row_mm=spacing[0] if spacing else None,
        pixel_spacing_col_mm=spacing[1] if spacing else None,
        probability_key=record.probability_key,
        mask_keys={},
        areas_px=record.areas,
        stability=record.stability,
        view_key=record.view_key,
        api_key_id=record.api_key_id,
        user_id=record.user_id,
        hospital=record.hospital,
    )
    session.add(row)
    api_key_id = record.api_key_id
    audit(
        session,
        actor=record.actor or (f"api-key:{api_key_id}" if api_key_id else "anonymous"),
        action="segment",
        target=f"segmentation:{record.id}",
        detail={"organ": record.organ, "model_version": record.model.version},
        hospital=record.hospital,  # the owner's, the actor's: no query for it on every segment
    )
    try:
        session.commit()
    except OperationalError as exc:  # locked SQLite, PostgreSQL gone: the caller removes the objects, 503
        session.rollback()
        raise database_unavailable(exc) from exc
    return row
