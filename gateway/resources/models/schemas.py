"""HTTP shapes of model versions: recording, promotion, rollback, the reference set, the suggested
threshold."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from gateway import models as m
from gateway.resources.evaluations.schemas import EvaluationSummary


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


class PromotionPublic(BaseModel):
    version: ModelVersionPublic
    previous_version: str | None
    forced: bool
    dice_drop: float | None
    candidate_evaluation: EvaluationSummary | None
    default_evaluation: EvaluationSummary | None


class SuggestedThresholdPublic(BaseModel):
    organ: str
    version: str
    default_threshold: float
    suggested_threshold: float
