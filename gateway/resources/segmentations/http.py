"""Segmentations over HTTP: the history (list, the doctor's threshold, thumbnail, mask, a patient's trend)
and segmenting an image (POST /api/v1/segment)."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile

from gateway.api.deps import AuthenticateFirst, ClinicDep, DataPlaneDep, SessionDep, caller
from gateway.api.uploads import read_upload
from gateway.resources.segmentations import service
from gateway.resources.segmentations.schemas import (
    ChoiceRequest,
    HistoryItem,
    HistoryPublic,
    NucleiPublic,
    SegmentationPublic,
    SegmentRecordPublic,
    TrendPublic,
)
from gateway.resources.shared import DEFAULT_LIST, MAX_LIST, b64
from gateway.service import history, images, views
from services.imaging import NPY_CONTENT_TYPE

router = APIRouter(tags=["history"])

ListSegmentationsCaller = caller("segmentations.list")
ChooseThresholdCaller = caller("segmentations.choose_threshold")
ThumbnailCaller = caller("segmentations.thumbnail")
MaskCaller = caller("segmentations.mask")
ImageCaller = caller("segmentations.image")
ValuesCaller = caller("segmentations.values")
NucleiCaller = caller("segmentations.nuclei")
TrendCaller = caller("segmentations.trend")

PatientId = Annotated[str, Path(max_length=128)]


@router.get("/segmentations", response_model=HistoryPublic)
def list_segmentations(
    clinic: ClinicDep,
    who: ListSegmentationsCaller,
    session: SessionDep,
    patient_id: Annotated[str | None, Query(max_length=128)] = None,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = DEFAULT_LIST,
) -> HistoryPublic:
    """The caller's recent segmentations (newest first), filterable by patient and organ."""
    return service.list_segmentations(clinic, session, who, patient_id, organ, limit)


@router.post("/segmentations/{segmentation_id}/choice", response_model=HistoryItem)
def choose_threshold(
    segmentation_id: str,
    body: ChoiceRequest,
    clinic: ClinicDep,
    who: ChooseThresholdCaller,
    session: SessionDep,
) -> HistoryItem:
    """Save the threshold the doctor chose for this segmentation, with an optional note."""
    return service.choose_threshold(clinic, session, who, segmentation_id, body.threshold, body.note)


