"""Segmentation as a clinical record: who, which patient, which version; the doctor's chosen threshold;
history, per-patient trend, stability and the suggested threshold.

* Stability: Dice between the masks at 0.2 and 0.8. A confident model gives nearly the same mask at
  both; a low value means the outline depends on the threshold, so the result is flagged doubtful
  (below `Settings.stability_doubtful_below`).
* Suggested threshold for a model version: the mean of (a) the best threshold of each of that version's
  evaluations, weighted by case count, and (b) the thresholds doctors saved for its segmentations, each
  counting as one case; rounded to the contract's 0.1 grid. Without either, the version's default.
* Area over time: the area at the chosen threshold (else the default threshold), in mm² when the image
  carried its pixel spacing, else in pixels.
* A stored result's mask and thumbnail are made from its probability map when asked for (rows written
  before the masks were derived read their stored objects instead).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import NotFound
from gateway import metrics, tenancy
from gateway.access import SEGMENTATION_READ, SEGMENTATION_WRITE
from gateway.core.db import commit
from gateway.models import Evaluation, Segmentation, audit
from gateway.principal import Principal
from gateway.service import images, masks, scoring
from gateway.service.dataplane import DataPlane, SegmentResult, check_patient_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentRecord:
    result: SegmentResult
    stability: float
    doubtful: bool
    suggested_threshold: float


def stability(result: SegmentResult) -> float:
    """Dice between the masks at 0.2 and 0.8 (gateway.service.masks.stability), whichever masks the answer
    carries."""
    return masks.stability(result.areas)


def owned_by(principal: Principal):
    """The segmentations the caller reaches (access.SEGMENTATION_READ): their own, and for a hospital's
    admin or system that hospital's."""
    return tenancy.where(principal, SEGMENTATION_READ)


def segment(
    session: Session,
    dataplane: DataPlane,
    principal: Principal,
    organ: str,
    data: bytes,
    filename: str,
    patient_id: str | None,
    *,
    doubtful_below: float,
    wanted_masks: str | None = None,
    keep_image: bool = False,
) -> SegmentRecord:
    """The data plane's segment, recorded complete in one commit: who asked (person or key), areas and
    stability, after the one object it names, the probability map (a gateway stopped at any point leaves a
    complete record or none, never one without its owner: issue 8). `wanted_masks`: the request's `masks`
    (all, none or thresholds, see masks.selection), checked before the organ server is called. `keep_image`:
    the image is kept too, for the viewer (gateway.service.views)."""
    thresholds = masks.selection(wanted_masks)
    result = dataplane.segment(
        session,
        organ,
        data,
        filename,
        patient_id,
        api_key_id=principal.api_key.id if principal.api_key else None,
        user_id=principal.user.id if principal.user else None,
        hospital=principal.hospital,
        actor=principal.actor,
        masks=thresholds,
        keep_image=keep_image,
    )
    score = stability(result)
    metrics.observe_segmentation(result.organ, result.model.version, score, score < doubtful_below)
    return SegmentRecord(
        result,
        score,
        score < doubtful_below,
        suggested_threshold(session, result.organ, result.model.version, result.default_threshold),
    )


def get_segmentation(session: Session, principal: Principal, segmentation_id: str) -> Segmentation:
    """A segmentation the caller reaches (access.SEGMENTATION_READ); 404 otherwise, so ids of others are not
    revealed."""
    missing = NotFound(f"no segmentation {segmentation_id!r}", code="unknown_segmentation")
    try:
        key = uuid.UUID(str(segmentation_id))
    except ValueError:
        raise missing from None
    return tenancy.get(session, principal, SEGMENTATION_READ, key, missing)


def probability_map(dataplane: DataPlane, row: Segmentation) -> np.ndarray:
    """The segmentation's stored probability map (uint8 H×W), as the organ server answered it."""
    return images.decode_probability(dataplane.store.get_bytes(dataplane.results_bucket, row.probability_key))


def mask_png(dataplane: DataPlane, row: Segmentation, threshold: float) -> bytes:
    """The segmentation's mask at `threshold` (of the grid: 400 otherwise), made from its probability map,
    byte for byte the PNG its segment answer carried; a row written before masks were derived reads its
    stored mask."""
    threshold = masks.grid_threshold(threshold)
    stored = (row.mask_keys or {}).get(f"{threshold:.1f}")
    if stored:
        blob = dataplane.store.get_bytes(dataplane.results_bucket, stored)
        return masks.unpack_mask(stored, blob, threshold)
    return masks.mask_png(probability_map(dataplane, row), threshold)


