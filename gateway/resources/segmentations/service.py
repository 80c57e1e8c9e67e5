"""The segmentation history, for both edges: each edge parses its transport's input and calls these, which
call the service layer (gateway/service/history.py) and answer the public shapes of schemas.py.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from gateway.principal import Principal
from gateway.resources.segmentations.schemas import HistoryItem, HistoryPublic, TrendPoint, TrendPublic
from gateway.resources.shared import list_limit
from gateway.resources.studies.schemas import StudyTrendPoint
from gateway.service import history
from gateway.service.clinic import Clinic
from gateway.service.masks import nearest_threshold


def _history_item(clinic: Clinic, row) -> HistoryItem:
    value, unit, threshold = history.area(row, clinic.default_threshold(row.organ))
    doubtful_below = clinic.settings.stability_doubtful_below
    return HistoryItem(
        id=str(row.id),
        organ=row.organ,
        model_name=row.model_name,
        model_version=row.model_version,
        patient_id=row.patient_id,
        width=row.width,
        height=row.height,
        created_at=row.created_at,
        stability=row.stability,
        doubtful=None if row.stability is None else row.stability < doubtful_below,
        chosen_threshold=row.chosen_threshold,
        chosen_note=row.chosen_note,
        area=value,
        area_unit=unit,
        area_threshold=threshold,
        thumbnail_url=f"/api/v1/segmentations/{row.id}/thumbnail.png",  # every row has a map to draw it from
    )


def list_segmentations(
    clinic: Clinic,
    session: Session,
    who: Principal,
    patient_id: str | None,
    organ: str | None,
    limit: int | None,
) -> HistoryPublic:
    rows = history.history(session, who, patient_id=patient_id, organ=organ, limit=list_limit(limit))
    return HistoryPublic(segmentations=[_history_item(clinic, r) for r in rows])


def choose_threshold(
    clinic: Clinic, session: Session, who: Principal, segmentation_id: str, threshold: float, note: str | None
) -> HistoryItem:
    row = history.choose_threshold(session, who, segmentation_id, threshold, note)
    return _history_item(clinic, row)


def thumbnail(clinic: Clinic, session: Session, who: Principal, segmentation_id: str) -> bytes:
    row = history.get_segmentation(session, who, segmentation_id)
    return history.thumbnail_png(clinic.dataplane, row)


def mask(
    clinic: Clinic, session: Session, who: Principal, segmentation_id: str, threshold: float | None
) -> tuple[float, bytes]:
    """(threshold, mask PNG) of a stored segmentation: at `threshold`, else at the one the doctor saved,
    else at the organ's default (the nearest on the grid)."""
    row = history.get_segmentation(session, who, segmentation_id)
    if threshold is None:
        threshold = row.chosen_threshold
    if threshold is None:
        threshold = nearest_threshold(clinic.default_threshold(row.organ))
    png = history.mask_png(clinic.dataplane, row, threshold)
    return round(threshold, 1), png


def trend(
    clinic: Clinic, session: Session, who: Principal, patient_id: str, organ: str | None
) -> TrendPublic:
    points = history.trend(session, who, patient_id, organ, clinic.default_threshold)
    studies = clinic.studies.trend(session, who, patient_id, organ)
    return TrendPublic(
        patient_id=patient_id,
        points=[TrendPoint(**p) for p in points],
        studies=[StudyTrendPoint(**s) for s in studies],
    )
