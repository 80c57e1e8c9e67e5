"""Kept evaluations, for both edges: each edge parses its transport's input and calls these, which call the
service layer (gateway/service/evaluations.py) and answer the public shapes of schemas.py.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.errors import InvalidInput, NotFound
from gateway import tenancy
from gateway.access import DATASET_READ
from gateway.models import Dataset, EvaluationCase
from gateway.principal import Principal
from gateway.resources.evaluations.schemas import (
    ComparisonPublic,
    EvaluationCasePublic,
    EvaluationDetail,
    EvaluationJobPublic,
    EvaluationsPublic,
    EvaluationSummary,
    PairedCase,
)
from gateway.resources.shared import list_limit
from gateway.service import evaluations
from gateway.service.clinic import Clinic
from gateway.service.dataplane import Upload


def _evaluation_detail(session: Session, row) -> EvaluationDetail:
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
                hd95_mm=c.hd95_mm,
                pixel_spacing_row_mm=c.pixel_spacing_row_mm,
                pixel_spacing_col_mm=c.pixel_spacing_col_mm,
                per_label=c.per_label,
            )
            for c in evaluations.cases_of(session, row)
        ],
    )


def run_evaluation(
    clinic: Clinic,
    session: Session,
    who: Principal,
    organ: str,
    version: str | None,
    dataset_id: str | None,
    images: list[Upload],
    labels: list[Upload],
) -> EvaluationDetail:
    """Test a version (default: the current one) on uploaded labelled images or on a stored dataset."""
    if _readable_dataset(session, who, dataset_id, images, labels) is not None:
        row = clinic.evaluator.evaluate_dataset(session, who, organ, version or None, dataset_id)
    else:
        row = clinic.evaluator.evaluate_uploads(session, who, organ, version or None, images, labels)
    return _evaluation_detail(session, row)


def submit_evaluation(
    clinic: Clinic,
    session: Session,
    who: Principal,
    organ: str,
    version: str | None,
    dataset_id: str | None,
    images: list[Upload],
    labels: list[Upload],
) -> EvaluationJobPublic:
    """The same evaluation as a background job (gateway.service.evaluation_jobs): queued, answered at once."""
    dataset = _readable_dataset(session, who, dataset_id, images, labels)
    job = clinic.evaluation_jobs.submit(session, who, organ, version or None, dataset, images, labels)
    return EvaluationJobPublic.of(job)


def show_job(clinic: Clinic, session: Session, who: Principal, job_id: str) -> EvaluationJobPublic:
    return EvaluationJobPublic.of(clinic.evaluation_jobs.get(session, who, job_id))


def cancel_job(clinic: Clinic, session: Session, who: Principal, job_id: str) -> EvaluationJobPublic:
    return EvaluationJobPublic.of(clinic.evaluation_jobs.cancel(session, who, job_id))


def _readable_dataset(
    session: Session, who: Principal, dataset_id: str | None, images, labels
) -> Dataset | None:
    """The dataset to evaluate on, if one was named: one the caller may see (access.DATASET_READ), else 404
    as for none. Naming one and uploading images as well is a 400."""
    if dataset_id and (images or labels):
        raise InvalidInput("send either images with labels or a dataset_id, not both", code="ambiguous_input")
    if not dataset_id:
        return None
    return tenancy.get(
        session, who, DATASET_READ, dataset_id, NotFound(f"no dataset {dataset_id!r}", code="unknown_dataset")
    )


def list_evaluations(
    session: Session, who: Principal, organ: str | None, version: str | None, limit: int | None
) -> EvaluationsPublic:
    rows = evaluations.list_evaluations(session, who, organ, version, list_limit(limit))
    return EvaluationsPublic(evaluations=[EvaluationSummary.of(r) for r in rows])


def show_evaluation(session: Session, who: Principal, evaluation_id: str) -> EvaluationDetail:
    return _evaluation_detail(session, evaluations.get_evaluation(session, who, evaluation_id))


def compare(session: Session, who: Principal, a: str, b: str) -> ComparisonPublic:
    out = evaluations.compare(session, who, a, b)
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


def overlay(clinic: Clinic, session: Session, who: Principal, evaluation_id: str, case_id: int) -> bytes:
    """The case's overlay PNG: image | label | prediction | differences."""
    row = evaluations.get_evaluation(session, who, evaluation_id)
    case = session.get(EvaluationCase, case_id)
    if case is None or case.evaluation_id != row.id or not case.overlay_key:
        raise NotFound(f"no case {case_id} in evaluation {evaluation_id}", code="unknown_case")
    return clinic.dataplane.store.get_bytes(clinic.dataplane.results_bucket, case.overlay_key)
