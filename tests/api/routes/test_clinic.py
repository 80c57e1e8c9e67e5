"""The clinical loop over HTTP: model registry with gated promotion and rollback, evaluations (MONAI
metrics, overlays, paired comparison), feedback threads, segmentation history with chosen thresholds,
stability and trend. Organ servers and TorchServe's management API are fakes that answer per version."""

from __future__ import annotations

import base64
import io
import json
from contextlib import contextmanager
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from common.errors import ServiceUnavailable
from gateway import crud
from gateway.models import Evaluation, ModelVersion, Segmentation
from gateway.service import model_registry, scoring
from gateway.service.images import decode_probability
from services.imaging import decode_image
from tests.api.clinic_access import LEGACY_MASK, LEGACY_THUMBNAIL, _segmentation
from tests.api.conftest import png, small_dataset_zip
from tests.services.test_imaging import dicom_bytes

SIZE = 32
SQUARE = np.pad(np.full((8, 8), 255, np.uint8), 12)  # the label of every case of small_dataset_zip


def good(h, w):  # exactly the label, confidently
    return np.pad(np.full((8, 8), 250, np.uint8), 12)


def fuzzy(h, w):  # the label at 0.5, a wider halo at 0.3: unstable between 0.2 and 0.8
    out = np.zeros((h, w), np.uint8)
    out[8:24, 8:24] = 80
    out[12:20, 12:20] = 150
    return out


def bad(h, w):  # misses most of the label
    out = np.zeros((h, w), np.uint8)
    out[12:14, 12:20] = 250
    return out


class VersionedOrgan:
    """An organ server whose answer depends on the version asked for."""

    def __init__(self, answers):
        self.answers, self.calls, self.down = answers, [], False

    def predict(self, model_name, data, version=None, timeout=None):
        if self.down:
            raise ServiceUnavailable("organ server 'liver' unavailable", code="organ_unavailable")
        self.calls.append(version)
        height, width = decode_image(data).array.shape[:2]  # any upload the gateway accepts, DICOM too
        return png(self.answers[version](height, width))

    def health(self, timeout=1.0):
        return (not self.down, "ok")

    def close(self):
        pass


class FakeManagement:
    def __init__(self):
        self.defaults, self.down = [], False

    @contextmanager
    def __call__(self, organ):
        yield self

    def set_default(self, model_name, version, timeout=None):
        if self.down:
            raise ServiceUnavailable("connection refused")
        self.defaults.append((model_name, version))
        return "ok"


@pytest.fixture(scope="module")
def loop(world):
    app = world.app()
    organ = VersionedOrgan({"1": good, "2": bad, "3": fuzzy, "4": good})
    app.state.dataplane.clients["liver"] = organ
    app.state.dataplane.record_segmentation = crud.record_segmentation
    mgmt = FakeManagement()
    app.state.clinic.promotions.rollout.management = mgmt
    with world.session() as session:
        session.add(
            ModelVersion(
                organ="liver",
                model_name="liver",
                version="1",
                state="default",
                default_threshold=0.5,
                created_by="test",
            )
        )
    app.state.clinic.directory.invalidate()
    return world, organ, mgmt


def _version(world, v) -> ModelVersion:
    with world.session() as session:
        return session.scalar(
            select(ModelVersion).where(ModelVersion.organ == "liver", ModelVersion.version == v)
        )


def _segment(client, patient="P-001", value=120):
    return client.post(
        "/api/v1/segment",
        data={"organ": "liver", "patient_id": patient},
        files={"file": ("scan.png", png(np.full((SIZE, SIZE), value, np.uint8)))},
    )


# --- registry ------------------------------------------------------------------------------------------
def test_seed_records_the_shipped_card_as_default_once(world, tmp_path):
    from gateway.service.organs import OrganRegistry
    from services.spec import SERVICES_DIR

    (tmp_path / "cells.json").write_text(
        json.dumps(
            {
                "model_name": "cells",
                "version": "2026.1",
                "default_threshold": 0.4,
                "metrics": {"val_dice": 0.8},
                "dataset": {"id": "cells-x", "hash": "ab" * 32},
                "commit": "abc123",
            }
        )
    )
    organs = OrganRegistry(SERVICES_DIR, tmp_path)
    with world.session() as session:
        seeded = model_registry.seed_from_model_store(session, organs)
        assert [(r.organ, r.version, r.state, r.dataset_hash) for r in seeded] == [
            ("cells", "2026.1", "default", "ab" * 32)
        ]
        assert model_registry.seed_from_model_store(session, organs) == []  # liver has one; cells now too


