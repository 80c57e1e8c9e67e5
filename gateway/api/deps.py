"""Typed dependencies: a route declares what it needs (`SessionDep`, `DataPlaneDep`, `SegmentKey`…)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from gateway.core.config import Settings, get_settings
from gateway.core.db import get_db
from gateway.errors import Unauthenticated
from gateway.models import ApiKey
from gateway.security import authenticate_api_key
from gateway.service import DataPlane

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]


def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]


def bearer_token(authorization: str | None) -> str:
    """The key from an `Authorization: Bearer <key>` value (HTTP header or gRPC metadata)."""
    if not authorization:
        raise Unauthenticated("send an API key: Authorization: Bearer <key>", code="missing_credentials")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <key>'", code="invalid_credentials")
    return token.strip()


def require_scope(scope: str | None) -> Callable[..., ApiKey]:
    def api_key(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> ApiKey:
        return authenticate_api_key(session, bearer_token(authorization), scope)

    return api_key


AnyApiKey = Annotated[ApiKey, Depends(require_scope(None))]
SegmentApiKey = Annotated[ApiKey, Depends(require_scope("segment"))]
EvaluateApiKey = Annotated[ApiKey, Depends(require_scope("evaluate"))]
