"""Reading the audit log (admins: their hospital's entries, a platform admin all): filtered pages and a
streamed CSV export. Writing is models.audit()."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from gateway.models import AuditLog

CSV_COLUMNS = ("id", "at", "actor", "action", "target", "detail")


def audit_query(
    *,
    visible: ColumnElement[bool] | None = None,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select:
    """Newest first; `visible`: only those entries (an admin's: access.AUDIT_READ through gateway/tenancy.py);
    `action` matches exactly or as a prefix ending in '.' ("user." → every user.* action); `actor` as the log
    writes it ("user:7:a@b.org", "ip:…") or a person's e-mail address ("a@b.org")."""
    since, until = _utc(since), _utc(until)
    query = select(AuditLog)
    if visible is not None:
        query = query.where(visible)
    if action:
        query = query.where(
            AuditLog.action.startswith(action, autoescape=True)
            if action.endswith(".")
            else AuditLog.action == action
        )
    if actor:
        query = query.where(_actor_matches(actor.strip()))
    if target:
        query = query.where(AuditLog.target == target)
    if since:
        query = query.where(AuditLog.at >= since)
    if until:
        query = query.where(AuditLog.at < until)
    return query.order_by(AuditLog.id.desc())


def _actor_matches(actor: str):
    """The log's own form exactly; an e-mail address also as the person the log names "user:<id>:<e-mail>"
    (addresses are stored lower-case, so it matches in any case)."""
    exact = AuditLog.actor == actor
    if "@" not in actor or actor.startswith("user:"):
        return exact
    as_person = and_(
        AuditLog.actor.startswith("user:"), AuditLog.actor.endswith(":" + actor.lower(), autoescape=True)
    )
    return or_(exact, as_person)


def audit_page(session: Session, *, limit: int, before_id: int | None = None, **filters) -> list[AuditLog]:
    """One page; the next page starts `before_id` = the last row's id (stable while rows are appended)."""
    query = audit_query(**filters)
    if before_id is not None:
        query = query.where(AuditLog.id < before_id)
    return list(session.scalars(query.limit(limit)))


def audit_csv(session: Session, **filters) -> Iterator[str]:
    """CSV text in chunks (header first), read from the database in batches, never all rows at once."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    rows = session.scalars(audit_query(**filters).execution_options(yield_per=500))
    for n, row in enumerate(rows, start=1):
        writer.writerow(
            [
                row.id,
                row.at.isoformat(),
                _cell(row.actor),
                row.action,
                _cell(row.target or ""),
                json.dumps(row.detail, sort_keys=True) if row.detail else "",
            ]
        )
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _utc(value: datetime | None) -> datetime | None:
    """Times without a zone are taken as UTC (the log's zone)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _cell(value: str) -> str:
    """Neutralise spreadsheet formulas: a cell starting with = + - @ is read as a formula by Excel."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value
