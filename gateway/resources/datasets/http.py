"""Datasets over HTTP (/api/v1/datasets): upload (streamed), list, show, hide."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from starlette.concurrency import run_in_threadpool

from common.errors import InvalidInput
from gateway import datasets
from gateway.api.deps import SessionDep, SettingsDep, caller
from gateway.api.multipart import receive_form
from gateway.resources.datasets.schemas import DatasetPublic, DatasetsPublic

router = APIRouter(prefix="/datasets", tags=["datasets"])

UploadCaller = caller("datasets.upload")
ListDatasetsCaller = caller("datasets.list")
ShowDatasetCaller = caller("datasets.show")
DeleteDatasetCaller = caller("datasets.delete")

DatasetId = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]


def get_store(request: Request):
    """The object store the data plane uses (one client per process)."""
    return request.app.state.dataplane.store


@router.post(
    "",
    response_model=DatasetPublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["organ", "file"],
                        "properties": {
                            "organ": {"type": "string"},
                            "name": {"type": "string"},
                            "notes": {"type": "string"},
                            "file": {"type": "string", "format": "binary"},
                        },
                    }
                }
            }
        }
    },
)
async def upload_dataset(
    request: Request, principal: UploadCaller, session: SessionDep, settings: SettingsDep
) -> DatasetPublic:
    """Upload a zip of image/mask pairs (multipart: organ, file; optional name, notes), streamed to disk."""
    form = await receive_form(request, file_field="file", tmp_dir=settings.upload_tmp_dir, suffix=".zip")
    try:
        organ = form.fields.get("organ", "").strip()
        if not organ:
            raise InvalidInput(
                "missing field 'organ'", code="invalid_input", params={"field": "organ", "rule": "missing"}
            )
        if form.file_path is None:
            raise InvalidInput(
                "missing field 'file' (a .zip of image/mask pairs)",
                code="invalid_input",
                params={"field": "file", "rule": "missing"},
            )
        name = (form.fields.get("name") or "").strip()[:200] or (form.filename or "").removesuffix(".zip")[
            :200
        ]
        row = await run_in_threadpool(
            datasets.upload_dataset,
            session,
            get_store(request),
            principal,
            organ=organ,
            archive=form.file_path,
            name=name or None,
            notes=(form.fields.get("notes") or "").strip() or None,
            filename=form.filename,  # errors name the user's file, not the temporary one
        )
    finally:
        form.cleanup()
    return DatasetPublic.of(row)


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    principal: ListDatasetsCaller,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
) -> DatasetsPublic:
    """Datasets this caller may see (researchers: all; doctors: their hospital's), newest first."""
    return DatasetsPublic(
        datasets=[DatasetPublic.of(r) for r in datasets.list_datasets(session, principal, organ)]
    )


@router.get("/{dataset_id}", response_model=DatasetPublic)
def show_dataset(dataset_id: DatasetId, principal: ShowDatasetCaller, session: SessionDep) -> DatasetPublic:
    """One dataset (404 when it does not exist or is not visible to the caller)."""
    return DatasetPublic.of(datasets.get_dataset(session, principal, dataset_id))


@router.delete("/{dataset_id}", response_model=DatasetPublic)
def delete_dataset(
    dataset_id: DatasetId, principal: DeleteDatasetCaller, session: SessionDep
) -> DatasetPublic:
    """Hide a dataset (soft delete: the uploader or an admin)."""
    return DatasetPublic.of(datasets.delete_dataset(session, principal, dataset_id))
