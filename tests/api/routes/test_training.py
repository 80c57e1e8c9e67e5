"""Training jobs over HTTP with real worker processes and the real object store (SeaweedFS): a tiny job on
real liver slices trains, packages and records a candidate version, registered with a real liver TorchServe;
a running job is cancelled (its process group is gone) and a second job waits its turn (429); a job on a
missing dataset fails and says why; jobs a previous gateway left running are failed at start and their
worker is stopped."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from common.torchserve_client import InferenceClient, ManagementClient
from gateway import crud
from gateway.models import Dataset, Evaluation, ModelVersion, TrainingJob
from gateway.security import create_api_key
from gateway.service.training_jobs import TrainingJobs
from tests.api.conftest import HOSPITAL_A
from tests.data import LIVER_TRAIN

MODEL_STORE = Path(__file__).resolve().parents[3] / "model-store"

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIRS = 6
TINY = {"organ": "liver", "arch": "erunet", "widths": [3, 6, 12], "limit": PAIRS}
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def jobs_world(world, objectstore, s3_settings, tmp_path):
    """The module's world in front of the real object store, with its own state dir for the runs."""
    if world.engine.dialect.name != "sqlite":
        pytest.skip("the job lifecycle does not depend on the database backend; the workers run once")
    settings = world.settings.model_copy(
        update={
            "state_dir": tmp_path / "state",
            "s3_endpoint": s3_settings.s3_endpoint,
            "s3_access_key": s3_settings.s3_access_key,
            "s3_secret_key": s3_settings.s3_secret_key,
            "max_running_training_jobs": 1,
        }
    )
    jobs_world = dataclasses.replace(world, store=objectstore, settings=settings, _apps={})
    jobs = jobs_world.app().state.clinic.jobs
    jobs.threads = 1  # the CPU is shared with other runs
    yield jobs_world
    jobs.stop_workers()  # a failed assertion must not leave a worker training


