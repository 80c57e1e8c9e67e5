"""HTTP shapes of training jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from gateway import models as m


class ArchitecturesPublic(BaseModel):
    architectures: list[str] = Field(description="names a training job's `arch` accepts (services.networks)")


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
