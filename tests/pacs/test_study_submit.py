"""POST /api/v1/studies naming a PACS series, in process (the API tests' world: SQLite, an in-memory object
store, fake organ servers) against a real Orthanc: the series becomes a queued study under a pseudonymous
patient ID with no name kept anywhere; every refusal and every PACS failure is a clear 4xx/503 with nothing
stored (no study row, no object). Segmenting it, storing the SEG back: tests/studies/test_studies_pacs.py."""

from __future__ import annotations

import logging
import uuid

import pytest
from sqlalchemy import func, select, text

from common.launcher import free_port
from common.pacs import Pacs, PacsCredentials
from gateway.models import Study
from tests.pacsdata import stored_study

pytestmark = pytest.mark.integration

NAME = "Doe^Jane"
NAME_AS_ID = "DOE^JANE 1961"  # a name typed into the PatientID field: not a pseudonymous ID


@pytest.fixture(scope="module")
def settings(world):
    """Studies stay queued: no worker thread segments them here (the live tests do)."""
    return world.settings.model_copy(update={"study_workers": 0})


@pytest.fixture(scope="module")
def series(world):
    pacs = world.app().state.clinic.pacs.pacs
    return stored_study(pacs, count=4, patient_id=NAME_AS_ID, patient_name=NAME)


def ref(series, **changes) -> dict:
    return {"study_uid": series[0].StudyInstanceUID, "series_uid": series[0].SeriesInstanceUID, **changes}


def submit(client, pacs: dict, **body):
    return client.post("/api/v1/studies", json={"organ": "liver", "pacs": pacs, **body})


def stored(world) -> tuple[int, list]:
    """Study rows, and the objects a study put in the results bucket."""
    with world.session() as session:
        rows = session.scalar(select(func.count()).select_from(Study))
    return rows, sorted(key for (_, key) in world.store.objects if key.startswith("studies/"))


def test_a_series_becomes_a_queued_study_under_a_pseudonymous_id(world, settings, series, caplog):
    caplog.set_level(logging.INFO)
    answer = submit(world.client("doctor", settings=settings), ref(series), store_result=True)
    assert answer.status_code == 202, answer.text
    study = answer.json()
    assert answer.headers["location"] == f"/api/v1/studies/{study['id']}"
    assert study["status"] == "queued" and study["source"] == "dicom" and study["shape"][0] == 4
    assert study["pacs"] == {**ref(series), "store_result": True, "stored": []}
    assert study["patient_id"].startswith("PACS-") and study["study_date"] == "2024-01-15"
    with world.session() as session:
        row = session.get(Study, uuid.UUID(study["id"]))
        assert row.patient_id == study["patient_id"]
        assert (row.pacs_study_uid, row.pacs_series_uid, row.pacs_store_result) == (
            series[0].StudyInstanceUID, series[0].SeriesInstanceUID, True,
        )  # fmt: skip
        dump = " ".join(
            str(value)
            for table in ("studies", "audit_log")
            for record in session.execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
            for value in record
        )
    for secret in ("Doe", "Jane", "DOE", "JANE"):
        assert secret not in dump and secret not in caplog.text, secret


def test_the_callers_patient_id_wins_and_is_checked(world, settings, series):
    client = world.client("key:segment", settings=settings)
    answer = submit(client, ref(series), patient_id="P-0042")
    assert answer.status_code == 202 and answer.json()["patient_id"] == "P-0042"
    before = stored(world)
    refused = submit(client, ref(series), patient_id="Anna Schmidt")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_patient_id"
    assert stored(world) == before


def _other_modality(world) -> dict:
    other = stored_study(world.app().state.clinic.pacs.pacs, count=2, patient_id="P-OT", modality="OT")
    return ref(other)


@pytest.mark.parametrize(
    ("who", "pacs", "body", "status", "code"),
    [
        ("doctor", lambda w, s: ref(s, series_uid="1.2.3.4"), {}, 404, "pacs_not_found"),
        ("doctor", lambda w, s: _other_modality(w), {}, 400, "wrong_modality"),
        ("doctor", lambda w, s: ref(s, study_uid="1.2.abc"), {}, 400, "invalid_input"),
        ("doctor", lambda w, s: ref(s), {"study_date": "2024-01-01"}, 400, "invalid_input"),
        ("doctor", lambda w, s: ref(s), {"organ": "kidney"}, 404, "unknown_organ"),
        ("researcher", lambda w, s: ref(s), {}, 403, "forbidden"),
        ("admin", lambda w, s: ref(s), {}, 403, "forbidden"),
    ],
    ids=[
        "unknown series",
        "not CT or MR",
        "not a UID",
        "a study date",
        "unknown organ",
        "researcher",
        "admin",
    ],
)
def test_refusals_store_nothing(world, settings, series, who, pacs, body, status, code):
    before = stored(world)
    answer = submit(world.client(who, settings=settings), pacs(world, series), **body)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert stored(world) == before


def test_a_series_over_the_study_limit_is_refused_before_its_pixels_are_fetched(world, settings, series):
    small = settings.model_copy(update={"study_max_bytes": 20_000})
    before = stored(world)
    answer = submit(world.client("doctor", settings=small), ref(series))
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "pacs_series_too_large"
    assert stored(world) == before


@pytest.mark.parametrize(
    ("pacs", "code"),
    [
        (
            lambda url: Pacs(f"http://127.0.0.1:{free_port()}/dicom-web", PacsCredentials("u", "p")),
            "pacs_unavailable",
        ),
        (lambda url: Pacs(url, PacsCredentials("medseg", "not-the-password")), "pacs_credentials"),
    ],
    ids=["PACS down", "wrong credentials"],
)
def test_a_pacs_down_or_refusing_us_is_a_503_naming_it(world, settings, series, pacs, code):
    client = world.client("doctor", settings=settings)
    client.app.state.clinic.pacs.pacs = pacs(settings.pacs_url)
    before = stored(world)
    answer = submit(client, ref(series))
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, code)
    assert "PACS" in answer.json()["error"]["message"]
    assert stored(world) == before


def test_the_pacs_killed_mid_fetch_is_a_503_with_nothing_stored(world, settings, pacs_restarted, monkeypatch):
    """Orthanc SIGKILLed once the first instance has arrived: the fetch fails, no study is made of it."""
    client = world.client("doctor", settings=settings)
    pacs = client.app.state.clinic.pacs.pacs
    big = stored_study(
        pacs, count=40, size=512, patient_id="P-KILLED-2", seed=2
    )  # 20 MB: beyond socket buffers
    fetch, seen = pacs.fetch_series, []

    def kill_after_the_first(received: int, expected: int) -> None:
        seen.append(received)
        if received == 1:
            pacs_restarted.kill()

    monkeypatch.setattr(
        pacs, "fetch_series", lambda *a, **k: fetch(*a, **k, on_instance=kill_after_the_first)
    )
    before = stored(world)
    answer = submit(client, ref(big))
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, "pacs_unavailable"), answer.text
    assert seen and seen[-1] < 40
    assert stored(world) == before
