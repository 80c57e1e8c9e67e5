"""The web pages for doctors, researchers and admins: Jinja2 templates, Bootstrap (npm, `make assets`)
and small page scripts that call the gateway's own JSON API."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import MedSegError, http_headers
from common.settings import Settings
from gateway.api.log_redaction import redact_patient_ids
from gateway.api.security_headers import UNHANDLED_ERROR_HEADERS
from gateway.web.pages import (
    WEB_DIR,
    PageForbidden,
    SignInRequired,
    error_page,
    forbidden_page,
    is_page_request,
    router,
    sign_in_redirect,
)
from gateway.web.study_pages import router as study_router

logger = logging.getLogger(__name__)


API_DOCS = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>MedSeg API</title>
<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/js/api_docs.js"></script>
</body>
</html>
"""


def api_docs() -> HTMLResponse:
    """The interactive API documentation (Swagger UI from `make assets`, nothing from elsewhere)."""
    return HTMLResponse(API_DOCS)


FAVICON = WEB_DIR / "static" / "img" / "favicon.svg"


def favicon() -> FileResponse:
    """Browsers ask for /favicon.ico on every page whatever the page links: the same icon, not a 404."""
    return FileResponse(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


def install_web(app: FastAPI, settings: Settings) -> None:
    """Serve the pages and their static files on `app` (after its API error handlers are installed)."""
    if not (WEB_DIR / "static" / "vendor" / "bootstrap").is_dir():
        logger.warning("Bootstrap is missing under gateway/web/static/vendor: run `make assets`")
    app.state.web_settings = settings
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.include_router(router)
    app.include_router(study_router)
    app.add_api_route("/docs", api_docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/favicon.ico", favicon, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(SignInRequired, sign_in_redirect)
    app.add_exception_handler(PageForbidden, forbidden_page)
    install_error_pages(app)


def install_error_pages(app: FastAPI) -> None:
    """Errors on page URLs (unknown page, bad query, a failing dependency, a bug) become the styled HTML page
    in the base layout; on API paths the app's own handler answers with its JSON error shape, as before."""
    for exc_class, status in (
        (StarletteHTTPException, None),
        (RequestValidationError, 400),  # the API's handler maps FastAPI's 422 to 400 too
        (MedSegError, None),
        (Exception, 500),
    ):
        api_handler = app.exception_handlers[exc_class]
        app.add_exception_handler(exc_class, _page_or_api(api_handler, status))


def _page_or_api(api_handler, status: int | None):
    async def handle(request: Request, exc: Exception):
        if not is_page_request(request):
            return await api_handler(request, exc)
        code = status or getattr(exc, "status_code", None) or getattr(exc, "http_status", 500)
        headers = http_headers(exc)
        if status == 500:
            logger.error(
                "unhandled error on %s %s", request.method, redact_patient_ids(request.url.path), exc_info=exc
            )
            headers = UNHANDLED_ERROR_HEADERS  # answered outside SecurityHeadersMiddleware, as the API's 500
        elif code >= 500:
            logger.warning("%s on %s %s: %s", code, request.method, redact_patient_ids(request.url.path), exc)
        return error_page(request, code, headers=headers)

    return handle
