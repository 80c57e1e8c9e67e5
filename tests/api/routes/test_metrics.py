"""Prometheus /metrics: after a segment, a saved threshold and evaluations through the API, the exposition
carries the expected series with their labels, each moved by exactly what was done (the registry is shared
by the whole test process, so every check is a difference between two scrapes)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from common.errors import InvalidInput
from common.launcher import free_port
from gateway import crud, metrics
from gateway.models import ModelVersion, TrainingJob
from tests.api.conftest import _database, png, small_dataset_zip
from tests.gateway.fakes import FakeClient

SQUARE = np.pad(np.full((8, 8), 255, np.uint8), 12)


@pytest.fixture(scope="module", params=["sqlite"])
def people_db(request, tmp_path_factory):
    """Metrics do not depend on the database backend: SQLite only."""
    yield from _database(request, tmp_path_factory)


def _confident(h, w):  # the label square, confidently: stability 1.0
    return np.pad(np.full((8, 8), 250, np.uint8), 12)


@pytest.fixture(scope="module")
def app_world(world):
    app = world.app()
    app.state.dataplane.clients["liver"] = FakeClient(_confident)
    app.state.dataplane.record_segmentation = crud.record_segmentation
    with world.session() as session:
        session.add(
            ModelVersion(organ="liver", model_name="liver", version="m1", state="default",
                         default_threshold=0.5, created_by="test")
        )  # fmt: skip
    app.state.clinic.directory.invalidate()
    return world


def scrape(world) -> dict[tuple[str, frozenset], float]:
    response = world.client("anonymous").get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before, after, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _segment(client, organ="liver"):
    return client.post(
        "/api/v1/segment",
        data={"organ": organ, "patient_id": "P-METRICS"},
        files={"file": ("scan.png", png(np.full((32, 32), 120, np.uint8)))},
    )


def test_segment_choice_and_evaluations_show_in_metrics(app_world):
    world = app_world
    doctor = world.client("doctor")
    before = scrape(world)

    segmented = _segment(doctor)
    assert segmented.status_code == 200, segmented.text
    chosen = doctor.post(
        f"/api/v1/segmentations/{segmented.json()['id']}/choice", json={"threshold": 0.4, "note": "ok"}
    )
    assert chosen.status_code == 200, chosen.text
    files = [
        ("images", ("a.png", png(np.full((32, 32), 40, np.uint8)))),
        ("labels", ("a_mask.png", png(SQUARE))),
    ]
    stored = doctor.post("/api/v1/evaluations", data={"organ": "liver", "version": "m1"}, files=files)
    assert stored.status_code == 201, stored.text
    adhoc = doctor.post("/api/v1/evaluate", data={"organ": "liver"}, files=files)
    assert adhoc.status_code == 200, adhoc.text
    assert _segment(doctor, organ="kidney").status_code == 404
    assert doctor.get("/api/v1/no-such-route").status_code == 404

    after = scrape(world)
    http = "medseg_http_requests_total"
    assert delta(before, after, http, route="/api/v1/segment", method="POST", status="200") == 1
    assert delta(before, after, http, route="/api/v1/segment", method="POST", status="404") == 1
    choice_route = "/api/v1/segmentations/{segmentation_id}/choice"
    assert delta(before, after, http, route=choice_route, method="POST", status="200") == 1
    assert delta(before, after, http, route="/api/v1/evaluations", method="POST", status="201") == 1
    assert delta(before, after, http, route="unmatched", method="GET", status="404") == 1
    assert delta(before, after, "medseg_errors_total", edge="http", code="unknown_organ") == 1

    latency = "medseg_operation_duration_seconds_count"
    for operation in ("segment", "evaluation", "evaluate"):
        assert delta(before, after, latency, operation=operation, organ="liver", version="m1") == 1, operation
    assert delta(before, after, "medseg_operation_duration_seconds_sum", operation="segment", organ="liver",
                 version="m1") > 0  # fmt: skip

    stability = segmented.json()["stability"]
    assert delta(before, after, "medseg_stability_score_count", organ="liver", version="m1") == 1
    assert delta(before, after, "medseg_stability_score_sum", organ="liver", version="m1") == pytest.approx(
        stability
    )
    assert delta(before, after, "medseg_stability_score_bucket", organ="liver", version="m1", le="0.9") == (
        1 if stability <= 0.9 else 0
    )

    chosen_bucket = "medseg_chosen_threshold_bucket"
    assert delta(before, after, chosen_bucket, organ="liver", version="m1", le="0.3") == 0
    assert delta(before, after, chosen_bucket, organ="liver", version="m1", le="0.4") == 1
    assert delta(before, after, "medseg_chosen_threshold_sum", organ="liver", version="m1") == pytest.approx(
        0.4
    )

    dice = "medseg_evaluation_mean_dice"
    assert value(after, dice, organ="liver", version="m1", purpose="test") == pytest.approx(
        stored.json()["mean_dice"]
    )
    assert value(after, dice, organ="liver", version="m1", purpose="evaluate") == pytest.approx(
        adhoc.json()["mean_dice"]
    )


class _IdleLauncher:
    """A launcher whose trainers never end by themselves (the job states are the point)."""

    uploads_model = False

    def start(self, job, request):
        return None

    def poll(self, job):
        return None

    def cancel(self, job):
        return {}

    def interrupted(self, job):
        return None

    def metrics(self, job):
        return None

    def log_tail(self, job, chars=None):
        return ""

    def held(self):
        return set()

    def stop_all(self):
        pass


def _jobs_in(world, state: str) -> int:
    with world.session() as session:
        return session.scalar(select(func.count()).select_from(TrainingJob).where(TrainingJob.state == state))


def test_training_jobs_by_state(app_world):
    world = app_world
    jobs = world.app().state.clinic.jobs
    jobs.launcher, jobs.max_running = _IdleLauncher(), 1000
    upload = world.client("doctor").post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("d.zip", small_dataset_zip(2))}
    )
    assert upload.status_code == 201, upload.text
    researcher = world.client("researcher")
    body = {"organ": "liver", "dataset_id": upload.json()["id"], "arch": "erunet", "minutes": 1, "epochs": 1}
    started = [researcher.post("/api/v1/training/jobs", json=body) for _ in range(2)]
    assert [r.status_code for r in started] == [201, 201], started[0].text

    samples = scrape(world)
    assert value(samples, "medseg_training_jobs", state="running") == _jobs_in(world, "running") >= 2
    assert value(samples, "medseg_training_jobs", state="cancelled") == _jobs_in(world, "cancelled")

    cancelled = researcher.post(f"/api/v1/training/jobs/{started[0].json()['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    after = scrape(world)
    assert delta(samples, after, "medseg_training_jobs", state="running") == -1
    assert delta(samples, after, "medseg_training_jobs", state="cancelled") == 1


def test_with_a_metrics_port_the_http_port_has_no_metrics(app_world):
    world = app_world
    settings = world.settings.model_copy(update={"metrics_port": free_port()})
    assert world.client("anonymous", settings=settings).get("/metrics").status_code == 404
    server = metrics.serve(settings.metrics_port, "127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=5).text
    finally:
        server.shutdown()
    assert (
        "# TYPE medseg_http_requests_total counter" in text or "# TYPE medseg_http_requests counter" in text
    )
    assert "medseg_operation_duration_seconds_bucket" in text


def test_grpc_calls_and_errors_are_counted_where_they_are_mapped():
    import grpc

    from gateway.grpc_server import ErrorMappingInterceptor

    class Aborted(Exception):
        pass

    class Context:
        def set_trailing_metadata(self, metadata):
            self.trailing = dict(metadata)

        def abort(self, code, message):
            self.code = code
            raise Aborted(message)

    def fails(request, context):
        raise InvalidInput("bad image", code="invalid_image")

    def handler_of(fn):
        return lambda details: grpc.unary_unary_rpc_method_handler(fn)

    details = type("Details", (), {"method": "/medseg.v1.Segmentation/Segment"})()
    interceptor = ErrorMappingInterceptor()

    def now():
        text = metrics.render().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    before = now()
    ok = interceptor.intercept_service(handler_of(lambda request, context: "answer"), details)
    assert ok.unary_unary(b"", Context()) == "answer"
    context = Context()
    with pytest.raises(Aborted):
        interceptor.intercept_service(handler_of(fails), details).unary_unary(b"", context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    after = now()
    grpc_calls, method = "medseg_grpc_requests_total", details.method
    assert delta(before, after, grpc_calls, method=method, code="OK") == 1
    assert delta(before, after, grpc_calls, method=method, code="INVALID_ARGUMENT") == 1
    assert delta(before, after, "medseg_errors_total", edge="grpc", code="invalid_image") == 1
