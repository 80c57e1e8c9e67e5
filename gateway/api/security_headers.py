"""Security headers on every response (pages, API, static files, the body limit's 413), set once here.

Pages never load anything from elsewhere: hospital networks are often closed, and the policy stops
injected markup from running script even if an escape were ever missed. Scripts, styles and fonts come
from this origin only (gateway/web/static: no inline script or style but one vendor rule by its hash, no
CDN); images may also be `data:`/`blob:` URLs (result PNGs in base64, Bootstrap's SVG icons, the user's own
file previewed before upload). The interactive API docs (/docs) are Swagger UI from `make assets` with its
start-up in a static script; their policy differs only in allowing the style attributes Swagger UI sets while
rendering.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The one inline style a page may apply, by its hash: OpenSeadragon (the histology viewer, npm openseadragon
# 6.1.1) puts a <style> element in the page's head at start, "@media (hover: none) {    .openseadragon-canvas:
# focus {        outline: none !important;    }}" (no focus ring on touch screens). Nothing else inline runs;
# another version's text has another hash, refused (tests/web/test_viewer2d.py fails on the console error).
ALLOWED_INLINE_STYLES = ("'sha256-9xTiqzfwFaL2SGb1rmr8gysEwVVjIvqWAgmZgqFqpEE='",)

PAGE_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        " ".join(["style-src 'self'", *ALLOWED_INLINE_STYLES]),
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
DOCS_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # Swagger UI sets style attributes while it renders
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
    ]
)
DOCS_PATHS = ("/docs",)
# API answers carry patients' data, masks and (GET /api/v1/users/me) the session's CSRF token: no cache, the
# browser's or a proxy's, may keep any of them (the pages send the same header themselves).
API_PATHS = ("/api/",)
NO_STORE = "no-store"

COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # Page URLs carry patient ids (?patient_id=): never send them to another site.
    "referrer-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
    "cross-origin-opener-policy": "same-origin",
}
# For answers Starlette gives from its outermost layer (an unhandled exception's 500, JSON or HTML page),
# which SecurityHeadersMiddleware never sees: their handlers add these themselves.
UNHANDLED_ERROR_HEADERS = {
    **COMMON_HEADERS,
    "content-security-policy": PAGE_POLICY,
    "cache-control": NO_STORE,
}


class SecurityHeadersMiddleware:
    """Adds COMMON_HEADERS and the Content-Security-Policy to every HTTP response that lacks them, and
    `Cache-Control: no-store` to every /api/ answer (replacing any other caching header a route set)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.common = [(k.encode(), v.encode()) for k, v in COMMON_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope["path"].startswith(DOCS_PATHS)
        policy = (DOCS_POLICY if docs else PAGE_POLICY).encode()
        api = scope["path"].startswith(API_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if api:
                    headers = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
                    headers.append((b"cache-control", NO_STORE.encode()))
                present = {name.lower() for name, _ in headers}
                extra = [(k, v) for k, v in self.common if k not in present]
                if b"content-security-policy" not in present:
                    extra.append((b"content-security-policy", policy))
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
