"""Evaluations over HTTP: kept evaluations (/api/v1/evaluations) and evaluating at once (/api/v1/evaluate)."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile, status
from fastapi.responses import JSONResponse

from gateway.api.deps import AuthenticateFirst, ClinicDep, DataPlaneDep, SessionDep, caller
from gateway.api.uploads import read_upload
from gateway.resources.evaluations import service
from gateway.resources.evaluations.schemas import (
    ComparisonPublic,
    EvaluationDetail,
    EvaluationJobPublic,
    EvaluationPublic,
    EvaluationsPublic,
)
from gateway.resources.shared import DEFAULT_LIST, MAX_LIST, RowId

router = APIRouter(prefix="/evaluations", tags=["evaluations"], route_class=AuthenticateFirst)

RunEvaluationCaller = caller("evaluations.run")
ListEvaluationsCaller = caller("evaluations.list")
CompareCaller = caller("evaluations.compare")
ShowEvaluationCaller = caller("evaluations.show")
OverlayCaller = caller("evaluations.overlay")


@router.post(
    "",
    response_model=EvaluationDetail,
    status_code=status.HTTP_201_CREATED,
    responses={
        202: {
            "model": EvaluationJobPublic,
            "description": "with `Prefer: respond-async`: queued; follow it at the Location answered",
        }
    },
)
def run_evaluation(
    clinic: ClinicDep,
    who: RunEvaluationCaller,
    session: SessionDep,
    organ: Annotated[str, Form(max_length=200)],
    version: Annotated[str | None, Form(max_length=64)] = None,
    dataset_id: Annotated[str | None, Form(max_length=64)] = None,
    images: Annotated[list[UploadFile] | None, File(description="images (or give dataset_id)")] = None,
    labels: Annotated[list[UploadFile] | None, File(description="one label per image, by file name")] = None,
    prefer: Annotated[
        str | None,
        Header(
            max_length=200,
            description="`respond-async` (RFC 7240): answer 202 at once and evaluate in the background",
        ),
    ] = None,
) -> EvaluationDetail | JSONResponse:
    """Test a model version (default: the current one) on uploaded labelled images or a dataset; kept.
    A large set takes as long as its cases: send `Prefer: respond-async` to get 202 and the job to poll
    (GET /api/v1/evaluation-jobs/{id}) instead of holding the request open."""
    limit = clinic.dataplane.max_upload_bytes
    args = (
        clinic,
        session,
        who,
        organ,
        version,
        dataset_id,
        [read_upload(f, limit) for f in images or []],
        [read_upload(f, limit) for f in labels or []],
    )
    if not _respond_async(prefer):
        return service.run_evaluation(*args)
    job = service.submit_evaluation(*args)
    return JSONResponse(  # not the route's response model (the evaluation): the job, as documented above
        job.model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": job.url, "Preference-Applied": "respond-async"},
    )


def _respond_async(prefer: str | None) -> bool:
    """Whether the Prefer header (RFC 7240: comma-separated preferences, each maybe with parameters) asks
    for respond-async."""
    return any(part.split(";", 1)[0].strip().lower() == "respond-async" for part in (prefer or "").split(","))


@router.get("", response_model=EvaluationsPublic)
def list_evaluations(
    who: ListEvaluationsCaller,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = DEFAULT_LIST,
) -> EvaluationsPublic:
    """Stored evaluations, newest first, filterable by organ and version."""
    return service.list_evaluations(session, who, organ, version, limit)


@router.get("/compare", response_model=ComparisonPublic)
def compare(
    who: CompareCaller,
    session: SessionDep,
    a: Annotated[str, Query(max_length=64)],
    b: Annotated[str, Query(max_length=64)],
) -> ComparisonPublic:
    """Paired comparison of two evaluations on their common cases: per-case wins/losses of `a`."""
    return service.compare(session, who, a, b)


@router.get("/{evaluation_id}", response_model=EvaluationDetail)
def show_evaluation(evaluation_id: str, who: ShowEvaluationCaller, session: SessionDep) -> EvaluationDetail:
    """One evaluation with its cases (Dice, IoU, HD95, Dice per threshold, overlay link)."""
    return service.show_evaluation(session, who, evaluation_id)


@router.get(
    "/{evaluation_id}/cases/{case_id}/overlay.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def overlay(evaluation_id: str, case_id: RowId, clinic: ClinicDep, who: OverlayCaller, session: SessionDep):
    """The case's overlay: image | label | prediction | differences."""
    png = service.overlay(clinic, session, who, evaluation_id, case_id)
    return Response(content=png, media_type="image/png")


# --- evaluations run in the background -------------------------------------------------------------------
jobs_router = APIRouter(prefix="/evaluation-jobs", tags=["evaluations"], route_class=AuthenticateFirst)

ShowJobCaller = caller("evaluations.jobs.show")
CancelJobCaller = caller("evaluations.jobs.cancel")


@jobs_router.get("/{job_id}", response_model=EvaluationJobPublic)
def show_job(job_id: str, clinic: ClinicDep, who: ShowJobCaller, session: SessionDep) -> EvaluationJobPublic:
    """An evaluation submitted with `Prefer: respond-async`: queued, running (cases done of all), done (the
    kept evaluation's id) or failed (the error the request would have answered)."""
    return service.show_job(clinic, session, who, job_id)


@jobs_router.post("/{job_id}/cancel", response_model=EvaluationJobPublic)
def cancel_job(
    job_id: str, clinic: ClinicDep, who: CancelJobCaller, session: SessionDep
) -> EvaluationJobPublic:
    """Stop an evaluation job: a queued one fails at once, a running one after the case in hand."""
    return service.cancel_job(clinic, session, who, job_id)


# --- evaluating at once, nothing kept -----------------------------------------------------------------------
evaluate_router = APIRouter(tags=["evaluate"], route_class=AuthenticateFirst)

EvaluateCaller = caller("evaluate")


@evaluate_router.post("/evaluate", response_model=EvaluationPublic)
def evaluate(
    dataplane: DataPlaneDep,
    _clinic: ClinicDep,  # serves the registry's default version
    _who: EvaluateCaller,
    organ: Annotated[str, Form(max_length=200)],
    images: Annotated[list[UploadFile], File(description="images to segment")],
    labels: Annotated[list[UploadFile], File(description="one label mask per image, matched by file name")],
) -> EvaluationPublic:
    """Per-image Dice and IoU, mean Dice, Dice per threshold."""
    limit = dataplane.max_upload_bytes
    result = dataplane.evaluate(
        organ, [read_upload(f, limit) for f in images], [read_upload(f, limit) for f in labels]
    )
    return EvaluationPublic.of(result)
