"""HTTP shapes of the audit log."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


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
