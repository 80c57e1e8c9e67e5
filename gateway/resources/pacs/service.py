"""The PACS pickers for both edges: each edge parses its transport's input and calls these, which call the
gateway's PACS service (gateway/service/pacs.py) and answer the shapes of schemas.py."""

from __future__ import annotations

from dataclasses import asdict

from gateway.principal import Principal
from gateway.resources.pacs.schemas import (
    PacsSeriesList,
    PacsSeriesPublic,
    PacsStudyList,
    PacsStudyPublic,
    PacsStudySearch,
)
from gateway.service.clinic import Clinic
from gateway.service.pacs import SEGMENTABLE


def search(clinic: Clinic, who: Principal, query: PacsStudySearch) -> PacsStudyList:
    found = clinic.pacs.search(
        who,
        patient_id=query.patient_id or None,
        modality=query.modality or None,
        date_from=query.date_from,
        date_to=query.date_to,
        limit=query.limit,
    )
    return PacsStudyList(
        studies=[PacsStudyPublic(**{**asdict(s), "modalities": list(s.modalities)}) for s in found]
    )


def series(clinic: Clinic, who: Principal, study_uid: str) -> PacsSeriesList:
    return PacsSeriesList(
        series=[
            PacsSeriesPublic(**asdict(s), segmentable=(s.modality or "").upper() in SEGMENTABLE)
            for s in clinic.pacs.series(who, study_uid)
        ]
    )


def thumbnail(clinic: Clinic, who: Principal, study_uid: str, series_uid: str, size: int) -> bytes:
    return clinic.pacs.thumbnail(who, study_uid, series_uid, size)
