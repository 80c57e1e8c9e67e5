"""The browser session's cookies: the session token (HttpOnly) and its CSRF token (readable by the pages)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import Request, Response

from common.settings import Settings
from gateway.models import UserSession


def cookie_secure(request: Request, settings: Settings) -> bool:
    """Secure cookies behind TLS: forced by setting, always in production, else when the request was https."""
    if settings.session_cookie_secure is not None:
        return settings.session_cookie_secure
    return settings.environment == "production" or request.url.scheme == "https"


def set_session_cookies(
    response: Response, request: Request, settings: Settings, raw_token: str, user_session: UserSession
) -> None:
    secure = cookie_secure(request, settings)
    max_age = int(timedelta(hours=settings.session_ttl_hours).total_seconds())
    response.set_cookie(
        settings.session_cookie_name, raw_token, max_age=max_age, httponly=True, samesite="lax",
        secure=secure, path="/",
    )  # fmt: skip
    # Readable by the page's scripts (not HttpOnly): they echo it in X-CSRF-Token. Alone it grants nothing.
    response.set_cookie(
        settings.csrf_cookie_name, user_session.csrf_token, max_age=max_age, httponly=False,
        samesite="lax", secure=secure, path="/",
    )  # fmt: skip


def clear_session_cookies(response: Response, request: Request, settings: Settings) -> None:
    secure = cookie_secure(request, settings)
    for name, httponly in ((settings.session_cookie_name, True), (settings.csrf_cookie_name, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=httponly, samesite="lax")
