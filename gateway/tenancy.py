"""Which rows a caller reaches: the one place that enforces the `Rows` rules of the access table
(gateway/access.py) for both edges.

`where(principal, rule)` is the WHERE clause of the rows of `rule.resource` the caller reaches (lists filter
with it); `get(...)` loads one row through the same clause and answers 404 (NotFound) for a row the caller
may not see, so that ids of other hospitals' rows are not revealed; `allows(...)` checks an action on a row
already loaded (403 for a row the caller sees but may not change).

The caller's relation to a row (access.RELATIONS): own (the person or the key that made it), hospital (the
row's hospital is the caller's), shared (`SHARED` below: with this kind of caller), any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, exists, false, or_, select, true
from sqlalchemy.orm import Session

from common.errors import Forbidden, NotFound
from gateway.access import Rows
from gateway.models import (
    ApiKey,
    AuditLog,
    Dataset,
    Evaluation,
    EvaluationCase,
    EvaluationJob,
    Feedback,
    Segmentation,
    Study,
    User,
)
from gateway.principal import Principal
from gateway.security import ADMIN_SCOPE


@dataclass(frozen=True)
class Owned:
    """How a resource's table names its owner (person, key; None: nobody owns its rows) and hospital."""

    model: type
    user: object
    key: object
    hospital: object
    lookup: object = None  # the column a caller names a row by, when not the primary key (a key's prefix)


RESOURCES = {
    "dataset": Owned(Dataset, Dataset.uploaded_by_user_id, Dataset.uploaded_by_api_key_id, Dataset.hospital),
    "evaluation": Owned(Evaluation, Evaluation.user_id, Evaluation.api_key_id, Evaluation.hospital),
    "feedback": Owned(Feedback, Feedback.author_user_id, Feedback.author_api_key_id, Feedback.hospital),
    "segmentation": Owned(Segmentation, Segmentation.user_id, Segmentation.api_key_id, Segmentation.hospital),
    "study": Owned(Study, Study.user_id, Study.api_key_id, Study.hospital),
    "evaluation_job": Owned(
        EvaluationJob, EvaluationJob.user_id, EvaluationJob.api_key_id, EvaluationJob.hospital
    ),
    # administration: a person's own account is theirs; keys and audit entries are nobody's own
    "user": Owned(User, User.id, None, User.hospital),
    "api_key": Owned(ApiKey, None, None, ApiKey.hospital, lookup=ApiKey.prefix),
    "audit": Owned(AuditLog, None, None, AuditLog.hospital),
}


def _attached_or_promotion() -> ColumnElement[bool]:
    """An evaluation a feedback thread attaches one of its cases to (attaching is sharing), or that a
    promotion ran (the evidence researchers decide on)."""
    attached = exists(
        select(Feedback.id)
        .join(EvaluationCase, Feedback.evaluation_case_id == EvaluationCase.id)
        .where(EvaluationCase.evaluation_id == Evaluation.id)
    )
    return or_(Evaluation.purpose == "promotion", attached)


def _shared_in_hospital(principal: Principal) -> ColumnElement[bool]:
    if not principal.hospital:
        return false()
    return and_(Feedback.shared.is_(True), Feedback.hospital == principal.hospital)


# (resource, kind of caller) → the rows shared with that caller; a pair not here shares nothing.
SHARED: dict[tuple[str, str], Callable[[Principal], ColumnElement[bool]]] = {
    ("dataset", "researcher"): lambda p: true(),  # every dataset is submitted to the researchers
    ("evaluation", "researcher"): lambda p: _attached_or_promotion(),
    ("feedback", "researcher"): lambda p: true(),  # feedback is addressed to the researchers
    ("feedback", "doctor"): _shared_in_hospital,  # threads their authors share with the hospital
}


def kind(principal: Principal) -> str:
    """doctor | researcher | admin (a hospital's) | platform (an admin without a hospital) | key (a hospital
    system's; an admin-scoped key is an admin)."""
    if principal.user is not None:
        role = principal.user.role
        if role == "admin" and not principal.user.hospital:
            return "platform"
        return role
    if ADMIN_SCOPE in (principal.api_key.scopes or []):  # an admin system: its hospital's, or the platform's
        return "admin" if principal.api_key.hospital else "platform"
    return "key"


def relation_clauses(principal: Principal, resource: str) -> dict[str, ColumnElement[bool]]:
    """relation → the WHERE clause of the rows of `resource` in that relation to the caller."""
    owned = RESOURCES[resource]
    if principal.user is not None:
        own = owned.user == principal.user.id if owned.user is not None else false()
    else:
        own = owned.key == principal.api_key.id if owned.key is not None else false()
    shared = SHARED.get((resource, kind(principal)))
    return {
        "own": own,
        "hospital": owned.hospital == principal.hospital if principal.hospital else false(),
        "shared": shared(principal) if shared else false(),
        "any": true(),
    }


def where(principal: Principal, rule: Rows) -> ColumnElement[bool]:
    """The rows of `rule.resource` the caller reaches by `rule`."""
    relations = rule.relations(kind(principal))
    if "any" in relations:
        return true()
    clauses = relation_clauses(principal, rule.resource)
    return or_(false(), *(clauses[r] for r in sorted(relations)))


def get(session: Session, principal: Principal, rule: Rows, ident, not_found: NotFound):
    """The row `ident` (its primary key, or the resource's `lookup` column) of `rule.resource` if the caller
    reaches it; `not_found` otherwise."""
    owned = RESOURCES[rule.resource]
    column = owned.lookup if owned.lookup is not None else owned.model.__mapper__.primary_key[0]
    row = session.scalar(select(owned.model).where(column == ident, where(principal, rule)))
    if row is None:
        raise not_found
    return row


def allows(session: Session, principal: Principal, rule: Rows, row) -> bool:
    """Whether `rule` admits the caller to `row` (already loaded)."""
    model = RESOURCES[rule.resource].model
    pk = model.__mapper__.primary_key[0]
    ident = getattr(row, pk.key)
    return bool(session.scalar(select(exists().where(pk == ident, where(principal, rule)))))


def check(session: Session, principal: Principal, rule: Rows, row, message: str, *, code: str) -> None:
    """403 (`code`, `message`) unless `rule` admits the caller to `row`, a row it already sees (else it would
    be a 404)."""
    if not allows(session, principal, rule, row):
        raise Forbidden(message, code=code)
