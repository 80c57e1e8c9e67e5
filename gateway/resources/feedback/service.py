"""Feedback threads, for both edges: each edge parses its transport's input and calls these, which call the
service layer (gateway/service/feedback.py) and answer the public shapes of schemas.py.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from gateway.models import Feedback, ModelVersion
from gateway.principal import Principal
from gateway.resources.feedback.schemas import (
    FeedbackCreate,
    FeedbackListPublic,
    FeedbackPublic,
    FeedbackUpdate,
    ReplyPublic,
)
from gateway.service import feedback


def _feedback_public(
    session: Session, row: Feedback, model: ModelVersion | None = None, replies: list | None = None
) -> FeedbackPublic:
    """The thread with its replies (`replies`: already read for a list, else read here)."""
    model = model or session.get(ModelVersion, row.model_version_id)
    replies = feedback.replies(session, row) if replies is None else replies
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
        shared=row.shared,
        created_at=row.created_at,
        updated_at=row.updated_at,
        replies=[
            ReplyPublic(id=r.id, author_user_id=r.author_user_id, body=r.body, created_at=r.created_at)
            for r in replies
        ],
    )


def create_feedback(
    session: Session, who: Principal, organ: str, version: str, body: FeedbackCreate
) -> FeedbackPublic:
    row = feedback.create(
        session,
        who,
        organ,
        version,
        body.body,
        evaluation_case_id=body.evaluation_case_id,
        segmentation_id=body.segmentation_id,
        threshold=body.threshold,
        shared=body.shared,
    )
    return _feedback_public(session, row)


def list_feedback(
    session: Session, who: Principal, organ: str | None, version: str | None, status: str | None
) -> FeedbackListPublic:
    rows = feedback.list_feedback(session, who, organ, version, status)
    replies = feedback.replies_of(session, [f.id for f, _ in rows])
    return FeedbackListPublic(feedback=[_feedback_public(session, f, m, replies[f.id]) for f, m in rows])


def show_feedback(session: Session, who: Principal, feedback_id: int) -> FeedbackPublic:
    return _feedback_public(session, feedback.get(session, who, feedback_id))


def reply(session: Session, who: Principal, feedback_id: int, body: str) -> FeedbackPublic:
    feedback.reply(session, who, feedback_id, body)
    return show_feedback(session, who, feedback_id)


def update_feedback(
    session: Session, who: Principal, feedback_id: int, body: FeedbackUpdate
) -> FeedbackPublic:
    row = feedback.update(
        session,
        who,
        feedback_id,
        status=body.status,
        addressed_by_version=body.addressed_by_version,
        shared=body.shared,
    )
    return _feedback_public(session, row)
