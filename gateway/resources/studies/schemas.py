"""HTTP shapes of studies (volumes): the study as the job reports it, the list, a patient's trend per
study."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from gateway.resources.shared import ModelPublic

DICOM_UID = r"^[0-9]+(\.[0-9]+)*$"


class StudyErrorPublic(BaseModel):
    code: str
    message: str


class PacsSeriesRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_uid: str = Field(max_length=64, pattern=DICOM_UID)
    series_uid: str = Field(max_length=64, pattern=DICOM_UID)


class StudyFromPacs(BaseModel):
    """POST /api/v1/studies as JSON: a series of the configured PACS instead of files."""

    model_config = ConfigDict(extra="forbid")

    organ: str = Field(max_length=200)
    pacs: PacsSeriesRef
    patient_id: str | None = Field(
        default=None, max_length=128, description="else the series' PatientID, mapped to a pseudonymous ID"
    )
    store_result: bool = Field(default=False, description="store the DICOM SEG back into the PACS study")


class PacsStoredSeg(BaseModel):
    series_uid: str
    sop_instance_uid: str
    series_number: int
    threshold: float
    stored_at: str


class StudyPacs(BaseModel):
    study_uid: str
    series_uid: str
    store_result: bool
    stored: list[PacsStoredSeg] = Field(
        description="DICOM SEGs stored back into the PACS study: when done, and for every threshold saved"
    )


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
    pacs: StudyPacs | None = Field(default=None, description="fetched from the PACS: where from, SEGs stored")


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
