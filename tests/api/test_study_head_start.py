"""A study segmented from its submit on (gateway/service/studies.py HeadStart): when a worker's slot is free,
the organ server starts on the volume as soon as the upload is read, while the upload is still going to the
object store; the row is written as running. A store that fails after that answers 503 and keeps nothing (no
row, no object, the organ server's work dropped); a submit while every worker is busy queues as before."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

from common.errors import ServiceUnavailable
from gateway.models import Study
from tests.api.clinic_access import study_files, study_volumes_ml
from tests.api.conftest import sqlite_database
from tests.gateway.fakes import FakeClient

WAIT_S = 60.0


@pytest.fixture(scope="module")
def people_db(tmp_path_factory):
    return sqlite_database(tmp_path_factory, "study-head-start-db")


class HeldOrgan(FakeClient):
    """An organ server that answers each chunk only once `release` is set; `asked` is set at the first."""

    def __init__(self):
        super().__init__()
        self.asked, self.release = threading.Event(), threading.Event()

    def predict(self, *args, **kwargs):
        self.asked.set()
        assert self.release.wait(WAIT_S), "the test never released the organ server"
        return super().predict(*args, **kwargs)


@pytest.fixture
def service(world):
    """The app's study service with one worker, its organ server and store hooks restored afterwards."""
    app = world.app()
    jobs, clients = app.state.clinic.studies, app.state.dataplane.clients
    saved = jobs.settings, clients["liver"], jobs.__dict__.get("_store_source")
    jobs.settings = world.settings.model_copy(update={"study_workers": 1, "study_poll_s": 0.05})
    jobs.start()  # as a serving gateway's start does (gateway.main)
    try:
        yield jobs, clients
    finally:
        jobs.close()
        jobs.settings, clients["liver"] = saved[:2]
        jobs.__dict__.pop("_store_source", None)


def submit(world, source: str = "nifti"):
    return world.client("key:segment").post(
        "/api/v1/studies", data={"organ": "liver"}, files=[("files", f) for f in study_files(source)]
    )


def study_row(world, study_id: str) -> Study:
    with world.session() as session:
        row = session.get(Study, uuid.UUID(study_id))
        session.expunge_all()
        return row


def until_finished(world, study_id: str) -> Study:
    deadline = time.monotonic() + WAIT_S
    while (row := study_row(world, study_id)).status not in ("done", "failed"):
        assert time.monotonic() < deadline, f"study still {row.status}"
        time.sleep(0.02)
    return row


def held_store(jobs, release: threading.Event, error: Exception | None = None):
    """The study service's upload store, held until `release` (then failing with `error`, if given)."""
    store, entered = jobs._store_source, threading.Event()

    def held(*args):
        entered.set()
        assert release.wait(WAIT_S), "the test never released the store"
        if error is not None:
            raise error
        return store(*args)

    jobs._store_source = held
    return entered


def test_the_organ_server_starts_while_the_upload_is_still_being_stored(world, service):
    jobs, clients = service
    organ = clients["liver"] = FakeClient()
    stored = threading.Event()
    held_store(jobs, stored)
    answer: list = []
    request = threading.Thread(target=lambda: answer.append(submit(world)))
    request.start()
    deadline = time.monotonic() + WAIT_S
    while organ.calls == 0:  # the store is held: only the head start can have asked the organ server
        assert time.monotonic() < deadline, "the organ server was not asked before the upload was stored"
        time.sleep(0.01)
    stored.set()
    request.join(WAIT_S)
    assert answer[0].status_code == 202, answer[0].text
    body = answer[0].json()
    assert body["status"] in ("running", "done")  # claimed by its own gateway at birth, never queued
    row = until_finished(world, body["id"])
    assert (row.status, row.attempts, row.error_code) == ("done", 1, None)
    assert row.volumes_ml == study_volumes_ml("nifti")
    assert any(key == row.probability_key for (_, key) in world.store.objects)


@pytest.mark.parametrize("source", ["nifti", "dicom"])
def test_a_store_that_fails_after_the_head_start_answers_503_and_keeps_nothing(world, service, source):
    jobs, clients = service
    organ = clients["liver"] = HeldOrgan()
    with world.session() as session:
        rows_before = session.scalar(select(func.count()).select_from(Study))
    objects_before = set(world.store.objects)
    release_store = threading.Event()
    held_store(jobs, release_store, ServiceUnavailable("object store unavailable", code="store_unavailable"))
    answer: list = []
    request = threading.Thread(target=lambda: answer.append(submit(world, source)))
    request.start()
    assert organ.asked.wait(WAIT_S), "the organ server was not asked while the upload was stored"
    release_store.set()  # the store fails while the organ server still holds the first chunk
    request.join(WAIT_S)
    assert answer[0].status_code == 503, answer[0].text
    assert answer[0].json()["error"]["code"] == "store_unavailable"
    organ.release.set()  # the organ server answers: the dropped work must record nothing
    jobs.__dict__.pop("_store_source")
    # the slot is free again (the next study starts at once) and nothing of the failed one was kept
    clients["liver"] = FakeClient()
    after = submit(world, source)
    assert after.status_code == 202, after.text
    assert until_finished(world, after.json()["id"]).status == "done"
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == rows_before + 1
    new_objects = {key for key in set(world.store.objects) - objects_before}
    assert all(after.json()["id"] in key for (_, key) in new_objects), new_objects


def test_a_submit_while_the_worker_is_busy_queues_and_is_done_after(world, service):
    jobs, clients = service
    organ = clients["liver"] = HeldOrgan()
    first = submit(world)
    assert first.status_code == 202 and first.json()["status"] in ("running", "done")
    assert organ.asked.wait(WAIT_S)
    second = submit(world)  # the one worker's slot is held by the first study
    assert second.status_code == 202 and second.json()["status"] == "queued"
    organ.release.set()
    for answer in (first, second):
        row = until_finished(world, answer.json()["id"])
        assert (row.status, row.attempts) == ("done", 1)
        assert row.volumes_ml == study_volumes_ml("nifti")
