"""Issue 15: records of one hospital are not reachable from another (findings 1, 2 and 4), over both edges.

Doctor A ("doctor", St. Anna) owns a dataset, an evaluation and a feedback thread; doctor B ("doctor_b",
Bellevue) and a hospital system of Bellevue (an evaluate-only key) must get 404 for them, as if they did
not exist, and may not run an evaluation on A's dataset.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from medseg.v1 import clinic_pb2, clinic_pb2_grpc

from gateway.security import create_api_key
from tests.api.clinic_access import _prepare, _version
from tests.api.conftest import HOSPITAL_B, grpc_channel, png, small_dataset_zip

IMAGE = png(np.zeros((32, 32), np.uint8))
LABEL = png(np.pad(np.full((8, 8), 255, np.uint8), 12))


@pytest.fixture(scope="module")
def channel(world):
    yield from grpc_channel(world, world.app())


@pytest.fixture(scope="module")
def key_b(world) -> str:
    """An evaluate-and-feedback key of hospital B."""
    with world.session() as session:
        return create_api_key(session, "bellevue-ris", ["evaluate", "feedback"], hospital=HOSPITAL_B)[1]


@pytest.fixture(scope="module")
def a_records(world):
    """Doctor A's dataset, an evaluation on uploads and a feedback thread on its case."""
    _prepare(world)
    doctor = world.client("doctor")
    dataset = doctor.post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("a.zip", small_dataset_zip(2))}
    )
    assert dataset.status_code == 201, dataset.text
    evaluation = doctor.post(
        "/api/v1/evaluations",
        data={"organ": "liver"},
        files=[("images", ("p-0042.png", IMAGE)), ("labels", ("p-0042.png", LABEL))],
    )
    assert evaluation.status_code == 201, evaluation.text
    version = _version(world).version
    case_id = evaluation.json()["cases"][0]["id"]
    thread = doctor.post(
        f"/api/v1/models/liver/versions/{version}/feedback",
        json={"body": "patient P-0042: lower-right part missing", "evaluation_case_id": case_id},
    )
    assert thread.status_code == 201, thread.text
    return {
        "dataset": dataset.json()["id"],
        "evaluation": evaluation.json(),
        "case": case_id,
        "feedback": thread.json()["id"],
        "version": version,
    }


def _not_found(response):
    assert response.status_code == 404, (response.status_code, response.text[:300])


