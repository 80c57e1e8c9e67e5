"""Feedback threads on a model version: a doctor writes, researchers reply; open → in progress → resolved;
optionally attached to one evaluated case or one segmentation (with the threshold looked at), and linked to
the version that addresses it; its author may share it with their hospital's doctors
(access.FEEDBACK_SHARE)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import Forbidden, InvalidInput, NotFound
from gateway import tenancy
from gateway.access import EVALUATION_READ, FEEDBACK_READ, FEEDBACK_SHARE, FEEDBACK_WRITE
from gateway.models import (
    FEEDBACK_STATUSES,
    EvaluationCase,
    Feedback,
    FeedbackReply,
    ModelVersion,
    audit,
)
from gateway.principal import Principal
from gateway.service import model_registry
from gateway.service.history import get_segmentation
from gateway.service.masks import THRESHOLDS

MAX_BODY = 5000


def _body(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise InvalidInput("feedback needs some text", code="empty_body")
    if len(text) > MAX_BODY:
        raise InvalidInput(
            f"feedback is at most {MAX_BODY} characters", code="body_too_long", params={"limit": MAX_BODY}
        )
    return text


def create(
    session: Session,
    principal: Principal,
    organ: str,
    version: str,
    body: str,
    *,
    evaluation_case_id: int | None = None,
    segmentation_id: str | None = None,
    threshold: float | None = None,
    shared: bool = False,
) -> Feedback:
    if principal.user is not None and principal.role != "doctor" and not principal.is_admin:
        raise Forbidden("doctors write feedback; researchers reply to it", code="feedback_doctors_only")
    model = model_registry.get_version(session, organ, version)
    text = _body(body)
    seg_key = _checked_attachments(session, principal, evaluation_case_id, segmentation_id, threshold)
    row = Feedback(
        model_version_id=model.id,
        author_user_id=principal.user.id if principal.user else None,
        author_api_key_id=principal.api_key.id if principal.api_key else None,
        hospital=principal.hospital,
        shared=shared,
        body=text,
        evaluation_case_id=evaluation_case_id,
        segmentation_id=seg_key,
        threshold=round(threshold, 1) if threshold is not None else None,
    )
    session.add(row)
    session.flush()
    audit(
        session,
        principal.actor,
        "feedback.create",
        f"feedback:{row.id}",
        {"organ": organ, "version": version},
    )
    session.commit()
    return row


def _checked_attachments(
    session: Session,
    principal: Principal,
    evaluation_case_id: int | None,
    segmentation_id: str | None,
    threshold: float | None,
):
    """What feedback may attach to: a case of an evaluation the caller sees (access.EVALUATION_READ), a
    segmentation the caller sees, a threshold of the grid. Returns the segmentation's key (or None)."""
    if evaluation_case_id is not None:
        case = session.get(EvaluationCase, evaluation_case_id)
        missing = NotFound(f"no evaluated case {evaluation_case_id}", code="unknown_case")
        if case is None:
            raise missing
        tenancy.get(session, principal, EVALUATION_READ, case.evaluation_id, missing)
    seg_key = None
    if segmentation_id is not None:
        seg_key = get_segmentation(session, principal, segmentation_id).id
    if threshold is not None and round(threshold, 1) not in THRESHOLDS:
        raise InvalidInput(
            f"threshold must be one of {', '.join(f'{t:.1f}' for t in THRESHOLDS)}", code="invalid_threshold"
        )
    return seg_key


def get(session: Session, principal: Principal, feedback_id: int) -> Feedback:
    """The thread if the caller sees it (access.FEEDBACK_READ); 404 otherwise, as for none."""
    missing = NotFound(f"no feedback {feedback_id}", code="unknown_feedback")
    return tenancy.get(session, principal, FEEDBACK_READ, feedback_id, missing)


def replies(session: Session, row: Feedback) -> list[FeedbackReply]:
    return replies_of(session, [row.id])[row.id]


def replies_of(session: Session, feedback_ids: list[int]) -> dict[int, list[FeedbackReply]]:
    """The replies of each thread (oldest first), read in one query for a whole list of threads."""
    found: dict[int, list[FeedbackReply]] = {i: [] for i in feedback_ids}
    if feedback_ids:
        query = select(FeedbackReply).where(FeedbackReply.feedback_id.in_(feedback_ids))
        for reply_row in session.scalars(query.order_by(FeedbackReply.id)):
            found[reply_row.feedback_id].append(reply_row)
    return found


def list_feedback(
    session: Session,
    principal: Principal,
    organ: str | None = None,
    version: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[tuple[Feedback, ModelVersion]]:
    query = (
        select(Feedback, ModelVersion)
        .join(ModelVersion, Feedback.model_version_id == ModelVersion.id)
        .where(tenancy.where(principal, FEEDBACK_READ))
        .order_by(Feedback.id.desc())
        .limit(limit)
    )
    if organ:
        query = query.where(ModelVersion.organ == organ)
    if version:
        query = query.where(ModelVersion.version == version)
    if status:
        if status not in FEEDBACK_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(FEEDBACK_STATUSES)}", code="invalid_status")
        query = query.where(Feedback.status == status)
    return [(f, m) for f, m in session.execute(query).all()]


def reply(session: Session, principal: Principal, feedback_id: int, body: str) -> FeedbackReply:
    row = get(session, principal, feedback_id)
    reply_row = FeedbackReply(
        feedback_id=row.id, author_user_id=principal.user.id if principal.user else None, body=_body(body)
    )
    session.add(reply_row)
    row.updated_at = datetime.now(UTC)
    audit(session, principal.actor, "feedback.reply", f"feedback:{row.id}")
    session.commit()
    return reply_row


def update(
    session: Session,
    principal: Principal,
    feedback_id: int,
    *,
    status: str | None = None,
    addressed_by_version: str | None = None,
    shared: bool | None = None,
) -> Feedback:
    """Set the status, the version that addresses it and/or (access.FEEDBACK_SHARE: its author only)
    whether the thread is shared with the author's hospital's doctors."""
    row = get(session, principal, feedback_id)
    tenancy.check(
        session,
        principal,
        FEEDBACK_WRITE,
        row,
        "a doctor changes only the status of their own feedback",
        code="not_your_feedback",
    )
    if shared is not None:
        tenancy.check(
            session,
            principal,
            FEEDBACK_SHARE,
            row,
            "only the thread's author shares it or stops",
            code="not_your_feedback",
        )
        row.shared = shared
    if status is not None:
        if status not in FEEDBACK_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(FEEDBACK_STATUSES)}", code="invalid_status")
        row.status = status
    if addressed_by_version is not None:
        model = session.get(ModelVersion, row.model_version_id)
        row.addressed_by_version_id = model_registry.get_version(
            session, model.organ, addressed_by_version
        ).id
    row.updated_at = datetime.now(UTC)
    audit(
        session,
        principal.actor,
        "feedback.update",
        f"feedback:{row.id}",
        {"status": row.status, "addressed_by": addressed_by_version, "shared": row.shared},
    )
    session.commit()
    return row


def version_of(session: Session, version_id: int | None) -> str | None:
    if version_id is None:
        return None
    row = session.get(ModelVersion, version_id)
    return row.version if row else None


def segmentation_key(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None