def thumbnail_png(dataplane: DataPlane, row: Segmentation) -> bytes:
    """The history's preview of the segmentation, made from its probability map (a row written before
    previews were derived reads its stored one)."""
    if row.thumbnail_key:
        return dataplane.store.get_bytes(dataplane.results_bucket, row.thumbnail_key)
    return scoring.thumbnail_png(probability_map(dataplane, row))


def choose_threshold(
    session: Session, principal: Principal, segmentation_id: str, threshold: float, note: str | None
) -> Segmentation:
    row = get_segmentation(session, principal, segmentation_id)
    # an API key saves the choice of the doctor it segmented for (access.SEGMENTATION_WRITE)
    tenancy.check(
        session,
        principal,
        SEGMENTATION_WRITE,
        row,
        "only the doctor (or the API key) who made the segmentation saves its threshold",
        code="not_your_segmentation",
    )
    chosen = masks.grid_threshold(threshold)
    row.chosen_threshold, row.chosen_note, row.chosen_at = chosen, note, datetime.now(UTC)
    detail = {"threshold": f"{chosen:.1f}"}
    audit(session, principal.actor, "segmentation.choose", f"segmentation:{row.id}", detail)
    commit(session)
    metrics.observe_chosen_threshold(row.organ, row.model_version, row.chosen_threshold)
    return row


def history(
    session: Session,
    principal: Principal,
    *,
    patient_id: str | None = None,
    organ: str | None = None,
    limit: int = 50,
) -> list[Segmentation]:
    query = (
        select(Segmentation).where(owned_by(principal)).order_by(Segmentation.created_at.desc()).limit(limit)
    )
    if patient_id:
        query = query.where(Segmentation.patient_id == check_patient_id(patient_id))
    if organ:
        query = query.where(Segmentation.organ == organ)
    return list(session.scalars(query))


def area(row: Segmentation, default_threshold: float) -> tuple[float, str, float]:
    """(area, unit, threshold used) at the chosen threshold, else the default one."""
    threshold = row.chosen_threshold if row.chosen_threshold is not None else default_threshold
    pixels = (row.areas_px or {}).get(f"{threshold:.1f}")
    if pixels is None:  # a default threshold off the grid: nearest mask
        nearest = masks.nearest_threshold(threshold)
        threshold, pixels = nearest, (row.areas_px or {}).get(f"{nearest:.1f}", 0)
    if row.pixel_spacing_row_mm and row.pixel_spacing_col_mm:
        return float(pixels) * row.pixel_spacing_row_mm * row.pixel_spacing_col_mm, "mm2", threshold
    return float(pixels), "px", threshold


def trend(
    session: Session, principal: Principal, patient_id: str, organ: str | None, default_threshold
) -> list[dict]:
    rows = history(session, principal, patient_id=patient_id, organ=organ, limit=500)
    points = []
    for row in sorted(rows, key=lambda r: r.created_at):
        value, unit, threshold = area(row, default_threshold(row.organ))
        points.append(
            {
                "segmentation_id": str(row.id),
                "at": row.created_at,
                "organ": row.organ,
                "model_version": row.model_version,
                "area": value,
                "unit": unit,
                "threshold": threshold,
                "chosen": row.chosen_threshold is not None,
            }
        )
    return points


def suggested_threshold(session: Session, organ: str, version: str, default: float) -> float:
    weighted: list[tuple[float, int]] = [
        (e.best_threshold, e.case_count)
        for e in session.scalars(
            select(Evaluation).where(Evaluation.organ == organ, Evaluation.model_version == version)
        )
    ]
    weighted += [
        (t, 1)
        for t in session.scalars(
            select(Segmentation.chosen_threshold).where(
                Segmentation.organ == organ,
                Segmentation.model_version == version,
                Segmentation.chosen_threshold.is_not(None),
            )
        )
    ]
    if not weighted:
        return default
    values, weights = zip(*weighted, strict=True)
    mean = float(np.average(values, weights=weights))
    return masks.nearest_threshold(mean)
