"""HTTP shapes of feedback threads on model versions."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from gateway.resources.shared import RowId

SHARED = "shared with the author's hospital's doctors (researchers see every thread)"


class FeedbackCreate(BaseModel):
    body: str = Field(max_length=5000)
    evaluation_case_id: RowId | None = None
    segmentation_id: str | None = Field(default=None, max_length=64)
    threshold: float | None = None
    shared: bool = Field(default=False, description=SHARED)


class FeedbackUpdate(BaseModel):
    status: str | None = Field(default=None, max_length=16)
    addressed_by_version: str | None = Field(default=None, max_length=64)
    shared: bool | None = Field(default=None, description=f"{SHARED}; the thread's author only")


class ReplyCreate(BaseModel):
    body: str = Field(max_length=5000)


class ReplyPublic(BaseModel):
    id: int
    author_user_id: int | None
    body: str
    created_at: datetime


class FeedbackPublic(BaseModel):
    id: int
    organ: str
    model_version: str
    author_user_id: int | None
    body: str
    status: str
    evaluation_case_id: int | None
    segmentation_id: str | None
    threshold: float | None
    addressed_by_version: str | None
    shared: bool = Field(description=SHARED)
    created_at: datetime
    updated_at: datetime
    replies: list[ReplyPublic] = []


class FeedbackListPublic(BaseModel):
    feedback: list[FeedbackPublic]
