"""Typed dependencies of the HTTP routes, in one place: what a route needs (`SessionDep`, `SettingsDep`,
`DataPlaneDep`, `ClinicDep`) and who may call it.

A route declares who may call it by its operation's entry of the access table (gateway/access.py), e.g.
    ListDatasetsCaller = caller("datasets.list")  # Annotated[Principal, Depends(require(ACCESS[…]))]
and receives the `Principal` (a signed-in person or an API key) only if it may call the route:

* `Authorization: Bearer <key>` → the API key must grant one of the scopes (routes without scopes are
  for people only → 403);
* otherwise the session cookie → the person's role must be one of the roles; unsafe methods (POST, PUT,
  PATCH, DELETE) must also carry the session's CSRF token, as an `X-CSRF-Token` header or, from a
  server-rendered (urlencoded) form, a `csrf_token` field. API keys are not sent by browsers on their
  own, so requests with them need no CSRF token.
No credentials → 401; credentials that do not grant the route → 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from common.errors import Forbidden, Unauthenticated
from common.settings import Settings, get_settings
from gateway.access import ACCESS
from gateway.core.db import get_db
from gateway.principal import Access, Principal
from gateway.resources.accounts.service import csrf_matches, resolve_session
from gateway.security import KNOWN_SCOPES, authorize
from gateway.service import DataPlane
from gateway.service.clinic import Clinic

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]


def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]


def fresh_clinic(request: Request, session: SessionDep) -> Clinic:
    """The Clinic, with the model registry's defaults re-read when stale (what segment/evaluate serve)."""
    clinic: Clinic = request.app.state.clinic
    clinic.directory.refresh(session)
    return clinic


ClinicDep = Annotated[Clinic, Depends(fresh_clinic)]


# --- who may call ------------------------------------------------------------------------------------------
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


async def presented_csrf_token(request: Request) -> str | None:
    """The CSRF token the request carries (header, or the field of an urlencoded form), if any."""
    if request.method in SAFE_METHODS:
        return None
    if token := request.headers.get(CSRF_HEADER):
        return token
    # Only urlencoded forms are read here: they are small, and reading a multipart body would consume a
    # streamed upload (the dataset upload); multipart requests send the header.
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def require(access: Access) -> Callable[..., Principal]:
    """A dependency that returns the caller's Principal if `access` admits it (401/403 otherwise)."""

    def principal(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        csrf_token: Annotated[str | None, Depends(presented_csrf_token)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> Principal:
        if authorization:
            if not access.scopes:
                authorize(session, authorization, KNOWN_SCOPES)  # a forged or revoked key: 401 as anywhere
                raise Forbidden(f"API keys cannot call this; it needs {access.describe()}", code="forbidden")
            return Principal(api_key=authorize(session, authorization, access.scopes))
        token = request.cookies.get(settings.session_cookie_name)
        if not token:
            raise Unauthenticated(
                f"sign in first; this needs {access.describe()}", code="missing_credentials"
            )
        user_session, user = resolve_session(session, token)
        if request.method not in SAFE_METHODS and not csrf_matches(user_session, csrf_token):
            raise Forbidden(
                f"missing or wrong CSRF token: send the session's token as {CSRF_HEADER} "
                f"(or a '{CSRF_FIELD}' form field)",
                code="csrf_failed",
            )
        if not access.roles:
            raise Forbidden(f"people cannot call this; it needs {access.describe()}", code="forbidden")
        access.check_role(user)
        return Principal(user=user, session=user_session)

    principal.access = access  # which entry of the access table the route declared (the parity test reads it)
    return principal


def caller(operation: str) -> Any:
    """The type of a route's caller admitted by `operation`'s entry of the access table:
    `Annotated[Principal, Depends(require(ACCESS[operation]))]` (a KeyError names an unknown operation)."""
    return Annotated[Principal, Depends(require(ACCESS[operation]))]


# --- who may call, before an upload's body is read ------------------------------------------------------
class AuthenticateFirst(APIRoute):
    """A route class for upload routes declared with `Form`/`File` parameters: FastAPI reads (and spools) the
    whole form body before it solves any dependency, so a stranger's 60 MB would be read before the 401.
    Routes of this class run their `require(...)` check first, on the headers alone (credentials and the
    CSRF header), and only then hand the request to FastAPI's own handler, which reads the body and runs the
    dependencies as usual (so the check runs twice for an admitted caller: two indexed lookups).

    /api/v1/datasets gets the same order another way: it reads its body itself (gateway/api/multipart.py).
    An urlencoded body is left to the normal order (it is small, capped by the body limit, and may carry
    the CSRF token as a field, which the check here could not read without consuming it).
    """

    def get_route_handler(self):
        handler = super().get_route_handler()
        checks = [d.call for d in self.dependant.dependencies if hasattr(d.call, "access")]
        if self.body_field is None or not checks:
            return handler

        async def authenticated_first(request: Request):
            content_type = request.headers.get("content-type", "")
            if not content_type.startswith("application/x-www-form-urlencoded"):
                for check in checks:
                    await run_in_threadpool(_check_before_body, request, check)
            return await handler(request)

        return authenticated_first


def _check_before_body(request: Request, check: Callable[..., Principal]) -> None:
    """Run a `require(...)` check outside FastAPI's dependency solving, through the app's own (possibly
    overridden) database and settings dependencies."""
    overrides = request.app.dependency_overrides
    sessions = overrides.get(get_db, get_db)()
    try:
        check(
            request,
            next(sessions),
            overrides.get(get_settings, get_settings)(),
            request.headers.get(CSRF_HEADER) if request.method not in SAFE_METHODS else None,
            request.headers.get("authorization"),
        )
    finally:
        sessions.close()
