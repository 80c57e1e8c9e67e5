"""HTTP shapes of the hospital's PACS as the pickers see it: studies found (QIDO-RS) and a study's series."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field

from common.pacs import SEARCH_PATIENT_ID
from gateway.resources.shared import DEFAULT_LIST, MAX_LIST


class PacsStudySearch(BaseModel):
    """The filters of a study search (HTTP's query, gRPC's request): every one given must match."""

    patient_id: str | None = Field(
        default=None,
        pattern=f"^{SEARCH_PATIENT_ID.pattern}$",  # the PACS's own IDs, not MedSeg's rule: what QIDO-RS takes
        description="the PACS's PatientID (QIDO-RS wildcards * and ?)",
    )
    modality: str | None = Field(default=None, description="e.g. CT, MR")
    date_from: date | None = None
    date_to: date | None = None
    limit: int = Field(default=DEFAULT_LIST, ge=1, le=MAX_LIST)


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
