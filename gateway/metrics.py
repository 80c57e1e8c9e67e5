"""Prometheus metrics of the gateway, defined once here and observed where each thing happens once:

* the HTTP edge: `HttpMetrics` (ASGI middleware) counts requests by route *template* (never the raw path,
  so ids do not multiply series), method and status; `main.error_response` counts error answers by code;
* the gRPC edge: the error-mapping interceptor counts calls by method and status code, errors by code
  (`count_grpc`);
* the service layer: segment / evaluate latency per organ and model version (`observe_latency`, so both
  edges share it), stability scores, chosen thresholds, the mean Dice of each version's latest evaluation,
  training jobs by state;
* the local stack: restarts per supervised program (`ProcessRestarts`, read when scraped).

Exposition: `render()` (the gateway's `/metrics`), or `serve(port)` on a port of its own, which is how the
cluster runs it (docs/operations.md: scraped inside the cluster, never routed through the public ingress).
Everything lives in one `REGISTRY`, not prometheus_client's process-global default, so several apps in one
test process share one set of series without registering twice.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

THRESHOLD_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the contract's threshold grid
STABILITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _metric(kind, name: str, documentation: str, labels: tuple[str, ...], **options):
    return kind(name, documentation, labels, registry=REGISTRY, **options)


HTTP_REQUESTS = _metric(
    Counter,
    "medseg_http_requests",
    "HTTP requests by route template, method and status",
    ("route", "method", "status"),
)
GRPC_REQUESTS = _metric(
    Counter, "medseg_grpc_requests", "gRPC calls by method and status code", ("method", "code")
)
ERRORS = _metric(
    Counter,
    "medseg_errors",
    "Error answers by edge (http, grpc) and error code (the `code` of {'error': {...}})",
    ("edge", "code"),
)
OPERATION_SECONDS = _metric(
    Histogram,
    "medseg_operation_duration_seconds",
    "Time of a successful segment / evaluate / evaluation (stored) by organ and model version, both edges",
    ("operation", "organ", "version"),
    buckets=LATENCY_BUCKETS,
)
CHOSEN_THRESHOLD = _metric(
    Histogram,
    "medseg_chosen_threshold",
    "Thresholds doctors saved for their segmentations, by organ and model version",
    ("organ", "version"),
    buckets=THRESHOLD_BUCKETS,
)
STABILITY = _metric(
    Histogram,
    "medseg_stability_score",
    "Stability of segmentations (Dice between the 0.2 and 0.8 masks) by organ and model version",
    ("organ", "version"),
    buckets=STABILITY_BUCKETS,
)
DOUBTFUL = _metric(
    Counter,
    "medseg_doubtful_segmentations",
    "Segmentations flagged doubtful (stability below MEDSEG_STABILITY_DOUBTFUL_BELOW)",
    ("organ", "version"),
)
EVALUATION_DICE = _metric(
    Gauge,
    "medseg_evaluation_mean_dice",
    "Mean Dice of the latest evaluation of each model version (purpose: test, promotion, or evaluate)",
    ("organ", "version", "purpose"),
)
TRAINING_JOBS = _metric(
    Gauge,
    "medseg_training_jobs",
    "Training jobs by state, as the database said at the last change this gateway made",
    ("state",),
)


class ProcessRestarts:
    """`medseg_process_restarts_total{program}`: each supervised program's automatic restarts, read at every
    scrape from the local stack's count (common/supervision.py: supervisord's event listener writes it); no
    series where no supervised stack runs (Kubernetes counts its pods' restarts itself)."""

    def __init__(self):
        self.state_dir = None  # set by `track_restarts` when an app is made

    def describe(self):
        return []  # unchecked collector: the programs are known only when scraped

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        from common.supervision import read_restarts

        family = CounterMetricFamily(
            "medseg_process_restarts",
            "Automatic restarts of each program of the local stack since its supervisord started",
            labels=("program",),
        )
        for program, count in sorted(read_restarts(self.state_dir).items() if self.state_dir else ()):
            family.add_metric((program,), count)
        yield family


PROCESS_RESTARTS = ProcessRestarts()
REGISTRY.register(PROCESS_RESTARTS)


def track_restarts(state_dir) -> None:
    """Export the restart counts of the stack whose state lives in `state_dir` (the gateway's own)."""
    PROCESS_RESTARTS.state_dir = state_dir


def observe_latency(operation: str, organ: str, version: str, started: float) -> None:
    """A successful operation that began at `started` (time.perf_counter()). Failures are not observed
    here: the edges count them as errors, so a burst of fast refusals does not flatter the latency."""
    OPERATION_SECONDS.labels(operation, organ, version).observe(time.perf_counter() - started)


def observe_segmentation(organ: str, version: str, stability: float, doubtful: bool) -> None:
    STABILITY.labels(organ, version).observe(stability)
    if doubtful:
        DOUBTFUL.labels(organ, version).inc()


def observe_chosen_threshold(organ: str, version: str, threshold: float) -> None:
    CHOSEN_THRESHOLD.labels(organ, version).observe(threshold)


def observe_evaluation(organ: str, version: str, purpose: str, mean_dice: float) -> None:
    EVALUATION_DICE.labels(organ, version, purpose).set(mean_dice)


def set_training_jobs(counts: dict[str, int], states: tuple[str, ...]) -> None:
    """Every known state gets a value (0 when no job is in it), so a state that empties drops to 0."""
    for state in states:
        TRAINING_JOBS.labels(state).set(counts.get(state, 0))


def count_error(edge: str, code: str) -> None:
    ERRORS.labels(edge, code).inc()


def count_grpc(method: str, status: str, error_code: str | None = None) -> None:
    """One gRPC call (gateway/grpc_server.ErrorMappingInterceptor, where errors are mapped)."""
    GRPC_REQUESTS.labels(method, status).inc()
    if error_code is not None:
        count_error("grpc", error_code)


def render() -> bytes:
    return generate_latest(REGISTRY)


def serve(port: int, addr: str = "0.0.0.0"):
    """`/metrics` on a port of its own (a daemon thread); returns the server, stop it with `.shutdown()`."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server


# --- the edges ----------------------------------------------------------------------------------------
class HttpMetrics:
    """ASGI middleware: one count per HTTP request, labelled with the route template the router matched
    (`route_template`), the method and the status."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            HTTP_REQUESTS.labels(route_template(scope), scope["method"], str(status)).inc()


def route_template(scope) -> str:
    """The matched route's template, e.g. `/api/v1/segmentations/{segmentation_id}/choice`: the request path
    with each path parameter's value put back as `{name}` (included routers only know their own part of the
    template, the path is whole). `unmatched` when no route matched."""
    if scope.get("route") is None:
        return "unmatched"
    path = scope["path"]
    segments = path.split("/")
    for name, raw in (scope.get("path_params") or {}).items():
        value = str(raw)
        if "/" in value:  # a {name:path} tail, e.g. a static file
            if value and path.endswith(value):
                segments = (path[: -len(value)] + "{" + name + "}").split("/")
            continue
        for i in range(len(segments) - 1, 0, -1):
            if segments[i] == value:
                segments[i] = "{" + name + "}"
                break
    return "/".join(segments)
