"""The hospital's PACS over HTTP, for pickers: search its studies (QIDO-RS) and list a study's series. A
series is segmented by POST /api/v1/studies with a JSON body naming it (gateway/resources/studies/http.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from gateway.api.deps import ClinicDep, caller
from gateway.resources.pacs import service
from gateway.resources.pacs.schemas import PacsSeriesList, PacsStudyList, PacsStudySearch

router = APIRouter(tags=["pacs"])

SearchCaller = caller("pacs.studies")
SeriesCaller = caller("pacs.series")
ThumbnailCaller = caller("pacs.thumbnail")
UidPath = Annotated[str, Path(description="a DICOM UID")]


@router.get("/pacs/studies", response_model=PacsStudyList)
def search_studies(
    clinic: ClinicDep, who: SearchCaller, query: Annotated[PacsStudySearch, Query()]
) -> PacsStudyList:
    """Studies of the configured PACS matching every filter given."""
    return service.search(clinic, who, query)


@router.get("/pacs/studies/{study_uid}/series", response_model=PacsSeriesList)
def list_series(clinic: ClinicDep, who: SeriesCaller, study_uid: UidPath) -> PacsSeriesList:
    """The series of one study of the PACS, by series number (404 when the PACS holds no such study)."""
    return service.series(clinic, who, study_uid)


@router.get(
    "/pacs/studies/{study_uid}/series/{series_uid}/thumbnail.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def thumbnail(
    clinic: ClinicDep,
    who: ThumbnailCaller,
    study_uid: UidPath,
    series_uid: UidPath,
    size: Annotated[int, Query(ge=32, le=512, description="the longer side, in pixels")] = 192,
) -> Response:
    """The series' middle image as a small PNG (fetched from the PACS with WADO-RS, windowed as the file
    says), for the picker; 409 `pacs_no_image` for a series without an image (e.g. a SEG)."""
    png = service.thumbnail(clinic, who, study_uid, series_uid, size)
    return Response(content=png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
