"""Studies for both edges: each edge parses its transport's input and calls these, which call the study
service (gateway/service/studies.py) and answer the public shapes of schemas.py."""

from __future__ import annotations

from sqlalchemy.orm import Session

from gateway.models import Study
from gateway.principal import Principal
from gateway.resources.shared import ModelPublic, list_limit
from gateway.resources.studies.schemas import (
    StudyErrorPublic,
    StudyFromPacs,
    StudyList,
    StudyPacs,
    StudyPublic,
)
from gateway.service.clinic import Clinic
from gateway.service.studies import PacsSource, Upload


def public(clinic: Clinic, row: Study) -> StudyPublic:
    model = ModelPublic(name=row.model_name, version=row.model_version) if row.model_name else None
    error = StudyErrorPublic(code=row.error_code, message=row.error_message or "") if row.error_code else None
    return StudyPublic(
        id=str(row.id),
        organ=row.organ,
        status=row.status,
        progress=row.progress,
        model=model,
        shape=row.shape,
        spacing_mm=row.spacing_mm,
        labels=row.labels,
        default_threshold=clinic.default_threshold(row.organ),
        volumes_ml=row.volumes_ml,
        error=error,
        patient_id=row.patient_id,
        study_date=row.study_date,
        source=row.source,
        created_at=row.created_at,
        chosen_threshold=row.chosen_threshold,
        chosen_note=row.chosen_note,
        pacs=_pacs(row),
    )


def _pacs(row: Study) -> StudyPacs | None:
    if not row.pacs_study_uid:
        return None
    return StudyPacs(
        study_uid=row.pacs_study_uid,
        series_uid=row.pacs_series_uid,
        store_result=row.pacs_store_result,
        stored=row.pacs_segs or [],
    )


def submit(
    clinic: Clinic,
    session: Session,
    who: Principal,
    organ: str,
    files: list[Upload],
    patient_id: str | None,
    study_date: str | None,
) -> StudyPublic:
    return public(clinic, clinic.studies.submit(session, who, organ, files, patient_id, study_date))


def submit_from_pacs(clinic: Clinic, session: Session, who: Principal, body: StudyFromPacs) -> StudyPublic:
    source = PacsSource(body.pacs.study_uid, body.pacs.series_uid, body.store_result)
    row = clinic.pacs.submit(session, who, clinic.studies, body.organ, source, body.patient_id or None)
    return public(clinic, row)


def show(clinic: Clinic, session: Session, who: Principal, study_id: str) -> StudyPublic:
    return public(clinic, clinic.studies.get(session, who, study_id))


def list_studies(
    clinic: Clinic,
    session: Session,
    who: Principal,
    patient_id: str | None,
    organ: str | None,
    limit: int | None,
) -> StudyList:
    rows = clinic.studies.list(session, who, patient_id, organ, list_limit(limit))
    return StudyList(studies=[public(clinic, r) for r in rows])


def mask(
    clinic: Clinic, session: Session, who: Principal, study_id: str, threshold: float | None
) -> tuple[float, bytes]:
    row = clinic.studies.get(session, who, study_id)
    used = clinic.studies.threshold_of(row, threshold)
    return used, clinic.studies.mask_nifti(row, used)


def seg(
    clinic: Clinic, session: Session, who: Principal, study_id: str, threshold: float | None
) -> tuple[float, bytes]:
    row = clinic.studies.get(session, who, study_id)
    used = clinic.studies.threshold_of(row, threshold)
    return used, clinic.studies.seg_dicom(row, used)


def image(clinic: Clinic, session: Session, who: Principal, study_id: str) -> bytes:
    return clinic.studies.image_nifti(clinic.studies.get(session, who, study_id))


def cancel(clinic: Clinic, session: Session, who: Principal, study_id: str) -> StudyPublic:
    return public(clinic, clinic.studies.cancel(session, who, study_id))


def choose_threshold(
    clinic: Clinic, session: Session, who: Principal, study_id: str, threshold: float, note: str | None
) -> StudyPublic:
    return public(clinic, clinic.studies.choose_threshold(session, who, study_id, threshold, note))
