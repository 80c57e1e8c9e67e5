from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from gateway.access import ACCESS
from gateway.api.deps import ClinicDep, SessionDep, require
from gateway.principal import Principal
from gateway.resources.segmentations.schemas import ChoiceRequest, HistoryItem, HistoryPublic, TrendPublic
from gateway.service import clinic_ops as ops

router = APIRouter(tags=["history"])

ListSegmentationsCaller = Annotated[Principal, Depends(require(ACCESS["segmentations.list"]))]
ChooseThresholdCaller = Annotated[Principal, Depends(require(ACCESS["segmentations.choose_threshold"]))]
ThumbnailCaller = Annotated[Principal, Depends(require(ACCESS["segmentations.thumbnail"]))]
MaskCaller = Annotated[Principal, Depends(require(ACCESS["segmentations.mask"]))]
TrendCaller = Annotated[Principal, Depends(require(ACCESS["segmentations.trend"]))]

PatientId = Annotated[str, Path(max_length=128)]


@router.get("/segmentations", response_model=HistoryPublic)
def list_segmentations(
    clinic: ClinicDep,
    who: ListSegmentationsCaller,
    session: SessionDep,
    patient_id: Annotated[str | None, Query(max_length=128)] = None,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=ops.MAX_LIST)] = ops.DEFAULT_LIST,
) -> HistoryPublic:
    """The caller's recent segmentations (newest first), filterable by patient and organ."""
    return ops.list_segmentations(clinic, session, who, patient_id, organ, limit)


@router.post("/segmentations/{segmentation_id}/choice", response_model=HistoryItem)
def choose_threshold(
    segmentation_id: str,
    body: ChoiceRequest,
    clinic: ClinicDep,
    who: ChooseThresholdCaller,
    session: SessionDep,
) -> HistoryItem:
    """Save the threshold the doctor chose for this segmentation, with an optional note."""
    return ops.choose_threshold(clinic, session, who, segmentation_id, body.threshold, body.note)


@router.get(
    "/segmentations/{segmentation_id}/thumbnail.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def thumbnail(segmentation_id: str, clinic: ClinicDep, who: ThumbnailCaller, session: SessionDep):
    """A small preview of the segmentation's probability map."""
    return Response(content=ops.thumbnail(clinic, session, who, segmentation_id), media_type="image/png")


@router.get(
    "/segmentations/{segmentation_id}/mask.png",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "headers": {"X-MedSeg-Threshold": {"description": "the threshold of this mask", "schema": {}}},
        }
    },
)
def mask(
    segmentation_id: str,
    clinic: ClinicDep,
    who: MaskCaller,
    session: SessionDep,
    threshold: float | None = None,
):
    """The stored mask (0/255 PNG at the image's size) at `threshold` (0.2 … 0.8), else at the threshold the
    doctor saved, else at the organ's default; the header X-MedSeg-Threshold says which one it is."""
    used, png = ops.mask(clinic, session, who, segmentation_id, threshold)
    return Response(content=png, media_type="image/png", headers={"X-MedSeg-Threshold": f"{used:.1f}"})


@router.get("/patients/{patient_id}/trend", response_model=TrendPublic)
def trend(
    patient_id: PatientId,
    clinic: ClinicDep,
    who: TrendCaller,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
) -> TrendPublic:
    """The patient's segmented area over time (mm² when the images carried pixel spacing, else pixels)."""
    return ops.trend(clinic, session, who, patient_id, organ)
