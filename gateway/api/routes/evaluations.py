from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from gateway.api.clinic_deps import ClinicDep, EvaluationReader, EvaluationRunner
from gateway.api.deps import SessionDep
from gateway.api.uploads import read_upload
from gateway.errors import InvalidInput, NotFound
from gateway.models import EvaluationCase
from gateway.schemas import RowId
from gateway.schemas_clinic import (
    ComparisonPublic,
    EvaluationCasePublic,
    EvaluationDetail,
    EvaluationsPublic,
    EvaluationSummary,
    PairedCase,
)
from gateway.service import evaluations

router = APIRouter(prefix="/evaluations", tags=["evaluations"])


def _detail(session, row) -> EvaluationDetail:
    return EvaluationDetail(
        **EvaluationSummary.of(row).model_dump(),
        cases=[
            EvaluationCasePublic(
                id=c.id,
                name=c.name,
                dice=c.dice,
                iou=c.iou,
                hd95=c.hd95,
                dice_at=c.dice_at,
                width=c.width,
                height=c.height,
                predicted_px=c.predicted_px,
                label_px=c.label_px,
                overlay_url=f"/api/v1/evaluations/{row.id}/cases/{c.id}/overlay.png",
            )
            for c in evaluations.cases_of(session, row)
        ],
    )


@router.post("", response_model=EvaluationDetail, status_code=status.HTTP_201_CREATED)
def run_evaluation(
    clinic: ClinicDep,
    who: EvaluationRunner,
    session: SessionDep,
    organ: Annotated[str, Form(max_length=200)],
    version: Annotated[str | None, Form(max_length=64)] = None,
    dataset_id: Annotated[str | None, Form(max_length=64)] = None,
    images: Annotated[list[UploadFile] | None, File(description="images (or give dataset_id)")] = None,
    labels: Annotated[list[UploadFile] | None, File(description="one label per image, by file name")] = None,
) -> EvaluationDetail:
    """Test a model version (default: the current one) on uploaded labelled images or a dataset; kept."""
    if dataset_id and (images or labels):
        raise InvalidInput("send either images with labels or a dataset_id, not both", code="ambiguous_input")
    if dataset_id:
        row = clinic.evaluator.evaluate_dataset(session, who, organ, version or None, dataset_id)
    else:
        limit = clinic.dataplane.max_upload_bytes
        row = clinic.evaluator.evaluate_uploads(
            session,
            who,
            organ,
            version or None,
            [read_upload(f, limit) for f in images or []],
            [read_upload(f, limit) for f in labels or []],
        )
    return _detail(session, row)


@router.get("", response_model=EvaluationsPublic)
def list_evaluations(
    _who: EvaluationReader,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> EvaluationsPublic:
    """Stored evaluations, newest first, filterable by organ and version."""
    rows = evaluations.list_evaluations(session, organ, version, limit)
    return EvaluationsPublic(evaluations=[EvaluationSummary.of(r) for r in rows])


@router.get("/compare", response_model=ComparisonPublic)
def compare(
    _who: EvaluationReader,
    session: SessionDep,
    a: Annotated[str, Query(max_length=64)],
    b: Annotated[str, Query(max_length=64)],
) -> ComparisonPublic:
    """Paired comparison of two evaluations on their common cases: per-case wins/losses of `a`."""
    out = evaluations.compare(session, a, b)
    return ComparisonPublic(
        a=EvaluationSummary.of(out["a"]),
        b=EvaluationSummary.of(out["b"]),
        same_dataset=out["same_dataset"],
        wins=out["wins"],
        losses=out["losses"],
        ties=out["ties"],
        mean_difference=out["mean_difference"],
        cases=[PairedCase(**c) for c in out["cases"]],
        only_in_a=out["only_in_a"],
        only_in_b=out["only_in_b"],
    )


@router.get("/{evaluation_id}", response_model=EvaluationDetail)
def show_evaluation(evaluation_id: str, _who: EvaluationReader, session: SessionDep) -> EvaluationDetail:
    """One evaluation with its cases (Dice, IoU, HD95, Dice per threshold, overlay link)."""
    return _detail(session, evaluations.get_evaluation(session, evaluation_id))


@router.get(
    "/{evaluation_id}/cases/{case_id}/overlay.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def overlay(
    evaluation_id: str, case_id: RowId, clinic: ClinicDep, _who: EvaluationReader, session: SessionDep
):
    """The case's overlay: image | label | prediction | differences."""
    row = evaluations.get_evaluation(session, evaluation_id)
    case = session.get(EvaluationCase, case_id)
    if case is None or case.evaluation_id != row.id or not case.overlay_key:
        raise NotFound(f"no case {case_id} in evaluation {evaluation_id}", code="unknown_case")
    data = clinic.dataplane.store.get_bytes(clinic.dataplane.results_bucket, case.overlay_key)
    return Response(content=data, media_type="image/png")
