from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from gateway.api.clinic_deps import ClinicDep, HistoryReader, ThresholdChooser
from gateway.api.deps import SessionDep
from gateway.errors import NotFound
from gateway.schemas_clinic import ChoiceRequest, HistoryItem, HistoryPublic, TrendPoint, TrendPublic
from gateway.service import history

router = APIRouter(tags=["history"])

PatientId = Annotated[str, Path(max_length=128)]


def _item(row, clinic) -> HistoryItem:
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
        thumbnail_url=f"/api/v1/segmentations/{row.id}/thumbnail.png" if row.thumbnail_key else None,
    )


@router.get("/segmentations", response_model=HistoryPublic)
def list_segmentations(
    clinic: ClinicDep,
    who: HistoryReader,
    session: SessionDep,
    patient_id: Annotated[str | None, Query(max_length=128)] = None,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> HistoryPublic:
    """The caller's recent segmentations (newest first), filterable by patient and organ."""
    rows = history.history(session, who, patient_id=patient_id, organ=organ, limit=limit)
    return HistoryPublic(segmentations=[_item(r, clinic) for r in rows])


@router.post("/segmentations/{segmentation_id}/choice", response_model=HistoryItem)
def choose_threshold(
    segmentation_id: str, body: ChoiceRequest, clinic: ClinicDep, who: ThresholdChooser, session: SessionDep
) -> HistoryItem:
    """Save the threshold the doctor chose for this segmentation, with an optional note."""
    row = history.choose_threshold(session, who, segmentation_id, body.threshold, body.note)
    return _item(row, clinic)


@router.get(
    "/segmentations/{segmentation_id}/thumbnail.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def thumbnail(segmentation_id: str, clinic: ClinicDep, who: HistoryReader, session: SessionDep):
    """A small preview of the segmentation's probability map."""
    row = history.get_segmentation(session, who, segmentation_id)
    if not row.thumbnail_key:
        raise NotFound(f"segmentation {segmentation_id} has no thumbnail", code="no_thumbnail")
    data = clinic.dataplane.store.get_bytes(clinic.dataplane.results_bucket, row.thumbnail_key)
    return Response(content=data, media_type="image/png")


@router.get("/patients/{patient_id}/trend", response_model=TrendPublic)
def trend(
    patient_id: PatientId,
    clinic: ClinicDep,
    who: HistoryReader,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
) -> TrendPublic:
    """The patient's segmented area over time (mm² when the images carried pixel spacing, else pixels)."""
    points = history.trend(session, who, patient_id, organ, clinic.default_threshold)
    return TrendPublic(patient_id=patient_id, points=[TrendPoint(**p) for p in points])
