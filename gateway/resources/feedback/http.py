"""Feedback threads over HTTP: on a model version, replies and status (/api/v1/feedback)."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from gateway.api.deps import SessionDep, caller
from gateway.resources.feedback import service
from gateway.resources.feedback.schemas import (
    FeedbackCreate,
    FeedbackListPublic,
    FeedbackPublic,
    FeedbackUpdate,
    ReplyCreate,
)
from gateway.resources.shared import RowId

router = APIRouter(tags=["feedback"])

CreateFeedbackCaller = caller("feedback.create")
ListFeedbackCaller = caller("feedback.list")
ShowFeedbackCaller = caller("feedback.show")
ReplyCaller = caller("feedback.reply")
UpdateFeedbackCaller = caller("feedback.update")


@router.post(
    "/models/{organ}/versions/{version}/feedback",
    response_model=FeedbackPublic,
    status_code=status.HTTP_201_CREATED,
)
def create_feedback(
    organ: str, version: str, body: FeedbackCreate, who: CreateFeedbackCaller, session: SessionDep
) -> FeedbackPublic:
    """Feedback on a model version, optionally on one evaluated case or segmentation (and threshold)."""
    return service.create_feedback(session, who, organ, version, body)


@router.get("/feedback", response_model=FeedbackListPublic)
def list_feedback(
    who: ListFeedbackCaller,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
) -> FeedbackListPublic:
    """Feedback threads, newest first, filterable by organ, version and status."""
    return service.list_feedback(session, who, organ, version, status)


@router.get("/feedback/{feedback_id}", response_model=FeedbackPublic)
def show_feedback(feedback_id: RowId, who: ShowFeedbackCaller, session: SessionDep) -> FeedbackPublic:
    """One thread with its replies."""
    return service.show_feedback(session, who, feedback_id)


@router.post(
    "/feedback/{feedback_id}/replies", response_model=FeedbackPublic, status_code=status.HTTP_201_CREATED
)
def reply(feedback_id: RowId, body: ReplyCreate, who: ReplyCaller, session: SessionDep) -> FeedbackPublic:
    """Reply to a thread (researchers answer; the doctor may follow up)."""
    return service.reply(session, who, feedback_id, body.body)


@router.patch("/feedback/{feedback_id}", response_model=FeedbackPublic)
def update_feedback(
    feedback_id: RowId, body: FeedbackUpdate, who: UpdateFeedbackCaller, session: SessionDep
) -> FeedbackPublic:
    """Set the status (open, in_progress, resolved) and/or the version that addresses it."""
    return service.update_feedback(session, who, feedback_id, body)