@router.get(
    "/segmentations/{segmentation_id}/thumbnail.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def thumbnail(segmentation_id: str, clinic: ClinicDep, who: ThumbnailCaller, session: SessionDep):
    """A small preview of the segmentation's probability map."""
    return Response(content=service.thumbnail(clinic, session, who, segmentation_id), media_type="image/png")


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
    """The mask (0/255 PNG at the image's size, made from the stored probability map: the PNG the segment
    answer carried) at `threshold` (0.2 … 0.8), else at the threshold the doctor saved, else at the organ's
    default; the header X-MedSeg-Threshold says which one it is."""
    used, png = service.mask(clinic, session, who, segmentation_id, threshold)
    return Response(content=png, media_type="image/png", headers={"X-MedSeg-Threshold": f"{used:.1f}"})


# The stored view's headers (gateway/service/views.py), which the viewer reads.
VIEW_HEADERS = {
    "X-MedSeg-Values": {
        "description": "the unit of values.npy (HU for CT); absent: the image has none",
        "schema": {},
    },
    "X-MedSeg-Window": {"description": "the window the PNG is drawn with: center width", "schema": {}},
    "X-MedSeg-Invert": {"description": "1: MONOCHROME1, high values shown dark", "schema": {}},
    "X-MedSeg-Orientation": {
        "description": "patient directions of the right and bottom edges, e.g. L P",
        "schema": {},
    },
}


@router.get(
    "/segmentations/{segmentation_id}/image.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "headers": VIEW_HEADERS}},
)
def image(segmentation_id: str, clinic: ClinicDep, who: ImageCaller, session: SessionDep):
    """The image the segmentation was made from, as the model saw it (8-bit; a DICOM windowed with the organ's
    window); the headers say whether values.npy has its modality values for window/level."""
    png, headers = service.view_member(clinic, session, who, segmentation_id, views.IMAGE_MEMBER)
    return Response(content=png, media_type="image/png", headers=headers)


@router.get(
    "/segmentations/{segmentation_id}/values.npy",
    response_class=Response,
    responses={200: {"content": {NPY_CONTENT_TYPE: {}}, "headers": VIEW_HEADERS}},
)
def values(segmentation_id: str, clinic: ClinicDep, who: ValuesCaller, session: SessionDep):
    """A grey DICOM's pixels in the modality's units (Hounsfield for CT), H×W int16 or float32 .npy, for
    window/level in the viewer; 404 `no_values` for any other image."""
    npy, headers = service.view_member(clinic, session, who, segmentation_id, views.VALUES_MEMBER)
    return Response(content=npy, media_type=NPY_CONTENT_TYPE, headers=headers)


@router.get("/segmentations/{segmentation_id}/nuclei", response_model=NucleiPublic)
def nuclei(
    segmentation_id: str,
    clinic: ClinicDep,
    who: NucleiCaller,
    session: SessionDep,
    threshold: float | None = None,
) -> NucleiPublic:
    """The nuclei in a histology result's mask at `threshold` (default as mask.png): touching nuclei
    split by a watershed of the distance transform; each one's area in px, and µm² with a known spacing."""
    return service.nuclei(clinic, session, who, segmentation_id, threshold)


@router.get("/patients/{patient_id}/trend", response_model=TrendPublic)
def trend(
    patient_id: PatientId,
    clinic: ClinicDep,
    who: TrendCaller,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
) -> TrendPublic:
    """The patient's segmented area over time (mm² when the images carried pixel spacing, else pixels)."""
    return service.trend(clinic, session, who, patient_id, organ)


# --- segmenting an image (recorded in the history above) ----------------------------------------------------
segment_router = APIRouter(tags=["segment"], route_class=AuthenticateFirst)

SegmentCaller = caller("segment")


# exclude_unset: `image_png` is in the answer only when asked for (the contract's shape otherwise)
@segment_router.post("/segment", response_model=SegmentRecordPublic, response_model_exclude_unset=True)
def segment(
    dataplane: DataPlaneDep,
    clinic: ClinicDep,
    session: SessionDep,
    who: SegmentCaller,
    organ: Annotated[str, Form(max_length=200)],
    file: Annotated[UploadFile, File(description="PNG, JPEG, TIFF or DICOM")],
    patient_id: Annotated[str | None, Form(max_length=128)] = None,
    include_image: Annotated[
        bool, Form(description="also answer `image_png`: the image as the model saw it, DICOM windowed")
    ] = False,
    keep_image: Annotated[
        bool,
        Form(
            description="keep the image with the result for the viewer: GET /segmentations/{id}/image.png "
            "(and values.npy, a grey DICOM's modality values); a second object beside the map"
        ),
    ] = False,
    masks: Annotated[
        str | None,
        Form(
            max_length=200,
            description="the masks the answer carries: all (the default), none, or thresholds of the grid "
            "separated by commas (e.g. 0.5,0.7); any other value is a 400 invalid_masks",
        ),
    ] = None,
) -> SegmentRecordPublic:
    """Segment one image: probability map and masks at 0.2 … 0.8 (or the ones `masks` asks for), at the
    input's size; recorded in history (every mask can be fetched later from its mask.png)."""
    upload = read_upload(file, dataplane.max_upload_bytes)
    record = history.segment(
        session,
        dataplane,
        who,
        organ,
        upload.data,
        upload.filename,
        patient_id or None,
        doubtful_below=clinic.settings.stability_doubtful_below,
        wanted_masks=masks,
        keep_image=keep_image,
    )
    answer = SegmentRecordPublic(
        **SegmentationPublic.of(record.result).model_dump(),
        stability=record.stability,
        doubtful=record.doubtful,
        suggested_threshold=record.suggested_threshold,
    )
    if include_image:
        window = dataplane.registry.get(organ).spec.window
        preview = images.preview_png(
            upload.data, upload.filename, max_pixels=dataplane.max_image_pixels, window=window
        )
        answer.image_png = b64(preview)  # assigned: set, so in the answer (exclude_unset)
    return answer
