from typing import Annotated

from fastapi import APIRouter, Query, status

from gateway.api.clinic_deps import FeedbackReader, FeedbackWriter
from gateway.api.deps import SessionDep
from gateway.errors import Forbidden
from gateway.models import Feedback, ModelVersion
from gateway.schemas import RowId
from gateway.schemas_clinic import (
    FeedbackCreate,
    FeedbackListPublic,
    FeedbackPublic,
    FeedbackUpdate,
    ReplyCreate,
    ReplyPublic,
)
from gateway.service import feedback

router = APIRouter(tags=["feedback"])


def _public(
    session, row: Feedback, model: ModelVersion | None = None, with_replies: bool = False
) -> FeedbackPublic:
    model = model or session.get(ModelVersion, row.model_version_id)
    return FeedbackPublic(
        id=row.id,
        organ=model.organ,
        model_version=model.version,
        author_user_id=row.author_user_id,
        body=row.body,
        status=row.status,
        evaluation_case_id=row.evaluation_case_id,
        segmentation_id=str(row.segmentation_id) if row.segmentation_id else None,
        threshold=row.threshold,
        addressed_by_version=feedback.version_of(session, row.addressed_by_version_id),
        created_at=row.created_at,
        updated_at=row.updated_at,
        replies=[
            ReplyPublic(id=r.id, author_user_id=r.author_user_id, body=r.body, created_at=r.created_at)
            for r in feedback.replies(session, row)
        ]
        if with_replies
        else [],
    )


@router.post(
    "/models/{organ}/versions/{version}/feedback",
    response_model=FeedbackPublic,
    status_code=status.HTTP_201_CREATED,
)
def create_feedback(
    organ: str, version: str, body: FeedbackCreate, who: FeedbackWriter, session: SessionDep
) -> FeedbackPublic:
    """Feedback on a model version, optionally on one evaluated case or segmentation (and threshold)."""
    if who.role != "doctor" and not who.is_admin:
        raise Forbidden("doctors write feedback; researchers reply to it")
    row = feedback.create(
        session,
        who,
        organ,
        version,
        body.body,
        evaluation_case_id=body.evaluation_case_id,
        segmentation_id=body.segmentation_id,
        threshold=body.threshold,
    )
    return _public(session, row, with_replies=True)


@router.get("/feedback", response_model=FeedbackListPublic)
def list_feedback(
    _who: FeedbackReader,
    session: SessionDep,
    organ: Annotated[str | None, Query(max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
) -> FeedbackListPublic:
    """Feedback threads, newest first, filterable by organ, version and status."""
    rows = feedback.list_feedback(session, organ, version, status)
    return FeedbackListPublic(feedback=[_public(session, f, m) for f, m in rows])


@router.get("/feedback/{feedback_id}", response_model=FeedbackPublic)
def show_feedback(feedback_id: RowId, _who: FeedbackReader, session: SessionDep) -> FeedbackPublic:
    """One thread with its replies."""
    return _public(session, feedback.get(session, feedback_id), with_replies=True)


@router.post(
    "/feedback/{feedback_id}/replies", response_model=FeedbackPublic, status_code=status.HTTP_201_CREATED
)
def reply(feedback_id: RowId, body: ReplyCreate, who: FeedbackWriter, session: SessionDep) -> FeedbackPublic:
    """Reply to a thread (researchers answer; the doctor may follow up)."""
    feedback.reply(session, who, feedback_id, body.body)
    return _public(session, feedback.get(session, feedback_id), with_replies=True)


@router.patch("/feedback/{feedback_id}", response_model=FeedbackPublic)
def update_feedback(
    feedback_id: RowId, body: FeedbackUpdate, who: FeedbackWriter, session: SessionDep
) -> FeedbackPublic:
    """Set the status (open, in_progress, resolved) and/or the version that addresses it."""
    row = feedback.update(
        session, who, feedback_id, status=body.status, addressed_by_version=body.addressed_by_version
    )
    return _public(session, row, with_replies=True)