def test_segment_serves_and_labels_the_registry_default(loop):
    world, organ, _ = loop
    r = _segment(world.client("doctor"))
    assert r.status_code == 200, r.text
    assert r.json()["model"]["version"] == "1" and organ.calls[-1] == "1"
    assert r.json()["default_threshold"] == 0.5


def test_record_version_roles_and_bad_input(loop):
    world, _, _ = loop
    body = {"model_name": "liver", "version": "2", "metrics": {"val_dice": 0.5}, "dataset_hash": "c" * 64}
    assert world.client("doctor").post("/api/v1/models/liver/versions", json=body).status_code == 403
    r = world.client("researcher").post("/api/v1/models/liver/versions", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "candidate" and r.json()["parent_version"] == "1"
    again = world.client("key:models" if "models" in world.keys else "researcher").post(
        "/api/v1/models/liver/versions", json=body
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "version_exists"
    bad_version = world.client("researcher").post(
        "/api/v1/models/liver/versions", json={**body, "version": "a b"}
    )
    assert bad_version.status_code == 400
    assert world.client("researcher").post("/api/v1/models/nope/versions", json=body).status_code == 404
    for v in ("3", "4"):
        r = world.client("researcher").post("/api/v1/models/liver/versions", json={**body, "version": v})
        assert r.status_code == 201, r.text


def test_promotion_needs_a_reference_set_then_refuses_a_worse_candidate(loop):
    world, _, mgmt = loop
    researcher = world.client("researcher")
    r = researcher.post("/api/v1/models/liver/versions/2/promote", json={})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_reference_set"

    upload = world.client("doctor").post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("ref.zip", small_dataset_zip(3))}
    )
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    r = researcher.put("/api/v1/models/liver/reference-set", json={"dataset_id": dataset_id})
    assert r.status_code == 200 and r.json()["dataset_hash"] == upload.json()["dataset_hash"]

    r = researcher.post("/api/v1/models/liver/versions/2/promote", json={})
    assert r.status_code == 409 and r.json()["error"]["code"] == "promotion_refused", r.text
    assert _version(world, "2").state == "candidate" and _version(world, "1").state == "default"
    assert mgmt.defaults == []
    with world.session() as session:  # both evaluations are kept
        assert (
            session.scalar(
                select(func.count()).select_from(Evaluation).where(Evaluation.purpose == "promotion")
            )
            == 2
        )

    forced = researcher.post(
        "/api/v1/models/liver/versions/2/promote", json={"force": True, "reason": "x" * 20}
    )
    assert forced.status_code == 403
    no_reason = world.client("admin").post("/api/v1/models/liver/versions/2/promote", json={"force": True})
    assert no_reason.status_code == 400 and no_reason.json()["error"]["code"] == "reason_required"


