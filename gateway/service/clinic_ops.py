"""The clinical loop's operations, once, for both edges: the HTTP routes and the gRPC servicers
(gateway/resources/<resource>/http.py, grpc.py) parse their transport's input, then call these, which call
the service layer and answer the public shapes of gateway/resources/<resource>/schemas.py (the gRPC
messages carry the same fields).

Who may call what is declared once for both edges, in gateway/access.py.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import InvalidInput, NotFound
from gateway.models import EvaluationCase, Feedback, ModelVersion
from gateway.principal import Principal
from gateway.resources.evaluations.schemas import (
    ComparisonPublic,
    EvaluationCasePublic,
    EvaluationDetail,
    EvaluationsPublic,
    EvaluationSummary,
    PairedCase,
)
from gateway.resources.feedback.schemas import (
    FeedbackCreate,
    FeedbackListPublic,
    FeedbackPublic,
    FeedbackUpdate,
    ReplyPublic,
)
from gateway.resources.models.schemas import (
    ModelEventPublic,
    ModelVersionCreate,
    ModelVersionDetail,
    ModelVersionPublic,
    ModelVersionsPublic,
    PromoteRequest,
    PromotionPublic,
    ReferenceSetPublic,
    SuggestedThresholdPublic,
)
from gateway.resources.segmentations.schemas import HistoryItem, HistoryPublic, TrendPoint, TrendPublic
from gateway.resources.training.schemas import TrainingJobCreate, TrainingJobPublic, TrainingJobsPublic
from gateway.service import evaluations, feedback, history, model_registry
from gateway.service.clinic import Clinic
from gateway.service.dataplane import Upload
from gateway.service.masks import nearest_threshold, unpack_mask
from gateway.service.training_jobs import JobRequest

DEFAULT_LIST, MAX_LIST = 50, 200


def list_limit(limit: int | None) -> int:
    """A list's length: `DEFAULT_LIST` when not given, else 1 … `MAX_LIST`."""
    if limit is None:
        return DEFAULT_LIST
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST}, not {limit}", code="invalid_input")
    return limit


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a UUID, not {value!r}", code="invalid_input") from None


# --- model versions ---------------------------------------------------------------------------------------
def _names(session: Session, organ: str) -> dict[int, str]:
    return dict(
        session.execute(
            select(ModelVersion.id, ModelVersion.version).where(ModelVersion.organ == organ)
        ).all()
    )


def _version_public(session: Session, row: ModelVersion) -> ModelVersionPublic:
    return ModelVersionPublic.of(row, _names(session, row.organ))


def _reference_public(row) -> ReferenceSetPublic:
    return ReferenceSetPublic(
        organ=row.organ,
        dataset_id=row.dataset_id,
        dataset_hash=row.dataset_hash,
        set_by=row.set_by,
        set_at=row.set_at,
    )


def list_versions(clinic: Clinic, session: Session, organ: str) -> ModelVersionsPublic:
    clinic.dataplane.registry.get(organ)
    rows = model_registry.list_versions(session, organ)
    names = _names(session, organ)
    default = next((r.version for r in rows if r.state == "default"), None)
    return ModelVersionsPublic(
        organ=organ, default_version=default, versions=[ModelVersionPublic.of(r, names) for r in rows]
    )


def record_version(
    clinic: Clinic, session: Session, who: Principal, organ: str, body: ModelVersionCreate
) -> ModelVersionPublic:
    clinic.dataplane.registry.get(organ)
    store = clinic.dataplane.store
    row = model_registry.record_version(
        session,
        who.actor,
        organ,
        model_registry.NewVersion(**body.model_dump()),
        store=store if body.mar_key else None,
        models_bucket=store.buckets.models,
    )
    clinic.promotions.serve_candidates(session, organ)
    return _version_public(session, row)


def show_version(clinic: Clinic, session: Session, organ: str, version: str) -> ModelVersionDetail:
    clinic.dataplane.registry.get(organ)
    row = model_registry.get_version(session, organ, version)
    return ModelVersionDetail(
        **_version_public(session, row).model_dump(),
        events=[
            ModelEventPublic(action=e.action, actor=e.actor, reason=e.reason, detail=e.detail, at=e.at)
            for e in model_registry.events(session, row)
        ],
        lineage=[v.version for v in model_registry.lineage(session, row)],
    )


