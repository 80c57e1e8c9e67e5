"""Evaluations over HTTP: kept evaluations (/api/v1/evaluations) and evaluating at once (/api/v1/evaluate)."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from gateway.api.deps import AuthenticateFirst, ClinicDep, DataPlaneDep, SessionDep, caller
from gateway.api.uploads import read_upload
from gateway.resources.evaluations import service
from gateway.resources.evaluations.schemas import (
    ComparisonPublic,
    EvaluationDetail,
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


@router.post("", response_model=EvaluationDetail, status_code=status.HTTP_201_CREATED)
def run_evaluation(
    clinic: ClinicDep,
    who: RunEvaluationCaller,
    session: SessionDep,
    organ: Annotated[str, Form(max_length=200)],
    version: Annotated[str | None, Form(max_length=64)] = None,
    dataset_id: Annotated[str | None, Form(max_length=64)] = None,
    images: Annotated[list[UploadFile] | None, File(description="images (or give dataset_id)")] = None,
    labels: Annotated[list[UploadFile] | None, File(description="one label per image, by file name")] = None,
) -> EvaluationDetail:
    """Test a model version (default: the current one) on uploaded labelled images or a dataset; kept."""
    limit = clinic.dataplane.max_upload_bytes
    return service.run_evaluation(
        clinic,
        session,
        who,
        organ,
        version,
        dataset_id,
        [read_upload(f, limit) for f in images or []],
        [read_upload(f, limit) for f in labels or []],
    )


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
