"""Faults on the real local stack (issue 8): a real gateway process (`medseg serve`) in front of real
TorchServe organ servers and a real SeaweedFS, driven over HTTP by concurrent callers while a dependency —
or the gateway itself — goes away.

* an organ server stops: the other organ keeps answering every request, the stopped one answers 503 in the
  error shape within the configured deadline, /readyz names it, and it is used again once it is back,
  without restarting the gateway;
* the object store stops during dataset uploads and segmentations: 503s, never 500; no database row
  points at an object that is not there; results saved before are readable when the store is back;
* the gateway is SIGKILLed with requests in flight: after a restart nothing is half-written.

The cells organ server here is one of this module's own (the session's is shared with other tests, and a
restarted TorchServe writes new token keys): the gateway reads its key from the key file on every call, as
`medseg serve` does locally.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from gateway.models import Base, Dataset, EvaluationCase, EvaluationJob, ModelVersion, Segmentation, Study
from gateway.service.studies import labels_key
from tests.api.conftest import small_dataset_zip
from tests.data import CELLS_TRAIN, LIVER_SLICE
from tests.fixtures.torchserve import MODEL_VERSION, build_test_mar
from tests.hardening.live_gateway import LiveGateway, model_store_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 15.0  # the gateway's configured deadline for one organ server call (inference_timeout_s)
MARGIN_S = 5.0  # request parsing, validation and a loaded 2-core machine on top of it
RECOVERY_S = 30.0  # an organ server that is back must be used again within this, on the gateway's own
CALLERS = 4


# --- images -----------------------------------------------------------------------------------------
def liver_slice() -> bytes:
    return LIVER_SLICE.read_bytes()


def cells_crop(size: int = 128) -> bytes:
    tile = sorted((CELLS_TRAIN / "images").glob("*.png"))[0]
    buf = io.BytesIO()
    Image.open(tile).convert("RGB").crop((0, 0, size, size)).save(buf, format="PNG")
    return buf.getvalue()


# --- the stack --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cells_server(work):
    """A cells TorchServe of this module's own, under the gateway's state dir (key file included)."""
    from common.launcher import OrganServer, free_ports

    if not CELLS_TRAIN.is_dir() or not LIVER_SLICE.is_file():
        pytest.skip(f"shared data not found under {CELLS_TRAIN.parent.parent}")
    store = work / "cells-store"
    store.mkdir()
    build_test_mar("cells", store, "cells", MODEL_VERSION)
    server = OrganServer("cells", work / "state", store, models={"cells": "cells.mar"}, ports=free_ports())
    try:
        server.start(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(work, s3_settings, objectstore, torchserve_liver, torchserve_hippocampus, cells_server):
    """`medseg serve` over the session's object store, liver and hippocampus servers and this module's cells
    server (every organ folder has its server: the gateway is ready when all answer)."""
    settings = s3_settings.model_copy(
        update={
            "state_dir": work / "state",
            "model_store_dir": model_store_for(
                {
                    "liver": (torchserve_liver.model_store, torchserve_liver.model_name),
                    "cells": (cells_server.model_store, "cells"),
                    "hippocampus": (torchserve_hippocampus.model_store, torchserve_hippocampus.model_name),
                },
                work / "model-store",
            ),
            "organ_addresses": {
                "liver": torchserve_liver.grpc_inference_address,
                "cells": cells_server.grpc_inference_address,
                "hippocampus": torchserve_hippocampus.grpc_inference_address,
            },
            # liver's and hippocampus's servers are never restarted here; cells' key is read from its key
            # file on every call
            "organ_inference_keys": {
                "liver": torchserve_liver.inference_key,
                "hippocampus": torchserve_hippocampus.inference_key,
            },
            "inference_timeout_s": DEADLINE_S,
        }
    )
    live = LiveGateway.create(settings, work)
    try:
        live.start()
        yield live
    finally:
        live.close()


# --- load -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    kind: str  # "liver", "cells", "dataset"
    sent_in: str  # the phase when the request was sent
    done_in: str  # the phase when its answer (or failure) came
    status: int | None  # None: no HTTP answer (connection cut)
    seconds: float
    body: dict | None
    error: str | None = None


class Load:
    """Callers sending requests in a loop from threads; each result is recorded with the phase it was sent
    and answered in, so a test can judge the answers by what the stack was doing at the time."""

    def __init__(self, gateway: LiveGateway, requests: dict[str, Callable[[httpx.Client], httpx.Response]]):
        self.gateway = gateway
        self.requests = requests
        self.phase = "before"
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(kind,), name=f"load-{kind}-{n}", daemon=True)
            for n in range(CALLERS // len(requests) or 1)
            for kind in requests
        ]

    def _loop(self, kind: str) -> None:
        with self.gateway.client(timeout=DEADLINE_S + 60) as client:
            while not self._stop.is_set():
                sent_in, start = self.phase, time.monotonic()
                status, body, error = None, None, None
                try:
                    response = self.requests[kind](client)
                    status = response.status_code
                    body = _json(response)
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                outcome = Outcome(kind, sent_in, self.phase, status, time.monotonic() - start, body, error)
                with self._lock:
                    self.outcomes.append(outcome)
                if error:
                    time.sleep(0.2)  # the gateway is gone: do not spin

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=DEADLINE_S + 90)

    def where(self, kind: str, **phases) -> list[Outcome]:
        with self._lock:
            return [
                o
                for o in self.outcomes
                if o.kind == kind and all(getattr(o, name) == value for name, value in phases.items())
            ]

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; outcomes so far: {self.summary()}")
            time.sleep(0.2)

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        with self._lock:
            for o in self.outcomes:
                key = f"{o.kind}/{o.sent_in}->{o.done_in}/{o.status or o.error}"
                counts[key] = counts.get(key, 0) + 1
        return counts


def _json(response: httpx.Response) -> dict | None:
    try:
        return response.json()
    except ValueError:
        return None


def segment(organ: str, image: bytes) -> Callable[[httpx.Client], httpx.Response]:
    return lambda client: client.post(
        "/api/v1/segment", data={"organ": organ}, files={"file": (f"{organ}.png", image, "image/png")}
    )


def upload_dataset(pairs: int = 2) -> Callable[[httpx.Client], httpx.Response]:
    archive = small_dataset_zip(pairs)
    return lambda client: client.post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("pairs.zip", archive, "application/zip")}
    )


def both_succeeding(load: Load) -> Callable[[], bool]:
    return lambda: len(load.where("liver", status=200)) >= 2 and len(load.where("dataset", status=201)) >= 2


def assert_error_shape(outcome: Outcome, status: int) -> None:
    assert outcome.status == status, outcome
    error = (outcome.body or {}).get("error")
    assert isinstance(error, dict) and error.get("code") and error.get("message"), outcome


def readiness(gateway: LiveGateway) -> tuple[int, dict]:
    response = httpx.get(f"{gateway.http_url}/readyz", timeout=10)
    return response.status_code, response.json()["components"]


def wait_ready(gateway: LiveGateway, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, components = readiness(gateway)
        if status == 200 or time.monotonic() > deadline:
            return components
        time.sleep(0.5)


# --- what the database points at --------------------------------------------------------------------
# Every column that holds an object key, with the bucket it lives in; test_every_object_key_column_is_walked
# fails when a table gains one that is not listed here.
OBJECT_KEY_COLUMNS = {
    ("segmentations", "probability_key"): "results",
    ("segmentations", "mask_keys"): "results",  # {"0.5": key, ...}
    ("segmentations", "thumbnail_key"): "results",
    ("segmentations", "view_key"): "results",  # the image a result was made from (view.zip)
    ("datasets", "manifest_key"): "datasets",  # and every file the manifest lists
    ("evaluation_cases", "overlay_key"): "results",
    ("model_versions", "mar_key"): "models",
    ("studies", "input_key"): "results",
    ("studies", "source_key"): "results",  # the same object as input_key for a DICOM series
    ("studies", "probability_key"): "results",  # once done
    ("evaluation_jobs", "input_key"): "results",  # the uploaded cases, while the job is queued or running
}


def referenced_objects(session, buckets, store) -> list[tuple[str, str, str]]:
    """(row, bucket, key) for every object a database row points at."""
    refs: list[tuple[str, str, str]] = []
    for row in session.scalars(select(Segmentation)):
        where = f"segmentation {row.id}"
        refs.append((where, buckets.results, row.probability_key))
        refs += [(f"{where} mask {t}", buckets.results, key) for t, key in (row.mask_keys or {}).items()]
        if row.thumbnail_key:
            refs.append((f"{where} thumbnail", buckets.results, row.thumbnail_key))
        if row.view_key:
            refs.append((f"{where} view", buckets.results, row.view_key))
    for row in session.scalars(select(Study)):
        refs += [
            (f"study {row.id} {what}", buckets.results, key)
            for what, key in (
                ("input", row.input_key),
                ("source", row.source_key),
                ("probability", row.probability_key),
                # an organ of several labels: the label of largest probability, beside the probabilities
                (
                    "labels",
                    labels_key(row.probability_key) if row.probability_key and len(row.labels) > 1 else None,
                ),
            )
            if key
        ]
    for row in session.scalars(select(Dataset)):
        refs.append((f"dataset {row.id} ({row.status})", buckets.datasets, row.manifest_key))
        if store.exists(buckets.datasets, row.manifest_key):
            manifest = json.loads(store.get_bytes(buckets.datasets, row.manifest_key))
            for pair in manifest["pairs"]:
                for part in ("image", "mask"):
                    refs.append(
                        (f"dataset {row.id} {part}", buckets.datasets, f"{row.id}/{pair[part]['key']}")
                    )
    for row in session.scalars(select(EvaluationJob).where(EvaluationJob.input_key.is_not(None))):
        refs.append((f"evaluation job {row.id} ({row.status})", buckets.results, row.input_key))
    for row in session.scalars(select(EvaluationCase).where(EvaluationCase.overlay_key.is_not(None))):
        refs.append((f"evaluation case {row.id}", buckets.results, row.overlay_key))
    for row in session.scalars(select(ModelVersion).where(ModelVersion.mar_key.is_not(None))):
        refs.append((f"model version {row.organ} {row.version}", buckets.models, row.mar_key))
    return refs


def assert_no_row_points_at_a_missing_object(gateway: LiveGateway, store) -> int:
    from sqlalchemy.orm import Session

    with Session(gateway.engine) as session:
        refs = referenced_objects(session, store.buckets, store)
        unfinished = session.scalars(select(Dataset.id).where(Dataset.status == "uploading")).all()
    missing = [(where, bucket, key) for where, bucket, key in refs if not store.exists(bucket, key)]
    assert missing == [], f"rows pointing at missing objects: {missing[:10]}"
    assert unfinished == [], f"datasets left 'uploading': {unfinished}"
    return len(refs)


def test_every_object_key_column_is_walked():
    columns = {
        (table.name, column.name)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if column.name.endswith(("_key", "_keys")) and not column.foreign_keys
    }
    assert columns == set(OBJECT_KEY_COLUMNS)


# --- 1. an organ server stops and comes back ----------------------------------------------------------
def test_one_organ_server_stops_the_other_keeps_answering_and_it_recovers(gateway, cells_server):
    pid = gateway.proc.pid
    load = Load(gateway, {"liver": segment("liver", liver_slice()), "cells": segment("cells", cells_crop())})
    with load:
        load.wait_for(
            "both organs answering",
            lambda: len(load.where("liver", status=200)) >= 2 and len(load.where("cells", status=200)) >= 2,
        )
        load.phase = "stopping"
        cells_server.stop()
        load.phase = "outage"
        status, components = readiness(gateway)
        assert status == 503
        assert components["organ:cells"] != "ok"
        assert components["organ:liver"] == "ok" and components["objectstore"] == "ok"
        load.wait_for(
            "answers during the outage",
            lambda: (
                len(load.where("cells", sent_in="outage")) >= 6
                and len(load.where("liver", sent_in="outage", done_in="outage")) >= 3
            ),
        )
        load.phase = "after"

    liver = load.where("liver")
    assert [o for o in liver if o.status != 200] == [], load.summary()
    cells = load.where("cells")
    assert {o.status for o in cells} <= {200, 503}, load.summary()
    assert all(o.status == 200 for o in load.where("cells", sent_in="before", done_in="before"))
    down = load.where("cells", sent_in="outage")
    for outcome in down:
        assert_error_shape(outcome, 503)
        assert (
            outcome.body["error"]["code"] == "organ_unavailable"
            and "cells" in outcome.body["error"]["message"]
        )
    # no cells caller waited past the configured deadline (plus the gateway's own work)
    assert max(o.seconds for o in cells) <= DEADLINE_S + MARGIN_S, sorted(o.seconds for o in cells)[-5:]

    cells_server.start(timeout=300)  # a new process with new token keys, on the same ports
    with gateway.client() as client:
        deadline = time.monotonic() + RECOVERY_S
        answers = []
        while time.monotonic() < deadline:
            answers.append(segment("cells", cells_crop())(client))
            if answers[-1].status_code == 200:
                break
            time.sleep(0.5)
    assert answers[-1].status_code == 200, [(a.status_code, a.text[:200]) for a in answers[-3:]]
    assert wait_ready(gateway, RECOVERY_S) == {
        "organ:liver": "ok",
        "organ:cells": "ok",
        "organ:hippocampus": "ok",
        "objectstore": "ok",
        "disk": "ok",
    }
    assert gateway.proc.pid == pid and gateway.proc.poll() is None  # the same gateway process throughout


# --- 2. the object store stops ----------------------------------------------------------------------
def test_object_store_stops_during_uploads_and_segmentations(gateway, objectstore_server, objectstore):
    with gateway.client() as client:
        saved = segment("liver", liver_slice())(client)
        assert saved.status_code == 200, saved.text
        saved = saved.json()
        thumbnail = client.get(f"/api/v1/segmentations/{saved['id']}/thumbnail.png")
        assert thumbnail.status_code == 200, thumbnail.text

    load = Load(gateway, {"liver": segment("liver", liver_slice()), "dataset": upload_dataset()})
    try:
        with load:
            load.wait_for(
                "uploads and segmentations succeeding",
                lambda: (
                    len(load.where("liver", status=200)) >= 2 and len(load.where("dataset", status=201)) >= 2
                ),
            )
            load.phase = "stopping"
            objectstore_server.stop()
            load.phase = "outage"
            load.wait_for(
                "answers during the outage",
                lambda: (
                    len(load.where("liver", sent_in="outage")) >= 3
                    and len(load.where("dataset", sent_in="outage")) >= 3
                ),
            )
            load.phase = "after"
    finally:
        if objectstore_server.running_pid() is None:
            objectstore_server.start(timeout=60)

    assert {o.status for o in load.where("liver")} <= {200, 503}, load.summary()
    assert {o.status for o in load.where("dataset")} <= {201, 503}, load.summary()
    for outcome in load.where("liver", sent_in="outage") + load.where("dataset", sent_in="outage"):
        assert_error_shape(outcome, 503)
    assert wait_ready(gateway, 60)["objectstore"] == "ok"

    checked = assert_no_row_points_at_a_missing_object(gateway, objectstore)
    assert checked >= 2  # at least the probability maps of the segmentations that succeeded before the outage

    # what was saved before the outage is still there, byte for byte
    with gateway.engine.connect() as conn:
        row = conn.execute(select(Segmentation).where(Segmentation.id == uuid.UUID(saved["id"]))).one()
    prob = objectstore.get_bytes(objectstore.buckets.results, row.probability_key)
    assert prob == base64.b64decode(saved["probability_png"])
    with gateway.client() as client:
        again = client.get(f"/api/v1/segmentations/{saved['id']}/thumbnail.png")
    assert again.status_code == 200 and again.content == thumbnail.content


# --- 3. the gateway is killed with requests in flight -------------------------------------------------
def test_gateway_killed_mid_request_leaves_nothing_half_written(gateway, objectstore):
    load = Load(gateway, {"liver": segment("liver", liver_slice()), "dataset": upload_dataset(pairs=12)})
    with load:
        load.wait_for("uploads and segmentations succeeding", both_succeeding(load))
        load.phase = "killed"
        gateway.kill()
        load.wait_for("every caller to notice", lambda: len(load.where("liver", done_in="killed")) >= 1)
        load.phase = "after"
    # the kill cut requests in flight (their connection broke without an answer)
    cut = [o for o in load.outcomes if o.sent_in == "before" and o.status is None]
    assert cut, load.summary()

    gateway.start()  # same database, same object store: what a restart after a crash finds
    assert_no_row_points_at_a_missing_object(gateway, objectstore)
    with gateway.client() as client:
        listed = client.get("/api/v1/datasets")
        assert listed.status_code == 200
        assert all(d["status"] in ("ready", "failed") for d in listed.json()["datasets"]), listed.json()
        assert segment("liver", liver_slice())(client).status_code == 200


# --- 4. the segmentation record is written whole ---------------------------------------------------------
class _Stopped(BaseException):
    """The process stops here: nothing after this point runs, no except-Exception clean-up either."""


def test_a_gateway_stopped_mid_segmentation_leaves_a_complete_segmentation_or_none(tmp_path):
    """Found by the kill test's reasoning: the row was committed first and its owner and stability in a
    second commit after the thumbnail, so a gateway stopped in between left a doctor's segmentation without
    its owner (gone from their history). Now the row is complete in one commit, after its one object (the
    probability map; masks and thumbnail are made from it). Stopped at that write there is no row; without
    the stop the row is whole and its masks and thumbnail can be made."""
    from gateway import crud
    from gateway.core.db import make_engine, run_migrations, session_scope
    from gateway.principal import Principal
    from gateway.resources.accounts import service as accounts
    from gateway.service import history
    from tests.api.conftest import MemoryStore, make_dataplane

    class StopsAtTheWrite(MemoryStore):
        stop_at_write = True

        def put_bytes(self, bucket, key, data, content_type=None):
            if self.stop_at_write and key.endswith("/probability.png"):
                raise _Stopped()
            return super().put_bytes(bucket, key, data, content_type)

    url = f"sqlite:///{tmp_path / 'medseg.db'}"
    run_migrations(url)
    engine = make_engine(url)
    store = StopsAtTheWrite()
    dataplane = make_dataplane(store)
    dataplane.record_segmentation = crud.record_segmentation
    try:
        with session_scope(engine) as session:
            doctor = accounts.create_user(
                session, email="dr@example.org", password="a long enough passphrase", full_name="Dr",
                role="doctor", status="active", hospital="St. Anna", actor="test",
            )  # fmt: skip
            with pytest.raises(_Stopped):
                history.segment(
                    session, dataplane, Principal(user=doctor), "liver", liver_slice(), "x.png", "P-1",
                    doubtful_below=0.8,
                )  # fmt: skip
        with session_scope(engine) as session:
            assert session.scalars(select(Segmentation)).all() == []
            store.stop_at_write = False
            doctor = session.merge(doctor)
            history.segment(
                session, dataplane, Principal(user=doctor), "liver", liver_slice(), "x.png", "P-1",
                doubtful_below=0.8,
            )  # fmt: skip
        with session_scope(engine) as session:
            rows = session.scalars(select(Segmentation)).all()
            assert len(rows) == 1
            row = rows[0]
            assert row.user_id == doctor.id and row.stability is not None and row.areas_px
            assert [r.id for r in history.history(session, Principal(user=doctor))] == [row.id]
            assert list(store.objects) == [("medseg-results", row.probability_key)]
            assert history.mask_png(dataplane, row, 0.5).startswith(b"\x89PNG")
            assert history.thumbnail_png(dataplane, row).startswith(b"\x89PNG")
    finally:
        dataplane.close()
        engine.dispose()