def promote(
    clinic: Clinic, session: Session, who: Principal, organ: str, version: str, body: PromoteRequest
) -> PromotionPublic:
    clinic.dataplane.registry.get(organ)
    out = clinic.promotions.promote(session, who, organ, version, force=body.force, reason=body.reason)
    return PromotionPublic(
        version=_version_public(session, out.version),
        previous_version=out.previous.version if out.previous else None,
        forced=out.forced,
        dice_drop=out.dice_drop,
        candidate_evaluation=EvaluationSummary.of(out.candidate_evaluation)
        if out.candidate_evaluation
        else None,
        default_evaluation=EvaluationSummary.of(out.default_evaluation) if out.default_evaluation else None,
    )


def rollback(
    clinic: Clinic, session: Session, who: Principal, organ: str, reason: str | None
) -> ModelVersionPublic:
    clinic.dataplane.registry.get(organ)
    return _version_public(session, clinic.promotions.rollback(session, who, organ, reason))


def set_reference_set(
    clinic: Clinic, session: Session, who: Principal, organ: str, dataset_id: str
) -> ReferenceSetPublic:
    clinic.dataplane.registry.get(organ)
    return _reference_public(model_registry.set_reference_set(session, who, organ, dataset_id))


def show_reference_set(clinic: Clinic, session: Session, organ: str) -> ReferenceSetPublic:
    clinic.dataplane.registry.get(organ)
    return _reference_public(model_registry.get_reference_set(session, organ))


def suggested_threshold(
    clinic: Clinic, session: Session, organ: str, version: str | None
) -> SuggestedThresholdPublic:
    """For `version` (default: the organ's current one): learned from its evaluations and saved choices."""
    registry = clinic.dataplane.registry
    spec = registry.get(organ).spec
    if version:
        row = model_registry.get_version(session, organ, version)
        default = row.default_threshold or spec.default_threshold
    else:
        version, default = registry.model(organ).version, clinic.default_threshold(organ)
    return SuggestedThresholdPublic(
        organ=organ,
        version=version,
        default_threshold=default,
        suggested_threshold=history.suggested_threshold(session, organ, version, default),
    )


# --- evaluations --------------------------------------------------------------------------------------------
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
    if dataset_id and (images or labels):
        raise InvalidInput("send either images with labels or a dataset_id, not both", code="ambiguous_input")
    if dataset_id:
        row = clinic.evaluator.evaluate_dataset(session, who, organ, version or None, dataset_id)
    else:
        row = clinic.evaluator.evaluate_uploads(session, who, organ, version or None, images, labels)
    return _evaluation_detail(session, row)


def list_evaluations(
    session: Session, organ: str | None, version: str | None, limit: int | None
) -> EvaluationsPublic:
    rows = evaluations.list_evaluations(session, organ, version, list_limit(limit))
    return EvaluationsPublic(evaluations=[EvaluationSummary.of(r) for r in rows])


def show_evaluation(session: Session, evaluation_id: str) -> EvaluationDetail:
    return _evaluation_detail(session, evaluations.get_evaluation(session, evaluation_id))


def compare(session: Session, a: str, b: str) -> ComparisonPublic:
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


def overlay(clinic: Clinic, session: Session, evaluation_id: str, case_id: int) -> bytes:
    """The case's overlay PNG: image | label | prediction | differences."""
    row = evaluations.get_evaluation(session, evaluation_id)
    case = session.get(EvaluationCase, case_id)
    if case is None or case.evaluation_id != row.id or not case.overlay_key:
        raise NotFound(f"no case {case_id} in evaluation {evaluation_id}", code="unknown_case")
    return clinic.dataplane.store.get_bytes(clinic.dataplane.results_bucket, case.overlay_key)


# --- feedback -----------------------------------------------------------------------------------------------
def _feedback_public(
    session: Session, row: Feedback, model: ModelVersion | None = None, with_replies: bool = False
) -> FeedbackPublic:
    model = model or session.get(ModelVersion, row.model_version_id)
    return FeedbackPublic(
        id=row.id,
        organ=model.organ,
        model_version=model.version,
        author_user_id=row.author_user_id,
        body=row.body,
        status=row.status,
        evaluation_case_id=row.evaluation_case_id,
        segmentation_id=str(row.segmentation_id) if row.segmentation_id else None,
        threshold=row.threshold,
        addressed_by_version=feedback.version_of(session, row.addressed_by_version_id),
        created_at=row.created_at,
        updated_at=row.updated_at,
        replies=[
            ReplyPublic(id=r.id, author_user_id=r.author_user_id, body=r.body, created_at=r.created_at)
            for r in feedback.replies(session, row)
        ]
        if with_replies
        else [],
    )


