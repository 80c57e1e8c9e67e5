"""Database writes the service layer needs (one function per operation; the caller owns the session)."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from gateway.core.db import database_unavailable
from gateway.models import Segmentation, audit
from gateway.service.organs import ModelInfo


def record_segmentation(
    session: Session,
    *,
    id: str,
    organ: str,
    model: ModelInfo,
    patient_id: str | None,
    width: int,
    height: int,
    spacing_mm: tuple[float, float] | None,
    probability_key: str,
    mask_keys: dict[str, str],
    areas: dict[str, int],
    api_key_id: int | None,
    stability: float | None = None,
    thumbnail_key: str | None = None,
    user_id: int | None = None,
    actor: str | None = None,
) -> Segmentation:
    """Insert the Segmentation row, complete (who asked it: a person or a key; its stability; its thumbnail
    when there is one), and its audit record, in one commit: the objects it names already exist."""
    row = Segmentation(
        id=uuid.UUID(id),
        organ=organ,
        model_name=model.name,
        model_version=model.version,
        patient_id=patient_id,
        width=width,
        height=height,
        pixel_spacing_row_mm=spacing_mm[0] if spacing_mm else None,
        pixel_spacing_col_mm=spacing_mm[1] if spacing_mm else None,
        probability_key=probability_key,
        mask_keys=mask_keys,
        areas_px=areas,
        stability=stability,
        thumbnail_key=thumbnail_key,
        api_key_id=api_key_id,
        user_id=user_id,
    )
    session.add(row)
    audit(
        session,
        actor=actor or (f"api-key:{api_key_id}" if api_key_id else "anonymous"),
        action="segment",
        target=f"segmentation:{id}",
        detail={"organ": organ, "model_version": model.version},
    )
    try:
        session.commit()
    except OperationalError as exc:  # locked SQLite, PostgreSQL gone: the caller removes the objects, 503
        session.rollback()
        raise database_unavailable(exc) from exc
    return row
