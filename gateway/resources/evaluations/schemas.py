"""HTTP shapes of evaluating: at once (/evaluate, nothing kept) and kept evaluations (/evaluations)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from gateway import models as m
from gateway.resources.shared import ModelPublic
from gateway.service import dataplane as dp


class LabelScorePublic(BaseModel):
    dice: float
    iou: float
    hd95_mm: float | None = Field(description="95 % Hausdorff distance in mm; null when either mask is empty")


class LabelMeanPublic(BaseModel):
    mean_dice: float
    mean_iou: float
    mean_hd95_mm: float | None


class ImageScorePublic(BaseModel):
    filename: str
    dice: float = Field(description="an organ of several labels: the mean over its labels")
    iou: float
    width: int
    height: int
    predicted_px: int = Field(description="pixels (a volume: voxels) labelled")
    label_px: int
    per_label: dict[str, LabelScorePublic] | None = Field(
        default=None, description="an organ of several labels (3-D): scores per label"
    )


class ThresholdScorePublic(BaseModel):
    threshold: float
    mean_dice: float
    mean_iou: float


class EvaluationPublic(BaseModel):
    organ: str
    model: ModelPublic
    threshold: float
    images: list[ImageScorePublic]
    mean_dice: float
    mean_iou: float
    per_threshold: list[ThresholdScorePublic]
    per_label: dict[str, LabelMeanPublic] | None = Field(
        default=None, description="an organ of several labels (3-D): mean scores per label over the cases"
    )

    @classmethod
    def of(cls, r: dp.EvaluateResult) -> EvaluationPublic:
        return cls(
            organ=r.organ,
            model=ModelPublic(name=r.model.name, version=r.model.version),
            threshold=r.threshold,
            images=[ImageScorePublic(**vars(s)) for s in r.images],
            mean_dice=r.mean_dice,
            mean_iou=r.mean_iou,
            per_threshold=[ThresholdScorePublic(**vars(t)) for t in r.per_threshold],
            per_label=r.per_label,
        )


class EvaluationCasePublic(BaseModel):
    id: int
    name: str
    dice: float = Field(description="an organ of several labels: the mean over its labels")
    iou: float
    hd95: float | None = Field(
        description="95 % Hausdorff distance in pixels; null for a volume (see hd95_mm)"
    )
    dice_at: dict[str, float]
    width: int
    height: int
    predicted_px: int
    label_px: int
    overlay_url: str
    # HD95 in millimetres with the image's pixel spacing, when it carried one (DICOM); else None (px only).
    # A volume: the mean over its labels, null unless every label's is known.
    hd95_mm: float | None = None
    pixel_spacing_row_mm: float | None = None
    pixel_spacing_col_mm: float | None = None
    per_label: dict[str, LabelScorePublic] | None = Field(
        default=None, description="an organ of several labels (3-D): scores per label"
    )


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
    per_label: dict[str, LabelMeanPublic] | None = Field(
        default=None, description="an organ of several labels (3-D): mean scores per label over the cases"
    )

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
            per_label=e.per_label,
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


class JobErrorPublic(BaseModel):
    code: str
    message: str


class EvaluationJobPublic(BaseModel):
    """An evaluation running in the background (`Prefer: respond-async`): poll `url` until `status` is done
    (then `evaluation_url` is the kept evaluation) or failed (`error` says why, as the request would have)."""

    id: str
    url: str = Field(description="this job: GET it to follow the evaluation")
    organ: str
    model_version: str
    dataset_id: str | None
    status: str = Field(description="queued | running | done | failed")
    progress: float = Field(description="0 to 1")
    case_count: int
    cases_done: int
    evaluation_id: str | None
    evaluation_url: str | None
    error: JobErrorPublic | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, j: m.EvaluationJob) -> EvaluationJobPublic:
        return cls(
            id=str(j.id),
            url=f"/api/v1/evaluation-jobs/{j.id}",
            organ=j.organ,
            model_version=j.model_version,
            dataset_id=j.dataset_id,
            status=j.status,
            progress=j.progress,
            case_count=j.case_count,
            cases_done=j.cases_done,
            evaluation_id=str(j.evaluation_id) if j.evaluation_id else None,
            evaluation_url=f"/api/v1/evaluations/{j.evaluation_id}" if j.evaluation_id else None,
            error=JobErrorPublic(code=j.error_code, message=j.error_message or "") if j.error_code else None,
            created_at=j.created_at,
            finished_at=j.finished_at,
        )
