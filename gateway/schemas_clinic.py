"""HTTP shapes of the clinical loop (model versions, evaluations, feedback, history, training jobs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from gateway import models as m
from gateway.schemas import RowId, SegmentationPublic


class ModelVersionPublic(BaseModel):
    organ: str
    model_name: str
    version: str
    state: str
    mar_key: str | None
    card: dict
    metrics: dict
    dataset_id: str | None
    dataset_hash: str | None
    commit: str | None
    default_threshold: float | None
    parent_version: str | None
    previous_default_version: str | None
    created_by: str
    created_at: datetime
    promoted_at: datetime | None
    retired_at: datetime | None

    @classmethod
    def of(cls, row: m.ModelVersion, versions_by_id: dict[int, str]) -> ModelVersionPublic:
        return cls(
            organ=row.organ,
            model_name=row.model_name,
            version=row.version,
            state=row.state,
            mar_key=row.mar_key,
            card=row.card or {},
            metrics=row.metrics or {},
            dataset_id=row.dataset_id,
            dataset_hash=row.dataset_hash,
            commit=row.commit,
            default_threshold=row.default_threshold,
            parent_version=versions_by_id.get(row.parent_id) if row.parent_id else None,
            previous_default_version=versions_by_id.get(row.previous_default_id)
            if row.previous_default_id
            else None,
            created_by=row.created_by,
            created_at=row.created_at,
            promoted_at=row.promoted_at,
            retired_at=row.retired_at,
        )


class ModelEventPublic(BaseModel):
    action: str
    actor: str
    reason: str | None
    detail: dict | None
    at: datetime


class ModelVersionDetail(ModelVersionPublic):
    events: list[ModelEventPublic] = []
    lineage: list[str] = []  # this version, its parent, … (oldest last)


class ModelVersionsPublic(BaseModel):
    organ: str
    default_version: str | None
    versions: list[ModelVersionPublic]


class ModelVersionCreate(BaseModel):
    model_name: str = Field(max_length=64)
    version: str = Field(max_length=64)
    mar_key: str | None = Field(default=None, max_length=512)
    mar_sha256: str | None = Field(default=None, max_length=64)
    card: dict = {}
    metrics: dict = {}
    dataset_id: str | None = Field(default=None, max_length=64)
    dataset_hash: str | None = Field(default=None, max_length=64)
    commit: str | None = Field(default=None, max_length=64)
    default_threshold: float | None = None
    parent_version: str | None = Field(default=None, max_length=64)


class PromoteRequest(BaseModel):
    force: bool = False
    reason: str | None = Field(default=None, max_length=2000)


class RollbackRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=2000)


class ReferenceSetRequest(BaseModel):
    dataset_id: str = Field(max_length=64)


class ReferenceSetPublic(BaseModel):
    organ: str
    dataset_id: str
    dataset_hash: str
    set_by: str
    set_at: datetime


class EvaluationCasePublic(BaseModel):
    id: int
    name: str
    dice: float
    iou: float
    hd95: float | None
    dice_at: dict[str, float]
    width: int
    height: int
    predicted_px: int
    label_px: int
    overlay_url: str


class ThresholdDicePublic(BaseModel):
    threshold: float
    mean_dice: float
    best: bool


class EvaluationSummary(BaseModel):
    id: str
    organ: str
    model_name: str
    model_version: str
    purpose: str
    dataset_id: str | None
    dataset_hash: str | None
    threshold: float
    case_count: int
    mean_dice: float
    std_dice: float
    mean_iou: float
    mean_hd95: float | None
    best_threshold: float
    per_threshold: list[ThresholdDicePublic]
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, e: m.Evaluation) -> EvaluationSummary:
        return cls(
            id=str(e.id),
            organ=e.organ,
            model_name=e.model_name,
            model_version=e.model_version,
            purpose=e.purpose,
            dataset_id=e.dataset_id,
            dataset_hash=e.dataset_hash,
            threshold=e.threshold,
            case_count=e.case_count,
            mean_dice=e.mean_dice,
            std_dice=e.std_dice,
            mean_iou=e.mean_iou,
            mean_hd95=e.mean_hd95,
            best_threshold=e.best_threshold,
            per_threshold=[ThresholdDicePublic(**t) for t in e.per_threshold],
            created_by=e.created_by,
            created_at=e.created_at,
        )


class EvaluationDetail(EvaluationSummary):
    cases: list[EvaluationCasePublic]


class EvaluationsPublic(BaseModel):
    evaluations: list[EvaluationSummary]


class PairedCase(BaseModel):
    case: str
    dice_a: float
    dice_b: float
    difference: float
    outcome: str  # win | loss | tie (for a)


class ComparisonPublic(BaseModel):
    a: EvaluationSummary
    b: EvaluationSummary
    same_dataset: bool
    wins: int
    losses: int
    ties: int
    mean_difference: float
    cases: list[PairedCase]
    only_in_a: list[str]
    only_in_b: list[str]


class PromotionPublic(BaseModel):
    version: ModelVersionPublic
    previous_version: str | None
    forced: bool
    dice_drop: float | None
    candidate_evaluation: EvaluationSummary | None
    default_evaluation: EvaluationSummary | None


class FeedbackCreate(BaseModel):
    body: str = Field(max_length=5000)
    evaluation_case_id: RowId | None = None
    segmentation_id: str | None = Field(default=None, max_length=64)
    threshold: float | None = None


class FeedbackUpdate(BaseModel):
    status: str | None = Field(default=None, max_length=16)
    addressed_by_version: str | None = Field(default=None, max_length=64)


class ReplyCreate(BaseModel):
    body: str = Field(max_length=5000)


class ReplyPublic(BaseModel):
    id: int
    author_user_id: int | None
    body: str
    created_at: datetime


class FeedbackPublic(BaseModel):
    id: int
    organ: str
    model_version: str
    author_user_id: int | None
    body: str
    status: str
    evaluation_case_id: int | None
    segmentation_id: str | None
    threshold: float | None
    addressed_by_version: str | None
    created_at: datetime
    updated_at: datetime
    replies: list[ReplyPublic] = []


class FeedbackListPublic(BaseModel):
    feedback: list[FeedbackPublic]


class SegmentRecordPublic(SegmentationPublic):
    """The contract's segment answer plus the clinical record's extras (additive)."""

    stability: float
    doubtful: bool
    suggested_threshold: float


class ChoiceRequest(BaseModel):
    threshold: float
    note: str | None = Field(default=None, max_length=2000)


class HistoryItem(BaseModel):
    id: str
    organ: str
    model_name: str
    model_version: str
    patient_id: str | None
    width: int
    height: int
    created_at: datetime
    stability: float | None
    doubtful: bool | None
    chosen_threshold: float | None
    chosen_note: str | None
    area: float
    area_unit: str
    area_threshold: float
    thumbnail_url: str | None


class HistoryPublic(BaseModel):
    segmentations: list[HistoryItem]


class TrendPoint(BaseModel):
    segmentation_id: str
    at: datetime
    organ: str
    model_version: str
    area: float
    unit: str
    threshold: float
    chosen: bool


class TrendPublic(BaseModel):
    patient_id: str
    points: list[TrendPoint]


class SuggestedThresholdPublic(BaseModel):
    organ: str
    version: str
    default_threshold: float
    suggested_threshold: float


# --- training jobs -----------------------------------------------------------------------------------------
class TrainingJobCreate(BaseModel):
    organ: str = Field(max_length=64)
    dataset_id: str = Field(max_length=64)
    arch: str = Field(max_length=64, description="architecture (services.networks), e.g. erunet")
    minutes: float = Field(default=5.0, gt=0, le=600, description="time budget")
    epochs: int = Field(default=200, ge=1, le=10_000, description="at most this many epochs")
    widths: list[Annotated[int, Field(ge=1, le=512)]] | None = Field(
        default=None, min_length=1, max_length=6, description="channel widths, e.g. [6, 12, 24]"
    )
    limit: int | None = Field(default=None, ge=2, description="use only the first N pairs (small runs)")


class TrainingEpoch(BaseModel):
    epoch: int
    loss: float | None
    val_dice: float | None


class TrainingJobPublic(BaseModel):
    id: str
    organ: str
    dataset_id: str
    arch: str
    minutes: float
    epochs: int
    status: str  # queued | running | succeeded | failed | cancelled
    progress: list[TrainingEpoch]
    best_val_dice: float | None
    error: str | None
    pid: int | None
    version: str  # the candidate version the job records when it succeeds
    result_version: str | None  # set once that candidate is recorded
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: m.TrainingJob, progress: dict) -> TrainingJobPublic:
        return cls(
            id=str(row.id),
            organ=row.organ,
            dataset_id=row.dataset_id,
            arch=row.arch,
            minutes=row.budget_minutes,
            epochs=row.epochs,
            status=row.state,
            progress=[TrainingEpoch(**e) for e in progress.get("epochs", [])],
            best_val_dice=progress.get("best_val_dice"),
            error=row.error,
            pid=row.pid,
            version=row.version,
            result_version=row.version if row.candidate_version_id else None,
            created_by=row.created_by,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


class TrainingJobsPublic(BaseModel):
    jobs: list[TrainingJobPublic]
