"""Studies over HTTP: submit a DICOM series or a NIfTI volume (POST /api/v1/studies → 202; multipart with the
files, or JSON naming a series of the configured PACS), follow the job, fetch the mask (NIfTI), the DICOM SEG
and the image, cancel, save the threshold."""

from __future__ import annotations

import weakref
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.routing import APIRoute

from common.errors import PayloadTooLarge
from gateway.api.deps import AuthenticateFirst, ClinicDep, SessionDep, caller
from gateway.resources.shared import DEFAULT_LIST, MAX_LIST
from gateway.resources.studies import service
from gateway.resources.studies.schemas import StudyChoiceRequest, StudyFromPacs, StudyList, StudyPublic
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

# One of 0.2, 0.3 … 0.8, checked by the service: 400 invalid_threshold on both edges (as a segmentation's).
Threshold = Annotated[
    float | None, Query(description="one of 0.2, 0.3 … 0.8; else the saved one, else the organ's default")
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


def submit_from_pacs(
    response: Response, body: StudyFromPacs, clinic: ClinicDep, session: SessionDep, who: SubmitCaller
) -> StudyPublic:
    """The JSON form of POST /studies: the gateway fetches the series from the PACS (WADO-RS) first."""
    out = service.submit_from_pacs(clinic, session, who, body)
    response.headers["Location"] = f"/api/v1/studies/{out.id}"
    return out


class FilesOrPacs(AuthenticateFirst):
    """POST /studies takes two bodies: multipart with the files (the route's own endpoint, `submit`) or JSON
    naming a PACS series (`submit_from_pacs`, a route of its own under the same path, not registered: its
    body schema, the same dependencies and answer). The content type picks one before any body is read.
    The JSON route is built once per app at its first request, with that app's dependency overrides (an
    included route's own provider is not the app's in FastAPI ≥ 0.165)."""

    def get_route_handler(self):
        files = super().get_route_handler()
        pacs_handlers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # app → handler

        def pacs_handler(app):
            if app not in pacs_handlers:
                pacs_handlers[app] = APIRoute(
                    self.path,
                    submit_from_pacs,
                    methods=["POST"],
                    status_code=202,
                    response_model=StudyPublic,
                    dependency_overrides_provider=app,
                ).get_route_handler()
            return pacs_handlers[app]

        async def by_content_type(request: Request):
            kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind == "application/json":
                return await pacs_handler(request.app)(request)
            return await files(request)

        return by_content_type


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


def inline_schema(model) -> dict:
    """The model's JSON schema with its nested models written in place (no $defs for the document to miss)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _headers(threshold: float, filename: str) -> dict[str, str]:
    return {
        "X-MedSeg-Threshold": f"{threshold:.1f}",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }


FROM_PACS_SCHEMA = inline_schema(StudyFromPacs)
router.add_api_route(
    "/studies",
    submit,
    methods=["POST"],
    status_code=202,
    response_model=StudyPublic,
    route_class_override=FilesOrPacs,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": FROM_PACS_SCHEMA}}}},
)
