"""HTTP shapes of the hospital's PACS as the pickers see it: studies found (QIDO-RS) and a study's series."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field


class PacsStudyPublic(BaseModel):
    study_uid: str
    study_date: date | None
    description: str
    patient_id: str | None = Field(
        description="MedSeg's pseudonymous ID for the patient (the PACS PatientID when it already is one, "
        "else PACS-<keyed hash>); never the PACS's own ID or a name"
    )
    modalities: list[str]
    series_count: int | None
    instance_count: int | None


class PacsStudyList(BaseModel):
    studies: list[PacsStudyPublic]


class PacsSeriesPublic(BaseModel):
    series_uid: str
    modality: str | None
    number: int | None
    description: str
    body_part: str | None
    instance_count: int | None
    segmentable: bool = Field(description="a CT or MR series: a study can be made of it")


class PacsSeriesList(BaseModel):
    series: list[PacsSeriesPublic]
