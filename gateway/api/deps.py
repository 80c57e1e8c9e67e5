"""Typed dependencies: a route declares what it needs (`SessionDep`, `DataPlaneDep`, `SegmentKey`…)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from common.errors import Forbidden, Unauthenticated
from common.settings import Settings, get_settings
from gateway.core.db import get_db
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


def authorize(session: Session, authorization: str | None, scopes: tuple[str, ...]) -> ApiKey:
    """The API key from an Authorization value if it grants any of `scopes` (Unauthenticated / Forbidden)."""
    raw_key = bearer_token(authorization)
    for scope in scopes[:-1]:
        try:
            return authenticate_api_key(session, raw_key, scope)
        except Forbidden:
            continue
    try:
        return authenticate_api_key(session, raw_key, scopes[-1])
    except Forbidden:
        if len(scopes) == 1:
            raise
        raise Forbidden(f"this API key needs one of the scopes {', '.join(scopes)}") from None
