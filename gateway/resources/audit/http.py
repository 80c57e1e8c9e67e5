"""The audit log over HTTP (/api/v1/audit): pages and the CSV export."""

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from gateway import tenancy
from gateway.access import AUDIT_READ
from gateway.api.deps import SessionDep, caller
from gateway.resources.audit.schemas import AuditEntryPublic, AuditPagePublic
from gateway.resources.audit.service import audit_csv, audit_page
from gateway.resources.shared import BigRowId

router = APIRouter(prefix="/audit", tags=["audit"])

AuditListCaller = caller("audit.list")
AuditExportCaller = caller("audit.export")

ActionQ = Annotated[str | None, Query(max_length=64, description="exact, or a prefix ending in '.'")]
ActorQ = Annotated[
    str | None, Query(max_length=128, description="as logged (user:7:a@b.org), or an e-mail address")
]
TargetQ = Annotated[str | None, Query(max_length=256)]
TimeQ = Annotated[datetime | None, Query()]


@dataclass
class AuditFilters:
    """The query parameters both routes filter by (service.audit_query's arguments)."""

    action: ActionQ = None
    actor: ActorQ = None
    target: TargetQ = None
    since: TimeQ = None
    until: TimeQ = None


@dataclass
class AuditPageQuery(AuditFilters):
    """The filters, then which page (the order of the query parameters in the OpenAPI document)."""

    limit: Annotated[int, Query(ge=1, le=1000)] = 100
    before_id: Annotated[BigRowId | None, Query()] = None


@router.get("", response_model=AuditPagePublic)
def audit_log(
    admin: AuditListCaller,
    session: SessionDep,
    query: Annotated[AuditPageQuery, Depends()],
) -> AuditPagePublic:
    """Who did what and when, newest first, one page at a time (a hospital's admin: its entries)."""
    rows = audit_page(session, visible=tenancy.where(admin, AUDIT_READ), **asdict(query))
    return AuditPagePublic(
        entries=[AuditEntryPublic.model_validate(r) for r in rows],
        next_before_id=rows[-1].id if len(rows) == query.limit else None,
    )


@router.get("/export.csv", response_class=StreamingResponse)
def export_csv(
    admin: AuditExportCaller,
    session: SessionDep,
    filters: Annotated[AuditFilters, Depends()],
) -> StreamingResponse:
    """The (filtered) audit log as CSV, streamed (a hospital's admin: its entries)."""
    chunks = audit_csv(session, visible=tenancy.where(admin, AUDIT_READ), **asdict(filters))
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="medseg-audit.csv"'},
    )