def _grpc_not_found(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value


# --- finding 1: another hospital's dataset through evaluations ----------------------------------------
def test_doctor_b_cannot_evaluate_on_a_dataset_of_hospital_a(world, a_records):
    doctor_b = world.client("doctor_b")
    _not_found(doctor_b.get(f"/api/v1/datasets/{a_records['dataset']}"))
    _not_found(
        doctor_b.post("/api/v1/evaluations", data={"organ": "liver", "dataset_id": a_records["dataset"]})
    )


def test_a_key_of_hospital_b_cannot_evaluate_on_a_dataset_of_hospital_a(world, channel, key_b, a_records):
    stub = clinic_pb2_grpc.EvaluationsStub(channel)
    metadata = (("authorization", f"Bearer {key_b}"),)
    request = clinic_pb2.RunEvaluationRequest(organ="liver", dataset_id=a_records["dataset"])
    _grpc_not_found(lambda: stub.RunEvaluation(request, metadata=metadata, timeout=60))


# --- finding 2: evaluations are scoped like segmentations -------------------------------------------
def test_doctor_b_sees_none_of_doctor_a_s_evaluations(world, a_records):
    doctor_b = world.client("doctor_b")
    evaluation = a_records["evaluation"]
    listed = doctor_b.get("/api/v1/evaluations").json()["evaluations"]
    assert evaluation["id"] not in [e["id"] for e in listed]
    _not_found(doctor_b.get(f"/api/v1/evaluations/{evaluation['id']}"))
    _not_found(doctor_b.get(evaluation["cases"][0]["overlay_url"]))
    _not_found(
        doctor_b.get("/api/v1/evaluations/compare", params={"a": evaluation["id"], "b": evaluation["id"]})
    )
    # ...while doctor A still sees their own
    doctor = world.client("doctor")
    assert doctor.get(f"/api/v1/evaluations/{evaluation['id']}").status_code == 200
    assert doctor.get(evaluation["cases"][0]["overlay_url"]).status_code == 200


def test_a_key_of_hospital_b_sees_none_of_hospital_a_s_evaluations(world, channel, key_b, a_records):
    stub = clinic_pb2_grpc.EvaluationsStub(channel)
    metadata = (("authorization", f"Bearer {key_b}"),)
    evaluation_id = a_records["evaluation"]["id"]
    listed = stub.ListEvaluations(clinic_pb2.ListEvaluationsRequest(), metadata=metadata, timeout=60)
    assert evaluation_id not in [e.id for e in listed.evaluations]
    _grpc_not_found(
        lambda: stub.GetEvaluation(clinic_pb2.GetEvaluationRequest(id=evaluation_id), metadata=metadata)
    )
    _grpc_not_found(
        lambda: stub.GetOverlay(
            clinic_pb2.GetOverlayRequest(evaluation_id=evaluation_id, case_id=a_records["case"]),
            metadata=metadata,
        )
    )


# --- finding 4: feedback threads ----------------------------------------------------------------------
def test_doctor_b_cannot_read_reply_to_or_attach_to_doctor_a_s_feedback(world, a_records):
    doctor_b = world.client("doctor_b")
    fid = a_records["feedback"]
    listed = doctor_b.get("/api/v1/feedback").json()["feedback"]
    assert fid not in [f["id"] for f in listed]
    _not_found(doctor_b.get(f"/api/v1/feedback/{fid}"))
    _not_found(doctor_b.post(f"/api/v1/feedback/{fid}/replies", json={"body": "me too"}))
    _not_found(doctor_b.patch(f"/api/v1/feedback/{fid}", json={"status": "resolved"}))
    _not_found(
        doctor_b.post(
            f"/api/v1/models/liver/versions/{a_records['version']}/feedback",
            json={"body": "attached to someone else's case", "evaluation_case_id": a_records["case"]},
        )
    )
    # the researchers it is addressed to still see it, with its case
    researcher = world.client("researcher")
    assert researcher.get(f"/api/v1/feedback/{fid}").status_code == 200
    assert researcher.get(a_records["evaluation"]["cases"][0]["overlay_url"]).status_code == 200


# --- the same hole as finding 1 where a dataset id is taken: reference sets and training jobs -----------
def test_keys_of_hospital_b_cannot_take_a_dataset_of_hospital_a_as_reference_set_or_for_training(
    world, a_records
):
    from tests.api.clinic_access import _no_training

    _no_training(world)
    with world.session() as session:
        models_b = create_api_key(session, "bellevue-research", ["models", "train"], hospital=HOSPITAL_B)[1]
    client = world.client("anonymous")
    client.headers["Authorization"] = f"Bearer {models_b}"
    dataset = a_records["dataset"]
    _not_found(client.put("/api/v1/models/liver/reference-set", json={"dataset_id": dataset}))
    body = {"organ": "liver", "dataset_id": dataset, "arch": "erunet", "minutes": 1, "epochs": 1}
    _not_found(client.post("/api/v1/training/jobs", json=body))


# --- sharing a feedback thread with the hospital's doctors (the `shared` flag, over both edges) ----------
def test_the_author_shares_a_thread_with_their_hospital_s_doctors_and_stops(world, channel, a_records):
    from gateway.resources.accounts import service as accounts
    from tests.api.conftest import HOSPITAL_A, PASSWORD

    with world.session() as session:
        if "doctor_a2" not in world.users:
            world.users["doctor_a2"] = accounts.create_user(
                session, email="doctor_a2@example.org", password=PASSWORD, full_name="A2", role="doctor",
                status="active", hospital=HOSPITAL_A, actor="test",
            )  # fmt: skip
        ris_a = create_api_key(session, "st-anna-ris", ["feedback"], hospital=HOSPITAL_A)[1]
    author, colleague, doctor_b = (world.client(w) for w in ("doctor", "doctor_a2", "doctor_b"))
    made = author.post(
        f"/api/v1/models/liver/versions/{a_records['version']}/feedback",
        json={"body": "the capsule is cut at 0.5 on most slices", "shared": True},
    )
    assert made.status_code == 201 and made.json()["shared"] is True, made.text
    fid = made.json()["id"]
    assert colleague.get(f"/api/v1/feedback/{fid}").json()["shared"] is True
    assert fid in [f["id"] for f in colleague.get("/api/v1/feedback").json()["feedback"]]
    assert colleague.post(f"/api/v1/feedback/{fid}/replies", json={"body": "same here"}).status_code == 201
    _not_found(doctor_b.get(f"/api/v1/feedback/{fid}"))  # another hospital's doctors: never
    # only the author shares it or stops: the colleague who sees it may not (nor change its status)
    refused = colleague.patch(f"/api/v1/feedback/{fid}", json={"shared": False})
    assert refused.status_code == 403, refused.text
    # the hospital's system sees it over gRPC, as the thread's `shared` field says
    stub = clinic_pb2_grpc.FeedbackStub(channel)
    metadata = (("authorization", f"Bearer {ris_a}"),)
    thread = stub.GetFeedback(clinic_pb2.GetFeedbackRequest(id=fid), metadata=metadata, timeout=60)
    assert thread.shared is True and [r.body for r in thread.replies] == ["same here"]

    stopped = author.patch(f"/api/v1/feedback/{fid}", json={"shared": False})
    assert stopped.status_code == 200 and stopped.json()["shared"] is False, stopped.text
    _not_found(colleague.get(f"/api/v1/feedback/{fid}"))
    assert fid not in [f["id"] for f in colleague.get("/api/v1/feedback").json()["feedback"]]
    assert world.client("researcher").get(f"/api/v1/feedback/{fid}").json()["shared"] is False  # still theirs
