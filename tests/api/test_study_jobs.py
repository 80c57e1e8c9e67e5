"""The study workers (gateway/service/studies.py StudyJobs) live through a database outage: a study that fails
while the database is away cannot record its end, stays running, and is taken up again once the database is
back and its heartbeat is stale; the worker itself goes on (it used to die with the exception, leaving the
gateway without a study worker until it was restarted)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from common.errors import ServiceUnavailable
from gateway.models import Study
from tests.api.clinic_access import study_files, study_volumes_ml
from tests.api.conftest import sqlite_database
from tests.gateway.fakes import FakeClient

WAIT_S = 60.0


@pytest.fixture(scope="module")
def people_db(tmp_path_factory):
    return sqlite_database(tmp_path_factory, "study-jobs-db")


class Outage:
    """The study service's sessions, refused as by a database that is down while `down` is set; counts the
    refusals each thread met."""

    def __init__(self, factory):
        self.factory, self.down = factory, False
        self.refused: dict[str, int] = {}

    def __call__(self):
        if self.down:
            name = threading.current_thread().name
            self.refused[name] = self.refused.get(name, 0) + 1
            raise ServiceUnavailable("database unavailable: connection refused", code="database_unavailable")
        return self.factory()


class FailingOnce(FakeClient):
    """An organ server that holds the first chunk until `release` is set, fails it (503), then answers."""

    def __init__(self):
        super().__init__()
        self.held, self.release, self.failed = threading.Event(), threading.Event(), False

    def predict(self, *args, **kwargs):
        if not self.failed:
            self.held.set()
            self.release.wait(WAIT_S)
            self.failed = True
            raise ServiceUnavailable("liver down", code="organ_unavailable")
        return super().predict(*args, **kwargs)


def _until(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_worker_lives_through_a_database_outage_and_the_study_is_taken_up_again(world):
    app = world.app()
    jobs, clients = app.state.clinic.studies, app.state.dataplane.clients
    saved = jobs.settings, jobs.session_factory, clients["liver"]
    jobs.settings = world.settings.model_copy(
        update={"study_workers": 1, "study_poll_s": 0.05, "study_stale_after_s": 0.5}
    )
    outage = jobs.session_factory = Outage(jobs.session_factory)
    organ = clients["liver"] = FailingOnce()
    try:
        answer = world.client("key:segment").post(
            "/api/v1/studies", data={"organ": "liver"}, files=[("files", f) for f in study_files("nifti")]
        )
        assert answer.status_code == 202, answer.text
        study_id = uuid.UUID(answer.json()["id"])
        assert organ.held.wait(WAIT_S), "the worker never sent the study to the organ server"
        outage.down = True  # the database goes away while the organ server fails the chunk …
        organ.release.set()
        # … so the worker cannot record the failure; alive, it goes on asking the database for work
        _until(lambda: outage.refused.get("medseg-study-0", 0) >= 3, "the worker stopped asking for work")
        outage.down = False
        with world.session() as session:
            assert session.get(Study, study_id).status == "running"  # its end was never recorded

        def finished():
            with world.session() as session:
                return session.get(Study, study_id).status in ("done", "failed")

        _until(finished, "the study was not taken up again after the outage")
        with world.session() as session:
            study = session.get(Study, study_id)
            assert (study.status, study.attempts) == ("done", 2), (study.status, study.error_code)
            assert study.volumes_ml == study_volumes_ml("nifti")
    finally:
        jobs.close()
        jobs.settings, jobs.session_factory, clients["liver"] = saved
