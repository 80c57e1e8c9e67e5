"""HTTP API shapes for people, API keys, datasets and the audit log (never the ORM tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway import models

Role = Literal["doctor", "researcher", "admin"]
Status = Literal["pending", "active", "disabled"]
_text = Field(default=None, max_length=200)


class UserRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    full_name: str = Field(max_length=200)
    title: str | None = _text
    department: str | None = _text
    hospital: str | None = _text
    role: Literal["doctor", "researcher"]


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class ProfileUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full_name: str | None = _text
    title: str | None = _text
    department: str | None = _text
    # any text here: accounts.update_profile answers 422 for a language the pages are not translated into
    language: str | None = Field(default=None, description="the web pages' language: en or zh")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class UserAdminUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    status: Status | None = None
    hospital: str | None = _text


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    email: str
    full_name: str
    title: str | None
    department: str | None
    hospital: str | None
    role: Role
    status: Status
    created_at: datetime
    approved_at: datetime | None
    last_sign_in_at: datetime | None
    language: str | None = None


class UsersPublic(BaseModel):
    users: list[UserPublic]


class SessionPublic(BaseModel):
    """What a browser gets at sign-in: who it is and the CSRF token for its unsafe requests."""

    user: UserPublic
    csrf_token: str
    expires_at: datetime


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100)
    scopes: list[str] = Field(max_length=10)
    expires_at: datetime | None = None
    hospital: str | None = _text


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    prefix: str
    name: str
    scopes: list[str]
    hospital: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str  # shown once


class ApiKeysPublic(BaseModel):
    api_keys: list[ApiKeyPublic]


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


class AuditEntryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict | None


class AuditPagePublic(BaseModel):
    entries: list[AuditEntryPublic]
    next_before_id: int | None
