"""HTTP shapes of studies (volumes): the study as the job reports it, the list, a patient's trend per
study."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field

from gateway.resources.shared import ModelPublic


class StudyErrorPublic(BaseModel):
    code: str
    message: str


class StudyPublic(BaseModel):
    id: str
    organ: str
    status: str = Field(description="queued | running | done | failed")
    progress: float = Field(description="0 … 1")
    model: ModelPublic | None = Field(description="the model version that segmented it (once running)")
    shape: list[int] = Field(description="[z, y, x] of the axial volume")
    spacing_mm: list[float] = Field(description="[z, y, x] in mm")
    labels: list[str]
    default_threshold: float
    volumes_ml: dict[str, dict[str, float]] = Field(
        description='organ volume in mL per label at each threshold: {"0.2": {"liver": 1523.4}, …}'
    )
    error: StudyErrorPublic | None = None
    patient_id: str | None
    study_date: date | None
    source: str = Field(description="dicom | nifti")
    created_at: datetime
    chosen_threshold: float | None
    chosen_note: str | None


class StudyList(BaseModel):
    studies: list[StudyPublic]


class StudyChoiceRequest(BaseModel):
    threshold: float
    note: str | None = Field(default=None, max_length=2000)


class StudyTrendPoint(BaseModel):
    """One study of the patient: its date, its organ volume per label at the saved (else default)
    threshold."""

    study_id: str
    study_date: date
    date_from: str = Field(description="study: the study's own date; upload: the day it was uploaded")
    organ: str
    model_version: str | None
    threshold: float
    chosen: bool
    volumes_ml: dict[str, float]
