"""HTTP shapes of API keys (the secret is shown once, at creation)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from gateway.resources.shared import optional_text


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100)
    scopes: list[str] = Field(max_length=10)
    expires_at: datetime | None = None
    hospital: str | None = optional_text


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