def test_forced_promotion_then_rollback_and_retired_version_refused(loop):
    world, organ, mgmt = loop
    admin = world.client("admin")
    mgmt.down = True
    r = admin.post(
        "/api/v1/models/liver/versions/2/promote",
        json={"force": True, "reason": "urgent fix for the new scanner protocol"},
    )
    assert r.status_code == 503 and _version(world, "1").state == "default"
    mgmt.down = False
    r = admin.post(
        "/api/v1/models/liver/versions/2/promote",
        json={"force": True, "reason": "urgent fix for the new scanner protocol"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["forced"] is True and r.json()["previous_version"] == "1" and r.json()["dice_drop"] > 0.02
    assert mgmt.defaults[-1] == ("liver", "2")
    assert _segment(world.client("doctor")).json()["model"]["version"] == "2" and organ.calls[-1] == "2"

    r = world.client("researcher").post(
        "/api/v1/models/liver/rollback", json={"reason": "worse on real cases"}
    )
    assert r.status_code == 200 and r.json()["version"] == "1" and r.json()["state"] == "default"
    assert mgmt.defaults[-1] == ("liver", "1")
    assert _version(world, "2").state == "retired"
    assert _segment(world.client("doctor")).json()["model"]["version"] == "1"

    retired = world.client("admin").post("/api/v1/models/liver/versions/2/promote", json={})
    assert retired.status_code == 409 and retired.json()["error"]["code"] == "version_retired"
    unknown = world.client("researcher").post("/api/v1/models/liver/versions/99/promote", json={})
    assert unknown.status_code == 404
    detail = world.client("doctor").get("/api/v1/models/liver/versions/2").json()
    assert [e["action"] for e in detail["events"]] == [
        "recorded",
        "promotion_refused",
        "forced_promotion",
        "rolled_back_from",
    ]
    assert detail["lineage"] == ["2", "1"]


def test_good_candidate_passes_the_gate(loop):
    world, _, mgmt = loop
    r = world.client("researcher").post("/api/v1/models/liver/versions/4/promote", json={})
    assert r.status_code == 200, r.text
    assert r.json()["forced"] is False and abs(r.json()["dice_drop"]) < 1e-9
    assert mgmt.defaults[-1] == ("liver", "4")
    listing = world.client("key:segment").get("/api/v1/models/liver/versions").json()
    assert listing["default_version"] == "4"


# --- evaluations ---------------------------------------------------------------------------------------
def _eval(client, version, names=("a", "b")):
    files = []
    for n, name in enumerate(names):
        files.append(("images", (f"{name}.png", png(np.full((SIZE, SIZE), 40 + n, np.uint8)))))
        files.append(("labels", (f"{name}_mask.png", png(SQUARE))))
    return client.post("/api/v1/evaluations", data={"organ": "liver", "version": version}, files=files)


def test_evaluation_metrics_overlays_and_paired_comparison(loop):
    world, _, _ = loop
    doctor = world.client("doctor")
    good_eval = _eval(doctor, "1")
    assert good_eval.status_code == 201, good_eval.text
    body = good_eval.json()
    assert body["mean_dice"] == pytest.approx(1.0) and body["cases"][0]["hd95"] == pytest.approx(0.0)
    assert sum(t["best"] for t in body["per_threshold"]) == 1
    overlay = doctor.get(body["cases"][0]["overlay_url"])
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(overlay.content)).width >= 4 * SIZE

    # the doctor compares two of their own evaluations (another's would be 404: tests/api/test_tenancy.py)
    assert _eval(world.client("key:evaluate"), "2").status_code == 201
    bad_eval = _eval(doctor, "2").json()
    assert bad_eval["mean_dice"] < 0.5 and bad_eval["cases"][0]["hd95"] > 0
    cmp = doctor.get("/api/v1/evaluations/compare", params={"a": body["id"], "b": bad_eval["id"]}).json()
    assert (cmp["wins"], cmp["losses"], cmp["ties"]) == (2, 0, 0) and cmp["mean_difference"] > 0.5
    listed = doctor.get("/api/v1/evaluations", params={"organ": "liver", "version": "2"}).json()[
        "evaluations"
    ]
    assert bad_eval["id"] in [e["id"] for e in listed]


def test_evaluation_bad_input_and_store_down(loop):
    world, _, _ = loop
    doctor = world.client("doctor")
    mismatch = doctor.post(
        "/api/v1/evaluations",
        data={"organ": "liver"},
        files=[("images", ("a.png", png(SQUARE))), ("labels", ("zzz.png", png(SQUARE)))],
    )
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == "label_mismatch"
    assert _eval(doctor, "77").status_code == 404
    world.store.fail = True
    try:
        with world.session() as session:
            before = session.scalar(select(func.count()).select_from(Evaluation))
        r = _eval(doctor, "1")
        assert r.status_code == 503, r.text
        with world.session() as session:
            assert session.scalar(select(func.count()).select_from(Evaluation)) == before
    finally:
        world.store.fail = False


# --- feedback -------------------------------------------------------------------------------------------
def test_feedback_thread_on_an_evaluated_case(loop):
    world, _, _ = loop
    evaluation = _eval(world.client("doctor"), "4").json()
    case_id = evaluation["cases"][0]["id"]
    doctor = world.client("doctor")
    r = doctor.post(
        "/api/v1/models/liver/versions/4/feedback",
        json={"body": "case a: lower-right part missing", "evaluation_case_id": case_id, "threshold": 0.5},
    )
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    assert (
        world.client("researcher")
        .post("/api/v1/models/liver/versions/4/feedback", json={"body": "x"})
        .status_code
        == 403
    )
    assert doctor.post("/api/v1/models/liver/versions/404/feedback", json={"body": "x"}).status_code == 404
    researcher = world.client("researcher")
    assert (
        researcher.post(
            f"/api/v1/feedback/{fid}/replies", json={"body": "retraining with more cases"}
        ).status_code
        == 201
    )
    assert (
        researcher.patch(f"/api/v1/feedback/{fid}", json={"status": "in_progress"}).json()["status"]
        == "in_progress"
    )
    assert researcher.patch(f"/api/v1/feedback/{fid}", json={"status": "done"}).status_code == 400
    done = researcher.patch(
        f"/api/v1/feedback/{fid}", json={"status": "resolved", "addressed_by_version": "3"}
    )
    assert done.status_code == 200 and done.json()["addressed_by_version"] == "3"
    thread = world.client("doctor").get(f"/api/v1/feedback/{fid}").json()
    assert thread["status"] == "resolved" and [r["body"] for r in thread["replies"]] == [
        "retraining with more cases"
    ]
    assert world.client("key:segment").get(f"/api/v1/feedback/{fid}").status_code == 403


# --- segmentation history -----------------------------------------------------------------------------------
def test_history_choice_stability_and_trend(loop):
    world, organ, _ = loop
    doctor = world.client("doctor")
    ids = []
    for value in (100, 110, 120):
        r = _segment(doctor, patient="P-777", value=value)
        assert r.status_code == 200, r.text
        assert r.json()["stability"] == pytest.approx(1.0) and r.json()["doubtful"] is False
        ids.append(r.json()["id"])
    for seg_id, t in zip(ids, (0.4, 0.5, 0.6), strict=True):
        r = doctor.post(f"/api/v1/segmentations/{seg_id}/choice", json={"threshold": t, "note": "ok"})
        assert r.status_code == 200 and r.json()["chosen_threshold"] == t
    assert doctor.post(f"/api/v1/segmentations/{ids[0]}/choice", json={"threshold": 0.55}).status_code == 400
    assert (
        world.client("doctor_b")
        .post(f"/api/v1/segmentations/{ids[0]}/choice", json={"threshold": 0.5})
        .status_code
        == 404
    )

    items = doctor.get("/api/v1/segmentations", params={"patient_id": "P-777", "organ": "liver"}).json()
    assert [i["id"] for i in items["segmentations"]] == ids[::-1]
    assert items["segmentations"][0]["area"] == 64 and items["segmentations"][0]["area_unit"] == "px"
    thumb = doctor.get(items["segmentations"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    assert world.client("doctor_b").get("/api/v1/segmentations", params={"patient_id": "P-777"}).json() == {
        "segmentations": []
    }
    trend = doctor.get("/api/v1/patients/P-777/trend").json()["points"]
    assert [p["threshold"] for p in trend] == [0.4, 0.5, 0.6] and all(p["chosen"] for p in trend)
    with world.session() as session:
        rows = session.scalars(select(Segmentation).where(Segmentation.patient_id == "P-777")).all()
        assert {r.user_id for r in rows} == {world.users["doctor"].id}


def test_masks_and_thumbnails_of_new_rows_and_of_rows_written_before(loop):
    """A segmentation stores its probability map only: its masks (the answer's PNGs, byte for byte) and its
    thumbnail are made from it on request. A row written before (stored masks.zip and thumbnail) still
    answers its stored objects, in the same history."""
    world, _, _ = loop
    doctor = world.client("doctor")
    made = doctor.post(
        "/api/v1/segment",
        data={"organ": "liver", "patient_id": "P-888", "masks": "none"},
        files={"file": ("scan.png", png(np.full((SIZE, SIZE), 120, np.uint8)))},
    ).json()
    assert made["masks"] == []
    assert [key for _, key in world.store.objects if made["id"] in key] == [
        f"segmentations/liver/{made['id']}/probability.png"
    ]
    everything = _segment(doctor, patient="P-888").json()  # the same map: the organ server's `good`
    base = f"/api/v1/segmentations/{made['id']}"
    for m in everything["masks"]:
        got = doctor.get(f"{base}/mask.png", params={"threshold": m["threshold"]})
        assert got.status_code == 200 and got.headers["x-medseg-threshold"] == f"{m['threshold']:.1f}"
        assert got.content == base64.b64decode(m["mask_png"])
    prob = decode_probability(base64.b64decode(made["probability_png"]))
    assert doctor.get(f"{base}/thumbnail.png").content == scoring.thumbnail_png(prob)

    before = _segmentation(world, "doctor", legacy=True)
    old = f"/api/v1/segmentations/{before}"
    assert doctor.get(f"{old}/mask.png", params={"threshold": 0.3}).content == LEGACY_MASK
    assert doctor.get(f"{old}/thumbnail.png").content == LEGACY_THUMBNAIL
    listed = {s["id"]: s for s in doctor.get("/api/v1/segmentations").json()["segmentations"]}
    assert listed[before]["thumbnail_url"] == f"{old}/thumbnail.png" and listed[before]["area"] == 4
    assert listed[made["id"]]["thumbnail_url"] == f"{base}/thumbnail.png"
    assert listed[made["id"]]["area"] == listed[everything["id"]]["area"] == 64
    assert listed[made["id"]]["stability"] == everything["stability"] == made["stability"]


@pytest.mark.parametrize("name", ["Anna Schmidt", "张三", "P 0042", "-P1", "x" * 65, "P1\n"])
def test_a_patient_id_that_could_be_a_name_is_refused_everywhere(loop, name):
    world, _, _ = loop
    doctor = world.client("doctor")
    with world.session() as session:
        before = session.scalar(select(func.count()).select_from(Segmentation))
    response = _segment(doctor, patient=name)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_patient_id"
    listed = doctor.get("/api/v1/segmentations", params={"patient_id": name})
    assert listed.status_code == 400 and listed.json()["error"]["code"] == "invalid_patient_id"
    if "\n" not in name and len(name) < 65:  # a path segment
        trend = doctor.get(f"/api/v1/patients/{quote(name)}/trend")
        assert trend.status_code == 400 and trend.json()["error"]["code"] == "invalid_patient_id"
    with world.session() as session:  # nothing stored
        assert session.scalar(select(func.count()).select_from(Segmentation)) == before


@pytest.mark.parametrize("patient_id", ["P-0042", "LITS-000", "2024.17:3", "a"])
def test_pseudonymous_patient_ids_are_accepted(loop, patient_id):
    doctor = loop[0].client("doctor")
    response = _segment(doctor, patient=patient_id)
    assert response.status_code == 200, response.text
    listed = doctor.get("/api/v1/segmentations", params={"patient_id": patient_id}).json()["segmentations"]
    assert response.json()["id"] in [item["id"] for item in listed]
    assert doctor.get(f"/api/v1/patients/{patient_id}/trend").status_code == 200


def test_unstable_result_is_flagged_and_suggested_threshold_learns(loop):
    world, organ, _ = loop
    # make the fuzzy version the default through the registry, without the gate (direct DB for the test)
    with world.session() as session:
        for row in session.scalars(select(ModelVersion).where(ModelVersion.organ == "liver")):
            row.state = (
                "default" if row.version == "3" else ("retired" if row.state == "default" else row.state)
            )
    world.app().state.clinic.directory.invalidate()
    r = _segment(world.client("doctor"), patient="P-9")
    assert r.status_code == 200 and r.json()["model"]["version"] == "3"
    assert r.json()["stability"] < 0.8 and r.json()["doubtful"] is True
    suggested = world.client("doctor").get(
        "/api/v1/models/liver/suggested-threshold", params={"version": "4"}
    )
    assert suggested.status_code == 200
    # version 4: evaluations of 3 + 2 cases whose best threshold is 0.2 (all tie → the lowest), and the
    # doctor's saved 0.4, 0.5, 0.6 (one case each): (5 × 0.2 + 1.5) / 8 = 0.3125 → 0.3
    assert suggested.json()["suggested_threshold"] == 0.3
    assert suggested.json()["default_threshold"] == 0.5


def test_segment_as_api_key_and_organ_server_down(loop):
    world, organ, _ = loop
    key = world.client("key:segment")
    r = _segment(key, patient="P-KEY")
    assert r.status_code == 200
    # the hospital system that segmented saves its doctor's choice (the gRPC edge has only API keys)
    chosen = key.post(f"/api/v1/segmentations/{r.json()['id']}/choice", json={"threshold": 0.5})
    assert chosen.status_code == 200 and chosen.json()["chosen_threshold"] == 0.5
    other = world.client("key:admin").post(
        f"/api/v1/segmentations/{r.json()['id']}/choice", json={"threshold": 0.4}
    )
    assert other.status_code == 403  # an admin key sees it, but did not make it
    assert [i["patient_id"] for i in key.get("/api/v1/segmentations").json()["segmentations"]][:1] == [
        "P-KEY"
    ]
    organ.down = True
    try:
        assert _segment(world.client("doctor")).status_code == 503
    finally:
        organ.down = False
    assert base64.b64decode(r.json()["probability_png"]).startswith(b"\x89PNG")


def test_evaluation_reports_the_spread_of_dice_over_its_cases(loop):
    world, _, _ = loop
    shifted = np.zeros((SIZE, SIZE), np.uint8)
    shifted[12:20, 16:24] = 255  # half of it overlaps the predicted square: Dice 0.5
    files = [
        ("images", ("a.png", png(np.full((SIZE, SIZE), 40, np.uint8)))),
        ("labels", ("a_mask.png", png(SQUARE))),
        ("images", ("b.png", png(np.full((SIZE, SIZE), 41, np.uint8)))),
        ("labels", ("b_mask.png", png(shifted))),
    ]
    doctor = world.client("doctor")
    r = doctor.post("/api/v1/evaluations", data={"organ": "liver", "version": "1"}, files=files)
    assert r.status_code == 201, r.text
    dice = sorted(c["dice"] for c in r.json()["cases"])
    assert dice == pytest.approx([0.5, 1.0])
    assert r.json()["mean_dice"] == pytest.approx(0.75) and r.json()["std_dice"] == pytest.approx(0.25)
    # IoU of the shifted case: 32 shared pixels of 96 covered
    assert sorted(c["iou"] for c in r.json()["cases"]) == pytest.approx([1 / 3, 1.0])
    assert r.json()["mean_iou"] == pytest.approx(2 / 3)


def test_trend_is_in_square_millimetres_when_the_image_carries_its_pixel_spacing(loop):
    world, _, _ = loop
    doctor = world.client("doctor")
    scan = dicom_bytes(np.arange(SIZE * SIZE, dtype=np.int16).reshape(SIZE, SIZE), spacing=(0.75, 0.8))
    r = doctor.post(
        "/api/v1/segment",
        data={"organ": "liver", "patient_id": "P-MM"},
        files={"file": ("slice.dcm", scan)},
    )
    assert r.status_code == 200, r.text
    chosen = doctor.post(f"/api/v1/segmentations/{r.json()['id']}/choice", json={"threshold": 0.5})
    assert chosen.status_code == 200, chosen.text
    pixels = next(m["area_px"] for m in r.json()["masks"] if m["threshold"] == 0.5)
    assert pixels > 0
    item = doctor.get("/api/v1/segmentations", params={"patient_id": "P-MM"}).json()["segmentations"][0]
    assert item["area_unit"] == "mm2" and item["area"] == pytest.approx(pixels * 0.75 * 0.8)
    (point,) = doctor.get("/api/v1/patients/P-MM/trend").json()["points"]
    assert point["unit"] == "mm2" and point["area"] == pytest.approx(pixels * 0.75 * 0.8)
