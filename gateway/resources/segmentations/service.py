"""The segmentation history, for both edges: each edge parses its transport's input and calls these, which
call the service layer (gateway/service/history.py) and answer the public shapes of schemas.py.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.errors import NotFound
from gateway.principal import Principal
from gateway.resources.segmentations.schemas import (
    HistoryItem,
    HistoryPublic,
    NucleiPublic,
    TrendPoint,
    TrendPublic,
)
from gateway.resources.shared import list_limit
from gateway.resources.studies.schemas import StudyTrendPoint
from gateway.service import history, images, views
from gateway.service.clinic import Clinic
from gateway.service.masks import nearest_threshold
from gateway.service.nuclei import count_nuclei


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
        image_url=f"/api/v1/segmentations/{row.id}/image.png" if row.view_key else None,
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
    return _stored_mask(clinic, history.get_segmentation(session, who, segmentation_id), threshold)


def _stored_mask(clinic: Clinic, row, threshold: float | None) -> tuple[float, bytes]:
    if threshold is None:
        threshold = row.chosen_threshold
    if threshold is None:
        threshold = nearest_threshold(clinic.default_threshold(row.organ))
    png = history.mask_png(clinic.dataplane, row, threshold)
    return round(threshold, 1), png


def nuclei(
    clinic: Clinic, session: Session, who: Principal, segmentation_id: str, threshold: float | None
) -> NucleiPublic:
    """The nuclei of a segmentation's mask at `threshold` (as `mask` picks it), counted with touching ones
    split (gateway/service/nuclei.py). Any mask is counted the same way, as separate objects; the pages
    ask it of nucleus organs (cells) only."""
    row = history.get_segmentation(session, who, segmentation_id)
    used, png = _stored_mask(clinic, row, threshold)
    found = count_nuclei(images.decode_label(png, "mask.png", max_pixels=clinic.dataplane.max_image_pixels))
    um2 = None
    if row.pixel_spacing_row_mm and row.pixel_spacing_col_mm:
        per_pixel = row.pixel_spacing_row_mm * row.pixel_spacing_col_mm * 1e6  # mm² → µm²
        um2 = [round(a * per_pixel, 3) for a in found.areas_px]
    return NucleiPublic(
        segmentation_id=str(row.id), threshold=used, count=found.count, areas_px=found.areas_px, areas_um2=um2
    )


def view_member(
    clinic: Clinic, session: Session, who: Principal, segmentation_id: str, member: str
) -> tuple[bytes, dict[str, str]]:
    """(bytes, response headers) of a member of the segmentation's stored view (gateway/service/views.py):
    its image or its modality values; 404 `no_image` for a result made before views were kept."""
    row = history.get_segmentation(session, who, segmentation_id)
    if not row.view_key:
        raise NotFound(
            f"segmentation {segmentation_id} was made before images were kept with results", code="no_image"
        )
    blob = clinic.dataplane.store.get_bytes(clinic.dataplane.results_bucket, row.view_key)
    data, meta = views.read_view(blob, member)
    return data, views.headers(meta)


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