@pytest.fixture
def liver_dataset(jobs_world) -> str:
    """A few real liver slices uploaded as a dataset (by a doctor, through the API)."""
    if not LIVER_TRAIN.is_dir():
        pytest.skip(f"shared data not found at {LIVER_TRAIN}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(PAIRS):
            for name in (f"{i:03d}.png", f"{i:03d}_mask.png"):
                zf.write(LIVER_TRAIN / name, f"train/{name}")
    response = jobs_world.client("doctor").post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("train.zip", buf.getvalue())}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _wait(client, job_id: str, timeout_s: float = 420.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/api/v1/training/jobs/{job_id}").json()
        if job["status"] in FINISHED or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_tiny_job_trains_and_records_a_candidate_version(jobs_world, liver_dataset, torchserve_liver):
    jobs = jobs_world.app().state.clinic.jobs
    address, key = torchserve_liver.grpc_management_address, torchserve_liver.management_key
    jobs.management = lambda organ: ManagementClient(address, key, timeout=60)
    client = jobs_world.client("researcher")
    response = client.post(
        "/api/v1/training/jobs", json={**TINY, "dataset_id": liver_dataset, "epochs": 1, "minutes": 5}
    )
    assert response.status_code == 201, response.text
    started = response.json()
    assert started["status"] == "running" and started["pid"] and started["result_version"] is None

    job = _wait(client, started["id"])
    assert job["status"] == "succeeded", job["error"]
    assert [p["epoch"] for p in job["progress"]] == [1]
    assert job["progress"][0]["loss"] > 0 and 0.0 <= job["progress"][0]["val_dice"] <= 1.0
    assert job["best_val_dice"] == job["progress"][0]["val_dice"]
    assert job["result_version"] == started["version"] and job["error"] is None and job["pid"] is None

    versions = client.get("/api/v1/models/liver/versions").json()["versions"]
    candidate = next(v for v in versions if v["version"] == job["result_version"])
    assert candidate["state"] == "candidate" and candidate["dataset_id"] == liver_dataset
    assert candidate["mar_key"] == f"liver/liver-{job['result_version']}.mar"
    assert candidate["card"]["training_job"] == job["id"] and candidate["card"]["dataset"]["pairs"] == PAIRS
    assert candidate["card"]["architecture"] == "erunet" and candidate["metrics"]["best_epoch"] == 1
    assert candidate["created_by"].startswith("user:") and "researcher@" in candidate["created_by"]
    store = jobs_world.store
    assert store.exists(store.buckets.models, candidate["mar_key"])
    assert store.exists(store.buckets.models, candidate["mar_key"].replace(".mar", ".json"))
    # registered with the organ server (not as its default), so it can be evaluated and promoted
    detail = client.get(f"/api/v1/models/liver/versions/{job['result_version']}").json()
    assert [e["action"] for e in detail["events"]] == ["recorded", "registered"], detail["events"]
    with ManagementClient(address, key, timeout=60) as mgmt:
        try:
            assert (
                mgmt.describe(candidate["model_name"], job["result_version"])[0]["modelVersion"]
                == (job["result_version"])
            )
            assert mgmt.describe(candidate["model_name"])[0]["modelVersion"] != job["result_version"]
        finally:
            mgmt.unregister(candidate["model_name"], job["result_version"])

    listed = client.get("/api/v1/training/jobs").json()["jobs"]
    assert listed[0]["id"] == job["id"] and listed[0]["progress"] == job["progress"]
    again = client.post(f"/api/v1/training/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished", again.text


def test_cancel_stops_the_jobs_process_group_and_a_second_job_waits(jobs_world, liver_dataset):
    # a hospital system's training key: it trains on its hospital's datasets (the doctor's, St. Anna's)
    with jobs_world.session() as session:
        _, raw = create_api_key(session, "st-anna-trainer", ["train"], hospital=HOSPITAL_A)
    client = jobs_world.client("anonymous")
    client.headers["Authorization"] = f"Bearer {raw}"
    long_run = {**TINY, "dataset_id": liver_dataset, "epochs": 1000, "minutes": 60}
    job = client.post("/api/v1/training/jobs", json=long_run).json()
    assert job["status"] == "running" and _alive(job["pid"])

    busy = client.post("/api/v1/training/jobs", json=long_run)
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_training_jobs", busy.text
    assert (
        "at most 1 at once" in busy.json()["error"]["message"]
        and job["id"] in busy.json()["error"]["message"]
    )

    cancelled = client.post(f"/api/v1/training/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["error"].startswith("cancelled by api-key:")
    assert not _alive(job["pid"])
    assert client.get(f"/api/v1/training/jobs/{job['id']}").json()["status"] == "cancelled"
    with jobs_world.session() as session:
        assert session.scalar(select(ModelVersion).where(ModelVersion.version == job["version"])) is None


def test_a_job_on_a_missing_dataset_fails_and_says_why(jobs_world):
    client = jobs_world.client("researcher")
    unknown = client.post(
        "/api/v1/training/jobs", json={**TINY, "dataset_id": "liver-nosuchset", "epochs": 1}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_dataset", unknown.text
    wrong = client.post("/api/v1/training/jobs", json={**TINY, "arch": "resnet", "dataset_id": "x"})
    error = wrong.json()["error"]
    assert wrong.status_code == 400 and error["code"] == "unknown_arch", wrong.text
    assert "erunet" in error["message"].split("valid: ")[1].split(", "), wrong.text  # the valid ones named

    with jobs_world.session() as session:  # a row whose objects are gone from the store
        session.add(
            Dataset(id="liver-gone0001", organ="liver", name="gone", pair_count=6, size_bytes=1,
                    dataset_hash="0" * 64, manifest_key="liver-gone0001/manifest.json")
        )  # fmt: skip
    job = client.post("/api/v1/training/jobs", json={**TINY, "dataset_id": "liver-gone0001", "epochs": 1})
    assert job.status_code == 201, job.text
    failed = _wait(client, job.json()["id"])
    assert failed["status"] == "failed" and failed["progress"] == [] and failed["result_version"] is None
    assert failed["error"].startswith("the trainer exited with code 2"), failed["error"]
    assert "no dataset 'liver-gone0001' in bucket" in failed["error"]


def test_jobs_a_previous_gateway_left_running_are_failed_at_start(jobs_world, liver_dataset):
    client = jobs_world.client("researcher")
    job = client.post(
        "/api/v1/training/jobs", json={**TINY, "dataset_id": liver_dataset, "epochs": 1000, "minutes": 60}
    ).json()
    assert job["status"] == "running" and _alive(job["pid"])

    restarted = TrainingJobs(jobs_world.settings, jobs_world.store)  # a new gateway process's view
    with jobs_world.session() as session:
        session.add(
            TrainingJob(organ="liver", dataset_id=liver_dataset, arch="erunet", budget_minutes=1, epochs=1,
                        state="queued", version="v-queued", created_by="test")
        )  # fmt: skip
        session.flush()
        left = {str(j.id): j.error for j in restarted.mark_interrupted(session)}
    # the old gateway here is still the worker's parent: its next read reaps it (after a restart, init does)
    shown = client.get(f"/api/v1/training/jobs/{job['id']}").json()
    assert not _alive(job["pid"])
    assert left[job["id"]] == (
        f"the gateway restarted while this job was running; its worker (pid {job['pid']}) was stopped; "
        "start the job again"
    )
    assert any(
        e == "the gateway restarted while this job was queued; start the job again" for e in left.values()
    )
    assert shown["status"] == "failed" and shown["error"] == left[job["id"]]


# --- the whole clinical loop on real data (issue 5, "Must show") ----------------------------------------
REFERENCE = range(200, 204)  # liver slices the tiny job never sees: the organ's frozen reference set
PATIENT_SLICES = ("300.png", "301.png", "302.png")


def _upload(client, name: str, indices) -> dict:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in indices:
            for file in (f"{i:03d}.png", f"{i:03d}_mask.png"):
                zf.write(LIVER_TRAIN / file, file)
    response = client.post(
        "/api/v1/datasets",
        data={"organ": "liver", "name": name},
        files={"file": (f"{name}.zip", buf.getvalue())},
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_the_clinical_loop_end_to_end_on_real_liver_slices(jobs_world, liver_dataset, torchserve_liver):
    """Train a candidate for one epoch → evaluated against the default (the shipped, trained liver model) on a
    reference set → promotion refused, forced with a reason, rolled back (TorchServe's default follows each
    step) → feedback on one evaluated case, replied and resolved → three slices of one patient segmented,
    thresholds saved, history and trend read. Real TorchServe, real object store, real liver slices."""
    if not (MODEL_STORE / "liver.mar").is_file():
        pytest.skip("the shipped model-store/liver.mar is missing")
    app = jobs_world.app()
    address, key = torchserve_liver.grpc_management_address, torchserve_liver.management_key
    management = lambda organ: ManagementClient(address, key, timeout=120)  # noqa: E731
    app.state.clinic.jobs.management = management
    app.state.clinic.promotions.rollout.management = management
    app.state.dataplane.clients["liver"] = InferenceClient(
        torchserve_liver.grpc_inference_address, torchserve_liver.inference_key, timeout=120
    )
    app.state.dataplane.record_segmentation = crud.record_segmentation
    name = torchserve_liver.model_name
    shipped = json.loads((MODEL_STORE / "liver.json").read_text())["version"]
    shutil.copy(MODEL_STORE / "liver.mar", torchserve_liver.model_store / "liver-shipped.mar")
    candidate = None
    with ManagementClient(address, key, timeout=300) as mgmt:
        mgmt.register("liver-shipped.mar", name, version=shipped, set_default=True)
    try:
        with jobs_world.session() as session:
            session.add(
                ModelVersion(organ="liver", model_name=name, version=shipped, state="default",
                             default_threshold=0.5, created_by="test")
            )  # fmt: skip
        app.state.clinic.directory.invalidate()
        doctor, researcher, admin = (jobs_world.client(r) for r in ("doctor", "researcher", "admin"))

        # a candidate trained for one epoch on six slices
        started = researcher.post(
            "/api/v1/training/jobs", json={**TINY, "dataset_id": liver_dataset, "epochs": 1, "minutes": 5}
        )
        assert started.status_code == 201, started.text
        job = _wait(researcher, started.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        candidate = job["result_version"]

        # evaluated against the default on the reference set: worse, so refused; forced; rolled back
        reference = _upload(doctor, "liver-reference", REFERENCE)
        r = researcher.put("/api/v1/models/liver/reference-set", json={"dataset_id": reference["id"]})
        assert r.status_code == 200 and r.json()["dataset_hash"] == reference["dataset_hash"], r.text
        refused = researcher.post(f"/api/v1/models/liver/versions/{candidate}/promote", json={})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "promotion_refused"
        with jobs_world.session() as session:
            gate = {
                e.model_version: e.mean_dice
                for e in session.scalars(select(Evaluation).where(Evaluation.purpose == "promotion"))
            }
        assert set(gate) == {candidate, shipped} and gate[shipped] > gate[candidate] + 0.02, gate
        with ManagementClient(address, key) as mgmt:
            assert mgmt.describe(name)[0]["modelVersion"] == shipped

        reason = "accepted for the scanner trial despite the reference set"
        forced = admin.post(
            f"/api/v1/models/liver/versions/{candidate}/promote", json={"force": True, "reason": reason}
        )
        assert forced.status_code == 200 and forced.json()["forced"] is True, forced.text
        with ManagementClient(address, key) as mgmt:
            assert mgmt.describe(name)[0]["modelVersion"] == candidate
        slice_png = (LIVER_TRAIN / PATIENT_SLICES[0]).read_bytes()
        served = doctor.post("/api/v1/segment", data={"organ": "liver"}, files={"file": ("s.png", slice_png)})
        assert served.status_code == 200 and served.json()["model"]["version"] == candidate, served.text

        rolled = researcher.post("/api/v1/models/liver/rollback", json={"reason": "worse on real cases"})
        assert rolled.status_code == 200 and rolled.json()["version"] == shipped, rolled.text
        with ManagementClient(address, key) as mgmt:
            assert mgmt.describe(name)[0]["modelVersion"] == shipped
        detail = doctor.get(f"/api/v1/models/liver/versions/{candidate}").json()
        assert detail["state"] == "retired"
        assert [e["action"] for e in detail["events"]][-3:] == [
            "promotion_refused", "forced_promotion", "rolled_back_from"
        ]  # fmt: skip

        # the doctor tests the candidate on the reference set and leaves feedback on one case
        tested = doctor.post(
            "/api/v1/evaluations",
            data={"organ": "liver", "version": candidate, "dataset_id": reference["id"]},
        )
        assert tested.status_code == 201, tested.text
        case = tested.json()["cases"][0]
        assert (
            len(tested.json()["cases"]) == len(REFERENCE)
            and doctor.get(case["overlay_url"]).status_code == 200
        )
        thread = doctor.post(
            f"/api/v1/models/liver/versions/{candidate}/feedback",
            json={"body": f"{case['name']}: lower-right part of the liver missing",
                  "evaluation_case_id": case["id"], "threshold": 0.5},
        )  # fmt: skip
        assert thread.status_code == 201, thread.text
        fid = thread.json()["id"]
        replied = researcher.post(f"/api/v1/feedback/{fid}/replies", json={"body": "more slices next run"})
        assert replied.status_code == 201, replied.text
        resolved = researcher.patch(f"/api/v1/feedback/{fid}", json={"status": "resolved"})
        assert resolved.status_code == 200 and resolved.json()["status"] == "resolved", resolved.text
        shown = doctor.get(f"/api/v1/feedback/{fid}").json()
        assert shown["evaluation_case_id"] == case["id"] and [x["body"] for x in shown["replies"]] == [
            "more slices next run"
        ]

        # three slices of one patient with the default model, a threshold saved for each
        ids = []
        for file, threshold in zip(PATIENT_SLICES, (0.4, 0.5, 0.6), strict=True):
            r = doctor.post(
                "/api/v1/segment",
                data={"organ": "liver", "patient_id": "P-E2E"},
                files={"file": (file, (LIVER_TRAIN / file).read_bytes())},
            )
            assert r.status_code == 200 and r.json()["model"]["version"] == shipped, r.text
            chosen = doctor.post(
                f"/api/v1/segmentations/{r.json()['id']}/choice", json={"threshold": threshold, "note": "e2e"}
            )
            assert chosen.status_code == 200, chosen.text
            ids.append(r.json()["id"])
        history = doctor.get("/api/v1/segmentations", params={"patient_id": "P-E2E"}).json()["segmentations"]
        assert [h["id"] for h in history] == ids[::-1]
        assert all(h["area"] > 0 and doctor.get(h["thumbnail_url"]).status_code == 200 for h in history)
        trend = doctor.get("/api/v1/patients/P-E2E/trend").json()["points"]
        assert [(p["segmentation_id"], p["threshold"], p["chosen"]) for p in trend] == [
            (i, t, True) for i, t in zip(ids, (0.4, 0.5, 0.6), strict=True)
        ]
    finally:
        with ManagementClient(address, key, timeout=120) as mgmt:
            mgmt.set_default(name, torchserve_liver.version)  # the session's other tests expect version 1
            for version in (shipped, candidate):
                if version:
                    mgmt.unregister(name, version)
