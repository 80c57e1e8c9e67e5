"""What the pages of issue 18 ask of the API: thread lists with their replies, the audit log by a person's
e-mail, an account told once that it was approved, a DICOM upload's image as the model saw it, and errors
with a code of their own and the values their message names (`params`)."""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from gateway.models import ModelVersion
from tests.api.conftest import PASSWORD, png
from tests.services.test_imaging import dicom_bytes


@pytest.fixture(scope="module")
def liver(world):
    """The world with a default liver version on record (feedback is on a version)."""
    with world.session() as session:
        if session.scalar(select(ModelVersion).where(ModelVersion.organ == "liver")) is None:
            session.add(ModelVersion(organ="liver", model_name="liver", version="1", state="default",
                                     default_threshold=0.5, created_by="test"))  # fmt: skip
    world.app().state.clinic.directory.invalidate()
    return world


def test_the_thread_list_carries_each_threads_replies(liver):
    doctor, researcher = liver.client("doctor"), liver.client("researcher")
    thread = doctor.post(
        "/api/v1/models/liver/versions/1/feedback", json={"body": "caudate lobe missed"}
    ).json()
    for text in ("looking into it", "fixed in the next version"):
        assert (
            researcher.post(f"/api/v1/feedback/{thread['id']}/replies", json={"body": text}).status_code
            == 201
        )
    listed = {t["id"]: t for t in doctor.get("/api/v1/feedback").json()["feedback"]}
    assert [r["body"] for r in listed[thread["id"]]["replies"]] == [
        "looking into it",
        "fixed in the next version",
    ]
    assert listed[thread["id"]]["replies"] == doctor.get(f"/api/v1/feedback/{thread['id']}").json()["replies"]


def test_the_audit_log_finds_a_person_by_their_email(liver):
    liver.client("doctor").post("/api/v1/models/liver/versions/1/feedback", json={"body": "audited"})
    admin = liver.client("admin")
    doctor = liver.users["doctor"]
    logged_as = f"user:{doctor.id}:{doctor.email}"
    by_email = admin.get("/api/v1/audit", params={"actor": doctor.email}).json()["entries"]
    assert by_email and {e["actor"] for e in by_email} == {logged_as}
    assert admin.get("/api/v1/audit", params={"actor": doctor.email.upper()}).json()["entries"] == by_email
    assert admin.get("/api/v1/audit", params={"actor": logged_as}).json()["entries"] == by_email
    for nobody in ("nobody@example.org", "%@example.org", "_octor@example.org"):  # no pattern matching
        assert admin.get("/api/v1/audit", params={"actor": nobody}).json()["entries"] == []
    exported = admin.get("/api/v1/audit/export.csv", params={"actor": doctor.email}).text
    assert logged_as in exported


def test_an_account_is_told_once_that_it_was_approved(liver):
    anonymous = liver.client("anonymous")
    email = liver.users["pending"].email
    refused = anonymous.post("/api/v1/auth/sign-in", json={"email": email, "password": PASSWORD})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "account_pending"
    approved = liver.client("admin").patch(
        f"/api/v1/users/{liver.users['pending'].id}", json={"status": "active"}
    )
    assert approved.status_code == 200, approved.text
    answers = [
        anonymous.post("/api/v1/auth/sign-in", json={"email": email, "password": PASSWORD}) for _ in "12"
    ]
    assert [a.json()["newly_approved"] for a in answers] == [True, False]
    # an account made active (never waiting for approval) has nothing to be told
    made_active = anonymous.post(
        "/api/v1/auth/sign-in", json={"email": "researcher@example.org", "password": PASSWORD}
    )
    assert made_active.json()["newly_approved"] is False


def test_a_dicom_upload_can_come_back_as_the_image_the_model_saw(liver):
    hu = np.full((32, 32), -1000, np.int16)
    hu[8:24, 8:24] = 60  # liver's window: centre 60, width 400 → air black, the square mid-grey
    scan = dicom_bytes((hu + 1024).astype(np.int16), intercept=-1024)
    doctor = liver.client("doctor")
    plain = doctor.post("/api/v1/segment", data={"organ": "liver"}, files={"file": ("ct.dcm", scan)})
    assert plain.status_code == 200, plain.text
    assert "image_png" not in plain.json()  # the contract's answer unless asked
    asked = doctor.post(
        "/api/v1/segment", data={"organ": "liver", "include_image": "true"}, files={"file": ("ct.dcm", scan)}
    )
    assert asked.status_code == 200, asked.text
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(asked.json()["image_png"]))))
    assert image.shape == (32, 32) and image.dtype == np.uint8
    assert image[0, 0] == 0 and image[16, 16] == round(0.5 * 255)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("send", "status", "code", "params"),
    [
        (lambda c: c.post("/api/v1/datasets", data={"organ": "liver"}, files={"file": ("set.zip", _zip(
            {"000.png": png(np.zeros((32, 32), np.uint8))}))}),
         400, "dataset_missing_mask", {"name": "000.png", "expected": "000_mask.png"}),
        (lambda c: c.post("/api/v1/segment", data={"organ": "liver", "patient_id": "Anna Schmidt"},
                          files={"file": ("a.png", png(np.zeros((32, 32), np.uint8)))}),
         400, "invalid_patient_id", None),
        (lambda c: c.post("/api/v1/segment", data={"organ": "liver"},
                          files={"file": ("fake.png", b"not a png")}),
         400, "invalid_image", {"name": "fake.png"}),
        (lambda c: c.post("/api/v1/evaluate", data={"organ": "liver"}, files=[
            ("images", ("a.png", png(np.zeros((32, 32), np.uint8)))),
            ("labels", ("b.png", png(np.zeros((32, 32), np.uint8))))]),
         400, "label_mismatch", {"images": "a", "labels": "b.png"}),
        (lambda c: c.patch("/api/v1/users/me", json={"full_name": "x" * 201}),
         400, "invalid_input", {"field": "full_name", "rule": "too_long", "limit": 200}),
        (lambda c: c.get("/api/v1/models/kidney/versions"), 404, "unknown_organ", {"organ": "kidney"}),
    ],
    ids=["dataset without a mask", "a name as patient id", "not an image", "labels by name", "schema",
         "organ"],
)  # fmt: skip
def test_errors_carry_a_code_of_their_own_and_the_values_they_name(liver, send, status, code, params):
    response = send(liver.client("doctor"))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error.get("params") == params
