"""Evaluations as background jobs (issue 23: long work not held in a request): `POST /api/v1/evaluations`
with `Prefer: respond-async` answers 202 at once, the job is polled at its Location until done (the kept
evaluation) or failed (the error the request would have answered); bad input is refused before anything is
stored; an organ server that goes down fails the job cleanly; a queued job can be cancelled; a worker that
stopped is replaced. The organ server is a fake that answers per version; database and gateway are real."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from sqlalchemy import func, select

from common.errors import ServiceUnavailable
from gateway.models import AuditLog, Evaluation, EvaluationJob, ModelVersion
from services.imaging import decode_image
from tests.api.conftest import png

SIZE = 32
SQUARE = np.pad(np.full((8, 8), 255, np.uint8), 12)
WAIT_S = 30.0
ASYNC = {"Prefer": "respond-async"}


class Organ:
    """Answers the label itself (version "1") or a quarter of it (version "2"); `down`: unavailable;
    `hold`: each call waits until it is cleared (a job kept running)."""

    def __init__(self):
        self.down, self.calls = False, 0

    def predict(self, model_name, data, version=None, timeout=None):
        if self.down:
            raise ServiceUnavailable("organ server 'liver' unavailable", code="organ_unavailable")
        self.calls += 1
        height, width = decode_image(data).array.shape[:2]
        out = np.zeros((height, width), np.uint8)
        out[12:20, 12 : 20 if version == "1" else 14] = 250
        return png(out)


@pytest.fixture(scope="module")
def jobs(world):
    app = world.app()
    organ = Organ()
    app.state.dataplane.clients["liver"] = organ
    with world.session() as session:
        for version, state in (("1", "default"), ("2", "candidate")):
            session.add(
                ModelVersion(
                    organ="liver", model_name="liver", version=version, state=state,
                    default_threshold=0.5, created_by="test",
                )
            )  # fmt: skip
    app.state.clinic.directory.invalidate()
    settings = app.state.clinic.evaluation_jobs.settings
    app.state.clinic.evaluation_jobs.settings = settings.model_copy(
        update={"study_poll_s": 0.05, "study_stale_after_s": 1.0}
    )
    yield world, organ
    organ.down = False


def _files(names=("a", "b", "c")):
    files = []
    for n, name in enumerate(names):
        files.append(("images", (f"{name}.png", png(np.full((SIZE, SIZE), 40 + n, np.uint8)))))
        files.append(("labels", (f"{name}_mask.png", png(SQUARE))))
    return files


def _submit(client, version="1", files=None, headers=ASYNC, **data):
    return client.post(
        "/api/v1/evaluations",
        data={"organ": "liver", "version": version, **data},
        files=files if files is not None else _files(),
        headers=headers,
    )


def _until_finished(client, url: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        body = client.get(url).json()
        if body["status"] in ("done", "failed"):
            return body
        assert time.monotonic() < deadline, f"job still {body['status']} after {WAIT_S} s: {body}"
        time.sleep(0.05)


def _counts(world) -> tuple[int, int, int]:
    """Evaluation jobs, evaluations and stored objects under evaluation-jobs/ (the uploaded cases)."""
    with world.session() as session:
        counts = (
            session.scalar(select(func.count()).select_from(EvaluationJob)),
            session.scalar(select(func.count()).select_from(Evaluation)),
        )
    waiting = [key for (_, key) in world.store.objects if key.startswith("evaluation-jobs/")]
    return (*counts, len(waiting))


def test_queued_at_once_then_done_and_kept_as_the_request_would_have_kept_it(jobs):
    world, _ = jobs
    doctor = world.client("doctor")
    answer = _submit(doctor)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["Location"] == job["url"] == f"/api/v1/evaluation-jobs/{job['id']}"
    assert answer.headers["Preference-Applied"] == "respond-async"
    assert job["status"] in ("queued", "running", "done") and job["case_count"] == 3
    assert job["model_version"] == "1"

    done = _until_finished(doctor, job["url"])
    assert done["status"] == "done", done
    assert (done["cases_done"], done["progress"], done["error"]) == (3, 1.0, None)
    kept = doctor.get(done["evaluation_url"])
    assert kept.status_code == 200
    evaluation = kept.json()
    assert evaluation["id"] == done["evaluation_id"] and evaluation["model_version"] == "1"
    assert [c["name"] for c in evaluation["cases"]] == ["a", "b", "c"]
    assert evaluation["mean_dice"] == pytest.approx(1.0)
    # the same cases without the preference: the request answers the evaluation itself, with the same scores
    held = _submit(doctor, headers={})
    assert held.status_code == 201, held.text
    assert [c["dice"] for c in held.json()["cases"]] == [c["dice"] for c in evaluation["cases"]]
    # the uploaded cases waited in the store only while the job ran; the submission is audited
    assert not [key for (_, key) in world.store.objects if key.startswith(f"evaluation-jobs/{job['id']}")]
    with world.session() as session:
        assert session.scalar(
            select(func.count()).where(
                AuditLog.action == "evaluation.submit", AuditLog.target == f"evaluation-job:{job['id']}"
            )
        )


def test_a_worse_version_scores_worse_through_the_job(jobs):
    world, _ = jobs
    key = world.client("key:evaluate")
    done = _until_finished(key, _submit(key, version="2").json()["url"])
    assert done["status"] == "done"
    assert key.get(done["evaluation_url"]).json()["mean_dice"] < 0.5


@pytest.mark.parametrize(
    "case",
    ["label_mismatch", "unknown_version", "not_an_image", "ambiguous_input", "no_pairs"],
)
def test_bad_input_is_a_4xx_at_once_and_nothing_is_stored(jobs, case):
    world, organ = jobs
    doctor = world.client("doctor")
    before, calls = _counts(world), organ.calls
    if case == "label_mismatch":
        files = [("images", ("a.png", png(SQUARE))), ("labels", ("zzz.png", png(SQUARE)))]
        answer, status, code = _submit(doctor, files=files), 400, "label_mismatch"
    elif case == "unknown_version":
        answer, status, code = _submit(doctor, version="77"), 404, None
    elif case == "not_an_image":
        files = [("images", ("a.png", b"not a picture at all")), ("labels", ("a_mask.png", png(SQUARE)))]
        answer, status, code = _submit(doctor, files=files), None, None
    elif case == "ambiguous_input":
        answer, status, code = _submit(doctor, dataset_id="liver-x"), 400, "ambiguous_input"
    else:
        answer, status, code = _submit(doctor, files=[("organ_note", ("x.txt", b"x"))]), 400, "missing_images"
    assert 400 <= answer.status_code < 500, answer.text
    if status is not None:
        assert answer.status_code == status, answer.text
    if code is not None:
        assert answer.json()["error"]["code"] == code
    assert "a.png" in answer.json()["error"]["message"] or case != "not_an_image"
    assert _counts(world) == before and organ.calls == calls


def test_the_store_down_at_submit_is_a_503_and_nothing_is_queued(jobs):
    world, _ = jobs
    before = _counts(world)
    world.store.fail = True
    try:
        answer = _submit(world.client("doctor"))
    finally:
        world.store.fail = False
    assert answer.status_code == 503, answer.text
    assert _counts(world) == before


def test_an_organ_server_that_goes_down_fails_the_job_cleanly_and_the_rest_keeps_working(jobs):
    world, organ = jobs
    doctor = world.client("doctor")
    _, evaluations_before, _ = _counts(world)
    organ.down = True
    try:
        failed = _until_finished(doctor, _submit(doctor).json()["url"])
    finally:
        organ.down = False
    assert failed["status"] == "failed" and failed["evaluation_id"] is None
    assert failed["error"]["code"] == "organ_unavailable" and "liver" in failed["error"]["message"]
    _, evaluations_after, waiting = _counts(world)
    assert evaluations_after == evaluations_before and waiting == 0  # nothing half-made, the upload removed
    # the worker lives on: the next job is done
    assert _until_finished(doctor, _submit(doctor).json()["url"])["status"] == "done"


def test_a_queued_job_is_cancelled_by_its_maker_only(jobs):
    world, _ = jobs
    app = world.app()
    service = app.state.clinic.evaluation_jobs
    service.close()  # no worker: the job stays queued
    saved = service.settings
    service.settings = saved.model_copy(update={"evaluation_workers": 0})
    try:
        doctor = world.client("doctor")
        job = _submit(doctor).json()
        assert doctor.get(job["url"]).json()["status"] == "queued"
        other = world.client("doctor_b")
        assert other.get(job["url"]).status_code == 404  # another hospital's doctor does not see it
        assert other.post(job["url"] + "/cancel").status_code == 404
        cancelled = doctor.post(job["url"] + "/cancel")
        assert cancelled.status_code == 200, cancelled.text
        body = cancelled.json()
        assert body["status"] == "failed" and body["error"]["code"] == "cancelled"
        assert not [key for (_, key) in world.store.objects if key.startswith(f"evaluation-jobs/{job['id']}")]
        assert doctor.post(job["url"] + "/cancel").status_code == 409  # already finished
    finally:
        service.settings = saved
        service.start()


def test_a_job_whose_worker_stopped_is_taken_up_again(jobs):
    """A running row whose heartbeat went stale (its gateway stopped) is claimed again and finished."""
    world, _ = jobs
    app = world.app()
    service = app.state.clinic.evaluation_jobs
    service.close()
    saved = service.settings
    service.settings = saved.model_copy(update={"evaluation_workers": 0})
    doctor = world.client("doctor")
    try:
        job = _submit(doctor).json()
        with world.session() as session:  # as a gateway that claimed it and then stopped would leave it
            row = session.get(EvaluationJob, uuid.UUID(job["id"]))
            row.status, row.attempts, row.heartbeat_at = "running", 1, None
    finally:
        service.settings = saved
        service.start()
    done = _until_finished(doctor, job["url"])
    assert done["status"] == "done", done
    with world.session() as session:
        assert session.get(EvaluationJob, uuid.UUID(job["id"])).attempts == 2


def test_an_organ_with_no_recorded_version_is_evaluated_as_it_serves(jobs):
    """Cells has no row in this world's registry: the job evaluates what its server serves ("unknown"), as the
    request would, instead of failing on a version it cannot find."""
    world, _ = jobs
    doctor = world.client("doctor")
    rgb = np.dstack([np.full((SIZE, SIZE), 90, np.uint8)] * 3)
    files = [("images", ("t.png", png(rgb))), ("labels", ("t_mask.png", png(SQUARE)))]
    answer = doctor.post("/api/v1/evaluations", data={"organ": "cells"}, files=files, headers=ASYNC)
    assert answer.status_code == 202, answer.text
    done = _until_finished(doctor, answer.json()["url"])
    assert done["status"] == "done", done
    assert doctor.get(done["evaluation_url"]).json()["case_count"] == 1
