"""`medseg serve`: the gateway (HTTP + gRPC in one process) in the foreground."""

from __future__ import annotations

import logging

import uvicorn

from common.model_store import fetch_shipped_cards
from common.settings import Settings, get_settings
from gateway import metrics
from gateway.commands.users import bootstrap_admin
from gateway.core.db import run_migrations, session_scope
from gateway.grpc_server import create_server
from gateway.main import create_app
from gateway.service import build_dataplane
from gateway.service.model_registry import seed_from_model_store

logger = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    """Run the gateway in this process: migrations, gRPC server, then uvicorn until SIGTERM/SIGINT."""
    run_migrations()
    bootstrap_admin(settings)  # the first admin from MEDSEG_ADMIN_EMAIL / MEDSEG_ADMIN_PASSWORD, once
    dataplane = build_dataplane(settings)
    app = create_app(settings, dataplane)
    if settings.model_rollout == "kubernetes":  # the shipped models are in the bucket (the seed Job's)
        fetch_shipped_cards(dataplane.store, settings.model_store_dir)
    with session_scope() as session:  # the shipped models become the registry's defaults, once
        seed_from_model_store(session, dataplane.registry)
        app.state.clinic.promotions.serve_registered(session)  # the organ servers serve what it names
        app.state.clinic.directory.refresh(session, force=True)
        app.state.clinic.jobs.mark_interrupted(session)  # jobs a previous gateway left running: failed
    # finished training is recorded within a period, not only when someone reads the training API
    app.state.clinic.jobs.watch(session_scope)
    metrics_server = None
    if settings.metrics_port is not None:  # /metrics beside, not on, the HTTP port (docs/operations.md)
        metrics_server = metrics.serve(settings.metrics_port, settings.http_host)
        logger.info("Prometheus metrics on %s:%d/metrics", settings.http_host, settings.metrics_port)
    grpc_server, grpc_port = create_server(
        f"{settings.grpc_host}:{settings.grpc_port}",
        dataplane,
        session_scope,
        clinic=app.state.clinic,  # one model directory and one set of training workers for both edges
        max_message_bytes=settings.grpc_max_message_bytes,
    )
    grpc_server.start()
    logger.info("gRPC medseg.v1 on %s:%d", settings.grpc_host, grpc_port)
    # the study workers: queued studies, and those a stopped gateway left running, are taken up now
    app.state.clinic.studies.start()
    app.state.clinic.evaluation_jobs.start()  # and the evaluations run in the background
    try:
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            timeout_graceful_shutdown=10,
            log_config=None,
            # C parsers and event loop (pinned in pyproject): uvicorn's pure-Python h11 and asyncio loop
            # cost the HTTP edge several ms of CPU per segmentation (tools.bench, README)
            loop="uvloop",
            http="httptools",
        )
        uvicorn.Server(config).run()  # handles SIGTERM / SIGINT itself
    finally:
        app.state.clinic.jobs.stop_watching()
        grpc_server.stop(grace=5).wait()
        if metrics_server is not None:
            metrics_server.shutdown()
        dataplane.close()
    return 0


# --- stack -------------------------------------------------------------------------------------------


def add_commands(subparsers) -> None:
    serve_parser = subparsers.add_parser("serve", help="run the gateway (HTTP and gRPC) in the foreground")
    serve_parser.set_defaults(func=lambda args: serve(get_settings()))