def create_feedback(
    session: Session, who: Principal, organ: str, version: str, body: FeedbackCreate
) -> FeedbackPublic:
    row = feedback.create(
        session,
        who,
        organ,
        version,
        body.body,
        evaluation_case_id=body.evaluation_case_id,
        segmentation_id=body.segmentation_id,
        threshold=body.threshold,
    )
    return _feedback_public(session, row, with_replies=True)


def list_feedback(
    session: Session, organ: str | None, version: str | None, status: str | None
) -> FeedbackListPublic:
    rows = feedback.list_feedback(session, organ, version, status)
    return FeedbackListPublic(feedback=[_feedback_public(session, f, m) for f, m in rows])


def show_feedback(session: Session, feedback_id: int) -> FeedbackPublic:
    return _feedback_public(session, feedback.get(session, feedback_id), with_replies=True)


def reply(session: Session, who: Principal, feedback_id: int, body: str) -> FeedbackPublic:
    feedback.reply(session, who, feedback_id, body)
    return show_feedback(session, feedback_id)


def update_feedback(
    session: Session, who: Principal, feedback_id: int, body: FeedbackUpdate
) -> FeedbackPublic:
    row = feedback.update(
        session, who, feedback_id, status=body.status, addressed_by_version=body.addressed_by_version
    )
    return _feedback_public(session, row, with_replies=True)


# --- segmentation history -----------------------------------------------------------------------------------
def _history_item(clinic: Clinic, row) -> HistoryItem:
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


def list_segmentations(
    clinic: Clinic,
    session: Session,
    who: Principal,
    patient_id: str | None,
    organ: str | None,
    limit: int | None,
) -> HistoryPublic:
    rows = history.history(session, who, patient_id=patient_id, organ=organ, limit=list_limit(limit))
    return HistoryPublic(segmentations=[_history_item(clinic, r) for r in rows])


def choose_threshold(
    clinic: Clinic, session: Session, who: Principal, segmentation_id: str, threshold: float, note: str | None
) -> HistoryItem:
    row = history.choose_threshold(session, who, segmentation_id, threshold, note)
    return _history_item(clinic, row)


def thumbnail(clinic: Clinic, session: Session, who: Principal, segmentation_id: str) -> bytes:
    row = history.get_segmentation(session, who, segmentation_id)
    if not row.thumbnail_key:
        raise NotFound(f"segmentation {segmentation_id} has no thumbnail", code="no_thumbnail")
    return clinic.dataplane.store.get_bytes(clinic.dataplane.results_bucket, row.thumbnail_key)


def mask(
    clinic: Clinic, session: Session, who: Principal, segmentation_id: str, threshold: float | None
) -> tuple[float, bytes]:
    """(threshold, mask PNG) of a stored segmentation: at `threshold`, else at the one the doctor saved,
    else at the organ's default (the nearest on the grid)."""
    row = history.get_segmentation(session, who, segmentation_id)
    if threshold is None:
        threshold = row.chosen_threshold
    if threshold is None:
        threshold = nearest_threshold(clinic.default_threshold(row.organ))
    label, key = history.mask_key(row, threshold)
    store = clinic.dataplane.store
    return float(label), unpack_mask(key, store.get_bytes(clinic.dataplane.results_bucket, key), threshold)


def trend(
    clinic: Clinic, session: Session, who: Principal, patient_id: str, organ: str | None
) -> TrendPublic:
    points = history.trend(session, who, patient_id, organ, clinic.default_threshold)
    return TrendPublic(patient_id=patient_id, points=[TrendPoint(**p) for p in points])


# --- training jobs ------------------------------------------------------------------------------------------
def list_jobs(clinic: Clinic, session: Session) -> TrainingJobsPublic:
    jobs = clinic.jobs
    return TrainingJobsPublic(jobs=[TrainingJobPublic.of(j, jobs.progress(j)) for j in jobs.recent(session)])


def start_job(clinic: Clinic, session: Session, who: Principal, body: TrainingJobCreate) -> TrainingJobPublic:
    clinic.dataplane.registry.get(body.organ)
    request = JobRequest(**{**body.model_dump(), "widths": tuple(body.widths) if body.widths else None})
    job = clinic.jobs.start(session, who, request)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))


def show_job(clinic: Clinic, session: Session, job_id: uuid.UUID) -> TrainingJobPublic:
    job = clinic.jobs.get(session, job_id)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))


def cancel_job(clinic: Clinic, session: Session, who: Principal, job_id: uuid.UUID) -> TrainingJobPublic:
    job = clinic.jobs.cancel(session, who, job_id)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))
