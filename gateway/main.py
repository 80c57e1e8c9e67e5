"""FastAPI app factory. Errors are mapped to `{"error": {"code", "message"}}` here, once for the HTTP edge."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import MedSegError, http_headers
from common.settings import Settings, get_settings
from gateway import metrics
from gateway.api import log_redaction, openapi
from gateway.api.disk import DiskGuardMiddleware
from gateway.api.security_headers import UNHANDLED_ERROR_HEADERS, SecurityHeadersMiddleware
from gateway.api.uploads import FORM_OVERHEAD_BYTES, BodyLimitMiddleware
from gateway.resources.accounts import http as accounts
from gateway.resources.audit import http as audit
from gateway.resources.datasets import http as datasets
from gateway.resources.evaluations import http as evaluations
from gateway.resources.feedback import http as feedback
from gateway.resources.health import http as health
from gateway.resources.keys import http as keys
from gateway.resources.models import http as models
from gateway.resources.organs import http as organs
from gateway.resources.pacs import http as pacs
from gateway.resources.segmentations import http as segmentations
from gateway.resources.shared import validation_message, validation_params
from gateway.resources.studies import http as studies
from gateway.resources.training import http as training
from gateway.service import DataPlane, build_dataplane
from gateway.service.clinic import Clinic
from gateway.web import install_web

logger = logging.getLogger(__name__)

STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error_response(
    status: int, code: str, message: str, headers: dict | None = None, params: dict | None = None
) -> JSONResponse:
    """The error shape: `{"error": {"code", "message"}}`, with `params` (what the message names) when any."""
    metrics.count_error("http", code)
    error = {"code": code, "message": message, **({"params": params} if params else {})}
    return JSONResponse(status_code=status, content={"error": error}, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MedSegError)
    async def medseg_error(_: Request, exc: MedSegError) -> JSONResponse:
        if exc.http_status >= 500:
            logger.warning("%s: %s", exc.code, exc.message)
        return error_response(
            exc.http_status, exc.code, exc.message, headers=http_headers(exc), params=exc.params
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 becomes our 400 with the field named: a client mistake like any other.
        return error_response(400, "invalid_input", validation_message(exc), params=validation_params(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=http_headers(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        path = log_redaction.redact_patient_ids(request.url.path)
        logger.exception("unhandled error on %s %s", request.method, path)
        message = "internal error; the gateway logged the details"
        return error_response(500, "internal", message, headers=UNHANDLED_ERROR_HEADERS)


def create_app(settings: Settings | None = None, dataplane: DataPlane | None = None) -> FastAPI:
    """The HTTP edge. Without `dataplane`, one is built from `settings` at startup and closed at shutdown."""
    settings = settings or get_settings()
    log_redaction.install()  # no patient id in the access log (uvicorn.access)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = dataplane is None
        app.state.dataplane = dataplane or build_dataplane(settings)
        if owned or not hasattr(app.state, "clinic"):
            app.state.clinic = Clinic(app.state.dataplane, settings)
        if owned:  # a serving gateway takes up queued studies, and those a stopped gateway left running
            app.state.clinic.studies.start()
            app.state.clinic.evaluation_jobs.start()
        try:
            yield
        finally:
            app.state.clinic.studies.close()
            app.state.clinic.evaluation_jobs.close()
            if owned:
                app.state.dataplane.close()

    # /docs is served by gateway.web from this server's own files (FastAPI's default loads Swagger UI from a
    # CDN, which a closed hospital network cannot reach); no ReDoc.
    app = FastAPI(title="MedSeg", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings  # the disk guard's and /readyz's floor (gateway/api/disk.py)
    if dataplane is not None:  # usable without running the lifespan (e.g. TestClient without `with`)
        app.state.dataplane = dataplane
        app.state.clinic = Clinic(dataplane, settings)
    install_error_handlers(app)
    openapi.install(app)  # the error statuses and the organ / patient-ID patterns in the document
    api = APIRouter(prefix="/api/v1")
    # In the order of the OpenAPI document; a resource may serve two URL roots (e.g. /evaluate, /evaluations).
    for router in (
        organs.router,
        segmentations.segment_router,
        evaluations.evaluate_router,
        accounts.router,
        accounts.users_router,
        keys.router,
        datasets.router,
        audit.router,
        models.router,
        evaluations.router,
        evaluations.jobs_router,
        feedback.router,
        segmentations.router,
        studies.router,
        pacs.router,
        training.router,
    ):
        api.include_router(router)
    app.include_router(health.router)
    app.include_router(api)
    metrics.track_restarts(settings.state_dir)  # the local stack's restart counts (common/supervision.py)
    if settings.metrics_port is None:  # else on a port of its own (metrics.serve), out of the ingress's reach
        # Unauthenticated, like every Prometheus target: counts and labels only, never patients or people.
        @app.get("/metrics", include_in_schema=False)
        def prometheus_metrics() -> Response:
            return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    install_web(app, settings)  # the pages (gateway/web): they call the API above
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_request_bytes,
        limits={
            "/api/v1/segment": settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
            "/api/v1/datasets": settings.max_dataset_upload_bytes + FORM_OVERHEAD_BYTES,
            "/api/v1/studies": settings.study_max_bytes + FORM_OVERHEAD_BYTES * 16,
        },
    )
    app.add_middleware(DiskGuardMiddleware, settings=settings)  # 507 before the body limit reads anything
    app.add_middleware(SecurityHeadersMiddleware)  # outside the body limit: its 413 gets the headers too
    app.add_middleware(metrics.HttpMetrics)  # outermost: counts every answer, refusals included
    return app
