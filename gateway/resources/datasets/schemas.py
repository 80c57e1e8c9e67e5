"""HTTP shapes of datasets (never the ORM tables)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from gateway import models


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    organ: str
    name: str
    pair_count: int
    size_bytes: int
    dataset_hash: str
    status: str
    hospital: str | None
    notes: str | None
    created_at: datetime
    uploaded_by: str | None

    @classmethod
    def of(cls, row: models.Dataset) -> DatasetPublic:
        if row.uploaded_by_user_id is not None:
            uploader = f"user:{row.uploaded_by_user_id}"
        elif row.uploaded_by_api_key_id is not None:
            uploader = f"api-key:{row.uploaded_by_api_key_id}"
        else:
            uploader = None
        return cls.model_validate({**{c: getattr(row, c) for c in cls.model_fields if c != "uploaded_by"},
                                   "uploaded_by": uploader})  # fmt: skip


class DatasetsPublic(BaseModel):
    datasets: list[DatasetPublic]
