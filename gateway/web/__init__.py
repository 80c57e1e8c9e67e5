"""The web pages for doctors, researchers and admins: Jinja2 templates, Bootstrap (npm, `make assets`)
and small page scripts that call the gateway's own JSON API."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gateway.core.config import Settings
from gateway.web.pages import WEB_DIR, PageForbidden, SignInRequired, forbidden_page, router, sign_in_redirect

logger = logging.getLogger(__name__)


def install_web(app: FastAPI, settings: Settings) -> None:
    """Serve the pages and their static files on `app`."""
    if not (WEB_DIR / "static" / "vendor" / "bootstrap").is_dir():
        logger.warning("Bootstrap is missing under gateway/web/static/vendor: run `make assets`")
    app.state.web_settings = settings
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.include_router(router)
    app.add_exception_handler(SignInRequired, sign_in_redirect)
    app.add_exception_handler(PageForbidden, forbidden_page)
