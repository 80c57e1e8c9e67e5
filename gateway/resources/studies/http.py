"""Studies over HTTP: submit a DICOM series or a NIfTI volume (POST /api/v1/studies → 202), follow the job,
fetch the mask (NIfTI), the DICOM SEG and the image, cancel, save the threshold."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from common.errors import PayloadTooLarge
from gateway.api.deps import AuthenticateFirst, ClinicDep, SessionDep, caller
from gateway.resources.shared import DEFAULT_LIST, MAX_LIST
from gateway.resources.studies import service
from gateway.resources.studies.schemas import StudyChoiceRequest, StudyList, StudyPublic
from gateway.service.studies import Upload

router = APIRouter(tags=["studies"], route_class=AuthenticateFirst)

SubmitCaller = caller("studies.submit")
ListCaller = caller("studies.list")
ShowCaller = caller("studies.show")
MaskCaller = caller("studies.mask")
SegCaller = caller("studies.seg")
ImageCaller = caller("studies.image")
CancelCaller = caller("studies.cancel")
ChooseCaller = caller("studies.choose_threshold")

Threshold = Annotated[
    float | None, Query(ge=0.2, le=0.8, description="0.2 … 0.8; else the saved one, else the default")
]
NIFTI = "application/gzip"
THRESHOLD_HEADER = {"X-MedSeg-Threshold": {"description": "the threshold of this result", "schema": {}}}


def _read_all(files: list[UploadFile], limit: int) -> list[Upload]:
    """Every part's bytes, refusing more than `limit` in all without reading further."""
    out, total = [], 0
    for n, part in enumerate(files):
        name = part.filename or f"file-{n}"
        data = part.file.read(limit - total + 1)
        total += len(data)
        if total > limit:
            raise PayloadTooLarge(
                f"the study's files are larger than the limit of {limit} bytes (at {name!r})",
                code="study_too_large",
            )
        out.append(Upload(name, data))
    return out


@router.post("/studies", status_code=202, response_model=StudyPublic)
def submit(
    response: Response,
    clinic: ClinicDep,
    session: SessionDep,
    who: SubmitCaller,
    organ: Annotated[str, Form(max_length=200)],
    files: Annotated[
        list[UploadFile],
        File(description="one NIfTI (.nii/.nii.gz), the DICOM files of one series, or one zip"),
    ],
    patient_id: Annotated[str | None, Form(max_length=128)] = None,
    study_date: Annotated[
        str | None, Form(max_length=10, description="YYYY-MM-DD; a DICOM StudyDate wins")
    ] = None,
) -> StudyPublic:
    """Queue a study for segmentation; follow it at the Location answered (GET /api/v1/studies/{id})."""
    uploads = _read_all(files, clinic.settings.study_max_bytes)
    out = service.submit(clinic, session, who, organ, uploads, patient_id or None, study_date or None)
    response.headers["Location"] = f"/api/v1/studies/{out.id}"
    return out


@router.get("/studies", response_model=StudyList)
def list_studies(
    clinic: ClinicDep,
    who: ListCaller,
    session: SessionDep,
    patient_id: Annotated[str | None, Query(max_length=128)] = None,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = DEFAULT_LIST,
) -> StudyList:
    """The caller's studies (newest first), filterable by patient and organ."""
    return service.list_studies(clinic, session, who, patient_id, organ, limit)


@router.get("/studies/{study_id}", response_model=StudyPublic)
def show(study_id: str, clinic: ClinicDep, who: ShowCaller, session: SessionDep) -> StudyPublic:
    """The study: status, progress, and once done its organ volumes in mL at 0.2 … 0.8."""
    return service.show(clinic, session, who, study_id)


@router.get(
    "/studies/{study_id}/mask.nii.gz",
    response_class=Response,
    responses={200: {"content": {NIFTI: {}}, "headers": THRESHOLD_HEADER}},
)
def mask(study_id: str, clinic: ClinicDep, who: MaskCaller, session: SessionDep, threshold: Threshold = None):
    """The label volume (uint8: 0 background, i for labels[i-1]) on exactly the input's grid."""
    used, blob = service.mask(clinic, session, who, study_id, threshold)
    return Response(content=blob, media_type=NIFTI, headers=_headers(used, f"study-{study_id}-mask.nii.gz"))


@router.get(
    "/studies/{study_id}/seg.dcm",
    response_class=Response,
    responses={200: {"content": {"application/dicom": {}}, "headers": THRESHOLD_HEADER}},
)
def seg(study_id: str, clinic: ClinicDep, who: SegCaller, session: SessionDep, threshold: Threshold = None):
    """A DICOM Segmentation object referencing the source series (DICOM input only: 409 for NIfTI)."""
    used, blob = service.seg(clinic, session, who, study_id, threshold)
    return Response(
        content=blob, media_type="application/dicom", headers=_headers(used, f"study-{study_id}-seg.dcm")
    )


@router.get(
    "/studies/{study_id}/image.nii.gz", response_class=Response, responses={200: {"content": {NIFTI: {}}}}
)
def image(study_id: str, clinic: ClinicDep, who: ImageCaller, session: SessionDep):
    """The study's image as NIfTI on its input grid (HU for CT): the viewer's background."""
    blob = service.image(clinic, session, who, study_id)
    return Response(content=blob, media_type=NIFTI)


@router.post("/studies/{study_id}/cancel", response_model=StudyPublic)
def cancel(study_id: str, clinic: ClinicDep, who: CancelCaller, session: SessionDep) -> StudyPublic:
    """Stop a queued or running study (409 when it has already finished)."""
    return service.cancel(clinic, session, who, study_id)


@router.post("/studies/{study_id}/choice", response_model=StudyPublic)
def choose_threshold(
    study_id: str, body: StudyChoiceRequest, clinic: ClinicDep, who: ChooseCaller, session: SessionDep
) -> StudyPublic:
    """Save the threshold the doctor chose for this study (its trend point uses it), with an optional note."""
    return service.choose_threshold(clinic, session, who, study_id, body.threshold, body.note)


def _headers(threshold: float, filename: str) -> dict[str, str]:
    return {
        "X-MedSeg-Threshold": f"{threshold:.1f}",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
