"""The same operations over gRPC as over HTTP (issue 5): one table of rows (operation, caller, input,
expected outcome) and two drivers that run every row, HTTP through the ASGI test client and gRPC through an
in-process medseg.v1 server and the generated stubs, over one app (one database, one Clinic).

The operations are those of the access table (gateway/access.py), which names each one's HTTP route and gRPC
method: an HTTP route under /api/v1 or a gRPC method missing from the table fails here, and so does an
operation without a case (rows here when it has a gRPC method, else a rule of tests/api/test_access.py).
Who may call an operation is checked from the table on both edges: the HTTP route declares the table's
entry, every scope of the entry is admitted over both, a key without them and no key are refused over both.

An answer is compared in the HTTP JSON shape (the gRPC message's fields, with a detail's summary lifted
out of its sub-message). An error is compared as (HTTP status or gRPC code, our error code); after an error
nothing stored may have changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from fastapi.routing import APIRoute
from google.protobuf import json_format
from medseg.v1 import clinic_pb2, clinic_pb2_grpc, segmentation_pb2, segmentation_pb2_grpc
from sqlalchemy import func, select

from common.errors import ServiceUnavailable
from gateway import crud
from gateway.access import OPERATIONS
from gateway.models import Evaluation, Feedback, FeedbackReply, ModelVersion, Segmentation, TrainingJob
from gateway.service import masks, scoring
from gateway.service.training_jobs import FINISHED
from tests.api.clinic_access import (
    LEGACY_MASK,
    LEGACY_THUMBNAIL,
    PROBABILITY,
    _evaluation,
    _feedback,
    _job,
    _key_dataset,
    _no_default,
    _no_training,
    _reference,
    _segmentation,
    _version,
)
from tests.api.conftest import KEY_SCOPES, grpc_channel, png, sqlite_database
from tests.api.test_access import ACCESS as ROUTE_RULES
from tests.gateway.fakes import FakeClient

IMAGE = png(np.full((32, 32), 90, np.uint8))
LABEL = png(np.pad(np.full((8, 8), 255, np.uint8), 12))
WIDE_LABEL = png(np.zeros((32, 48), np.uint8))
PNG_MAGIC = b"\x89PNG"
OWNER = "key_with_scope"  # clinic_access's name for the `segment` key as the owner of a segmentation


@pytest.fixture(scope="module")
def people_db(tmp_path_factory):
    """SQLite only: the table is about the two transports; the backends are covered by test_access."""
    return sqlite_database(tmp_path_factory, "parity-db")


@pytest.fixture(scope="module")
def app(world):
    app = world.app()
    app.state.dataplane.record_segmentation = crud.record_segmentation  # segmentations become history
    yield app
    app.state.clinic.jobs.stop_workers()


@pytest.fixture(scope="module")
def channel(world, app):
    yield from grpc_channel(world, app)


# --- the outcome both drivers report ------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    status: object  # HTTP status code or grpc.StatusCode
    code: str  # our error code: {"error": {"code"}} / trailing metadata medseg-error-code


@dataclass(frozen=True)
class Err:
    http: int
    grpc: grpc.StatusCode
    code: str


@dataclass(frozen=True)
class Row:
    op: str  # the operation's name in the access table; HTTP_CALLS holds how to call its route
    key: str | None  # the API key's scope (None: no credentials)
    args: Callable  # world → the input, by the proto's field names
    expect: dict | Err  # fields of the answer (a value or a predicate), or the error
    during: Callable = field(default=lambda world: nullcontext())  # e.g. a dependency that is down
    id: str = ""


# --- HTTP driver --------------------------------------------------------------------------------------------
def _json(a: dict, *names: str) -> dict:
    return {n: a[n] for n in names if n in a}


def _files(a: dict) -> list:
    return [("images", f) for f in a.get("images", [])] + [("labels", f) for f in a.get("labels", [])]


M = "/api/v1/models"
HTTP_CALLS = {
    "organs.list": lambda c, a: c.get("/api/v1/organs"),
    "segment": lambda c, a: c.post(
        "/api/v1/segment",
        data=_json(a, "organ", "patient_id", "masks"),
        files={"file": ("scan.png", a["image"])},
    ),
    "evaluate": lambda c, a: c.post("/api/v1/evaluate", data=_json(a, "organ"), files=_files(a)),
    "models.versions.list": lambda c, a: c.get(f"{M}/{a['organ']}/versions"),
    "models.versions.record": lambda c, a: c.post(f"{M}/{a['organ']}/versions", json=a["new_version"]),
    "models.versions.show": lambda c, a: c.get(f"{M}/{a['organ']}/versions/{a['version']}"),
    "models.promote": lambda c, a: c.post(
        f"{M}/{a['organ']}/versions/{a['version']}/promote", json=_json(a, "force", "reason")
    ),
    "models.rollback": lambda c, a: c.post(f"{M}/{a['organ']}/rollback", json=_json(a, "reason")),
    "models.reference_set.set": lambda c, a: c.put(
        f"{M}/{a['organ']}/reference-set", json=_json(a, "dataset_id")
    ),
    "models.reference_set.show": lambda c, a: c.get(f"{M}/{a['organ']}/reference-set"),
    "models.suggested_threshold": lambda c, a: c.get(
        f"{M}/{a['organ']}/suggested-threshold", params=_json(a, "version")
    ),
    "evaluations.run": lambda c, a: c.post(
        "/api/v1/evaluations", data=_json(a, "organ", "version", "dataset_id"), files=_files(a)
    ),
    "evaluations.list": lambda c, a: c.get(
        "/api/v1/evaluations", params=_json(a, "organ", "version", "limit")
    ),
    "evaluations.show": lambda c, a: c.get(f"/api/v1/evaluations/{a['id']}"),
    "evaluations.compare": lambda c, a: c.get("/api/v1/evaluations/compare", params=_json(a, "a", "b")),
    "evaluations.overlay": lambda c, a: c.get(
        f"/api/v1/evaluations/{a['evaluation_id']}/cases/{a['case_id']}/overlay.png"
    ),
    "feedback.create": lambda c, a: c.post(
        f"{M}/{a['organ']}/versions/{a['version']}/feedback",
        json=_json(a, "body", "evaluation_case_id", "segmentation_id", "threshold", "shared"),
    ),
    "feedback.list": lambda c, a: c.get("/api/v1/feedback", params=_json(a, "organ", "version", "status")),
    "feedback.show": lambda c, a: c.get(f"/api/v1/feedback/{a['id']}"),
    "feedback.reply": lambda c, a: c.post(
        f"/api/v1/feedback/{a['feedback_id']}/replies", json=_json(a, "body")
    ),
    "feedback.update": lambda c, a: c.patch(
        f"/api/v1/feedback/{a['id']}", json=_json(a, "status", "addressed_by_version", "shared")
    ),
    "segmentations.list": lambda c, a: c.get(
        "/api/v1/segmentations", params=_json(a, "patient_id", "organ", "limit")
    ),
    "segmentations.choose_threshold": lambda c, a: c.post(
        f"/api/v1/segmentations/{a['segmentation_id']}/choice", json=_json(a, "threshold", "note")
    ),
    "segmentations.thumbnail": lambda c, a: c.get(
        f"/api/v1/segmentations/{a['segmentation_id']}/thumbnail.png"
    ),
    "segmentations.mask": lambda c, a: c.get(
        f"/api/v1/segmentations/{a['segmentation_id']}/mask.png", params=_json(a, "threshold")
    ),
    "segmentations.trend": lambda c, a: c.get(
        f"/api/v1/patients/{a['patient_id']}/trend", params=_json(a, "organ")
    ),
    "training.jobs.list": lambda c, a: c.get("/api/v1/training/jobs"),
    "training.jobs.start": lambda c, a: c.post("/api/v1/training/jobs", json=a),
    "training.jobs.show": lambda c, a: c.get(f"/api/v1/training/jobs/{a['id']}"),
    "training.jobs.cancel": lambda c, a: c.post(f"/api/v1/training/jobs/{a['id']}/cancel"),
}


def call_http(world, channel, row: Row, args: dict):
    client = world.client(f"key:{row.key}" if row.key else "anonymous")
    response = HTTP_CALLS[row.op](client, args)
    if response.status_code >= 400:
        return Failure(response.status_code, response.json()["error"]["code"])
    if response.headers["content-type"] == "image/png":
        threshold = response.headers.get("x-medseg-threshold")  # a stored mask's, in the gRPC answer's field
        return {"png": response.content} | ({"threshold": float(threshold)} if threshold else {})
    return response.json()


# --- gRPC driver --------------------------------------------------------------------------------------------
def _methods() -> dict[str, tuple[object, object]]:
    """ "Service/Method" → (pb2 module, pb2_grpc module), over both medseg.v1 files."""
    out = {}
    for pb, pb_grpc in ((segmentation_pb2, segmentation_pb2_grpc), (clinic_pb2, clinic_pb2_grpc)):
        for service in pb.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out[f"{service.name}/{method.name}"] = (pb, pb_grpc)
    return out


METHODS = _methods()
NESTED = {"ModelVersionDetail": "version", "EvaluationDetail": "evaluation"}  # a detail's summary


def _request(pb, service: str, method: str, args: dict):
    input_type = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method].input_type
    message = getattr(pb, input_type.name)()
    for name, value in args.items():
        if name in ("images", "labels"):
            getattr(message, name).extend(
                segmentation_pb2.LabelledImage(filename=n, image=data) for n, data in value
            )
        elif isinstance(value, dict):
            json_format.ParseDict(value, getattr(message, name))
        elif isinstance(value, list):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def call_grpc(world, channel, row: Row, args: dict):
    rpc = OPERATIONS[row.op].grpc
    pb, pb_grpc = METHODS[rpc]
    service, method = rpc.split("/")
    stub = getattr(pb_grpc, f"{service}Stub")(channel)
    metadata = (("authorization", f"Bearer {world.keys[row.key]}"),) if row.key else ()
    try:
        answer = getattr(stub, method)(_request(pb, service, method, args), metadata=metadata, timeout=60)
    except grpc.RpcError as exc:
        codes = dict(exc.trailing_metadata() or ())
        return Failure(exc.code(), codes.get("medseg-error-code", ""))
    if answer.DESCRIPTOR.name == "Png":
        return {"png": answer.png}
    if answer.DESCRIPTOR.name == "MaskPng":
        return {"png": answer.png, "threshold": answer.threshold}
    data = json_format.MessageToDict(
        answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if nested := NESTED.get(answer.DESCRIPTOR.name):
        data.update(data.pop(nested))
    return data


DRIVERS = {"http": call_http, "grpc": call_grpc}


# --- the table ----------------------------------------------------------------------------------------------
def _new_version() -> dict:
    return {"model_name": "liver", "version": f"p-{uuid.uuid4().hex[:10]}", "metrics": {"val_dice": 0.9}}


def _existing_version(world) -> dict:
    row = _version(world)
    return {"model_name": "liver", "version": row.version}


def _promotable(world) -> dict:
    _no_default(world)  # no default: the first promotion has nothing to be gated against
    return {"organ": "liver", "version": _version(world).version}


def _rollbackable(world) -> dict:
    _no_default(world)
    old = _version(world, state="retired")
    _version(world, state="default", previous_default_id=old.id)
    world.app().state.clinic.directory.invalidate()
    return {"organ": "liver", "reason": "the new one misses small lesions"}


def _case(world) -> dict:
    evaluation_id, case_id = _evaluation(world)
    return {"evaluation_id": evaluation_id, "case_id": case_id}


def _thread_with_case(world) -> dict:
    return {
        "organ": "liver",
        "version": _version(world).version,
        "body": "case 6: lower-right part of the liver missing",
        "evaluation_case_id": _evaluation(world, "feedback")[1],  # a case the feedback key evaluated
        "threshold": 0.5,
    }


def _organ_down(world):
    from contextlib import contextmanager

    @contextmanager
    def down():
        clients = world.app().state.dataplane.clients
        healthy = clients["liver"]
        clients["liver"] = FakeClient(error=ServiceUnavailable("liver down", code="organ_unavailable"))
        try:
            yield
        finally:
            clients["liver"] = healthy

    return down()


def _start(world) -> dict:
    _no_training(world)
    return {
        "organ": "liver",
        "dataset_id": _key_dataset(world, "train"),
        "arch": "erunet",
        "minutes": 1.0,
        "epochs": 1,
    }


def _is_png(value) -> bool:
    return isinstance(value, bytes) and value.startswith(PNG_MAGIC)


def _between(low, high):
    return lambda value: value is not None and low <= value <= high


UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"
S = grpc.StatusCode


def _organs(names: list) -> bool:
    return "liver" in [o["name"] for o in names]


ROWS = [
    # --- organs: any scope that reads models will do, on both edges (gRPC refused `models` keys before)
    Row("organs.list", "segment", lambda w: {}, {"organs": _organs}),
    Row("organs.list", "models", lambda w: {}, {"organs": _organs}, id="a models key"),
    Row("organs.list", "evaluate", lambda w: {}, {"organs": _organs}, id="an evaluate key"),
    Row("organs.list", "datasets", lambda w: {}, Err(403, S.PERMISSION_DENIED, "forbidden"),
        id="key without the scope"),
    Row("organs.list", None, lambda w: {}, Err(401, S.UNAUTHENTICATED, "missing_credentials"), id="no key"),
    # --- evaluating at once, nothing kept
    Row("evaluate", "evaluate",
        lambda w: {"organ": "liver", "images": [("a.png", IMAGE)], "labels": [("a.png", LABEL)]},
        {"organ": "liver", "images": lambda v: [i["filename"] for i in v] == ["a.png"],
         "mean_dice": _between(0, 1), "per_threshold": lambda v: len(v) > 1}),
    Row("evaluate", "evaluate",
        lambda w: {"organ": "kidney", "images": [("a.png", IMAGE)], "labels": [("a.png", LABEL)]},
        Err(404, S.NOT_FOUND, "unknown_organ"), id="unknown organ"),
    # --- segmentation, recorded as a clinical record on both edges
    Row("segment", "segment", lambda w: {"organ": "liver", "image": IMAGE, "patient_id": "P-9"},
        {"organ": "liver", "width": 32, "height": 32, "stability": _between(0, 1),
         "doubtful": lambda v: isinstance(v, bool), "suggested_threshold": _between(0.2, 0.8),
         "masks": lambda v: [m["threshold"] for m in v] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}),
    Row("segment", "segment", lambda w: {"organ": "liver", "image": IMAGE, "masks": "0.7,0.4"},
        {"stability": _between(0, 1), "masks": lambda v: [m["threshold"] for m in v] == [0.4, 0.7]},
        id="the masks asked for"),
    Row("segment", "segment", lambda w: {"organ": "liver", "image": IMAGE, "masks": "none"},
        {"stability": _between(0, 1), "masks": lambda v: not v}, id="no masks"),
    Row("segment", "segment", lambda w: {"organ": "liver", "image": IMAGE, "masks": "0.45"},
        Err(400, S.INVALID_ARGUMENT, "invalid_masks"), id="masks off the grid"),
    # --- model versions
    Row("models.versions.list", "models", lambda w: {"organ": "liver"},
        {"organ": "liver", "versions": lambda v: isinstance(v, list)}),
    Row("models.versions.list", "models", lambda w: {"organ": "kidney"},
        Err(404, S.NOT_FOUND, "unknown_organ"),
        id="unknown organ"),
    Row("models.versions.list", None, lambda w: {"organ": "liver"},
        Err(401, S.UNAUTHENTICATED, "missing_credentials"), id="no key"),
    Row("models.versions.list", "datasets", lambda w: {"organ": "liver"},
        Err(403, S.PERMISSION_DENIED, "forbidden"), id="key without the scope"),
    Row("models.versions.record", "models", lambda w: {"organ": "liver", "new_version": _new_version()},
        {"state": "candidate", "metrics": {"val_dice": 0.9},
         "created_by": lambda v: v.startswith("api-key:")}),
    Row("models.versions.record", "models", lambda w: {"organ": "liver", "new_version": _existing_version(w)},
        Err(409, S.ALREADY_EXISTS, "version_exists"), id="version recorded twice"),
    Row("models.versions.record", "models",
        lambda w: {"organ": "liver", "new_version": {"model_name": "liver", "version": "x" * 65}},
        Err(400, S.INVALID_ARGUMENT, "invalid_input"), id="version name too long"),
    Row("models.versions.show", "models", lambda w: {"organ": "liver", "version": _version(w).version},
        {"state": "candidate", "lineage": lambda v: len(v) == 1, "events": []}),
    Row("models.versions.show", "models", lambda w: {"organ": "liver", "version": "no-such-version"},
        Err(404, S.NOT_FOUND, "unknown_version"), id="unknown version"),
    Row("models.promote", "models", _promotable,
        {"forced": False, "version": lambda v: v["state"] == "default"}),
    Row("models.promote", "models",
        lambda w: {"organ": "liver", "version": _version(w, state="retired").version},
        Err(409, S.FAILED_PRECONDITION, "version_retired"), id="retired version"),
    Row("models.promote", "models", lambda w: {"organ": "liver", "version": "no-such-version"},
        Err(404, S.NOT_FOUND, "unknown_version"), id="unknown version"),
    Row("models.promote", "models",
        lambda w: {**_promotable(w), "force": True, "reason": "short"},
        Err(403, S.PERMISSION_DENIED, "forbidden"), id="force without admin"),
    Row("models.rollback", "models", _rollbackable, {"state": "default", "retired_at": None}),
    Row("models.reference_set.set", "models",
        lambda w: {"organ": "liver", "dataset_id": _key_dataset(w, "models")},
        {"organ": "liver", "dataset_hash": "0" * 64}),
    Row("models.reference_set.set", "models", lambda w: {"organ": "liver", "dataset_id": "no-such-dataset"},
        Err(404, S.NOT_FOUND, "unknown_dataset"), id="unknown dataset"),
    Row("models.reference_set.show", "segment", lambda w: (_reference(w), {"organ": "liver"})[1],
        {"organ": "liver"}),
    Row("models.suggested_threshold", "evaluate", lambda w: {"organ": "liver"},
        {"organ": "liver", "suggested_threshold": _between(0.2, 0.8)}),
    Row("models.suggested_threshold", "evaluate", lambda w: {"organ": "liver", "version": "no-such-version"},
        Err(404, S.NOT_FOUND, "unknown_version"), id="unknown version"),
    # --- evaluations
    Row("evaluations.run", "evaluate",
        lambda w: {"organ": "liver", "images": [("a.png", IMAGE)], "labels": [("a_mask.png", LABEL)]},
        {"case_count": 1, "purpose": "test", "cases": lambda v: [c["name"] for c in v] == ["a"]}),
    Row("evaluations.run", "evaluate",
        lambda w: {"organ": "liver", "images": [("a.png", IMAGE)], "labels": [("b.png", LABEL)]},
        Err(400, S.INVALID_ARGUMENT, "label_mismatch"), id="labels that do not match images"),
    Row("evaluations.run", "evaluate",
        lambda w: {"organ": "liver", "images": [("a.png", IMAGE)], "labels": [("a.png", WIDE_LABEL)]},
        Err(400, S.INVALID_ARGUMENT, "size_mismatch"), id="label of another size"),
    Row("evaluations.run", "evaluate",
        lambda w: {"organ": "liver", "version": "no-such-version", "images": [("a.png", IMAGE)],
                   "labels": [("a.png", LABEL)]},
        Err(404, S.NOT_FOUND, "unknown_version"), id="unknown version"),
    Row("evaluations.run", "evaluate",
        lambda w: {"organ": "liver", "images": [("a.png", IMAGE)], "labels": [("a.png", LABEL)]},
        Err(503, S.UNAVAILABLE, "organ_unavailable"), during=_organ_down, id="organ server down"),
    Row("evaluations.list", "evaluate", lambda w: (_evaluation(w), {"organ": "liver", "limit": 5})[1],
        {"evaluations": lambda v: 1 <= len(v) <= 5}),
    Row("evaluations.list", "evaluate", lambda w: {"limit": 500},
        Err(400, S.INVALID_ARGUMENT, "invalid_input"), id="limit too large"),
    Row("evaluations.show", "evaluate", lambda w: {"id": _evaluation(w)[0]},
        {"mean_dice": 0.9, "cases": lambda v: v[0]["dice_at"] == {"0.5": 0.9}}),
    Row("evaluations.show", "evaluate", lambda w: {"id": UNKNOWN_UUID},
        Err(404, S.NOT_FOUND, "unknown_evaluation"), id="unknown evaluation"),
    Row("evaluations.compare", "evaluate", lambda w: {"a": _evaluation(w)[0], "b": _evaluation(w)[0]},
        {"ties": 1, "wins": 0, "losses": 0, "cases": lambda v: v[0]["outcome"] == "tie"}),
    Row("evaluations.overlay", "evaluate", _case, {"png": _is_png}),
    # --- feedback
    Row("feedback.create", "feedback", _thread_with_case,
        {"status": "open", "threshold": 0.5, "evaluation_case_id": lambda v: v > 0, "author_user_id": None,
         "shared": False}),
    Row("feedback.create", "feedback", lambda w: {**_thread_with_case(w), "shared": True}, {"shared": True},
        id="shared with the hospital's doctors"),
    Row("feedback.create", "feedback",
        lambda w: {"organ": "liver", "version": "no-such-version", "body": "x"},
        Err(404, S.NOT_FOUND, "unknown_version"), id="version that does not exist"),
    Row("feedback.create", "feedback", lambda w: {**_thread_with_case(w), "threshold": 0.1},
        Err(400, S.INVALID_ARGUMENT, "invalid_threshold"), id="threshold off the grid"),
    Row("feedback.list", "feedback", lambda w: (_feedback(w, OWNER), {"status": "open"})[1],
        {"feedback": lambda v: v and all(f["status"] == "open" for f in v)}),
    Row("feedback.list", "feedback", lambda w: {"status": "closed"},
        Err(400, S.INVALID_ARGUMENT, "invalid_status"), id="unknown status"),
    Row("feedback.show", "feedback", lambda w: {"id": _feedback(w, OWNER)},
        {"body": "missing part", "replies": []}),
    Row("feedback.show", "feedback", lambda w: {"id": 987654}, Err(404, S.NOT_FOUND, "unknown_feedback"),
        id="unknown thread"),
    Row("feedback.show", "feedback", lambda w: {"id": 0}, Err(400, S.INVALID_ARGUMENT, "invalid_input"),
        id="id out of range"),
    Row("feedback.reply", "feedback",
        lambda w: {"feedback_id": _feedback(w, OWNER), "body": "fixed in the next version"},
        {"replies": lambda v: [r["body"] for r in v] == ["fixed in the next version"]}),
    Row("feedback.reply", "feedback", lambda w: {"feedback_id": _feedback(w, OWNER), "body": "   "},
        Err(400, S.INVALID_ARGUMENT, "empty_body"), id="empty reply"),
    Row("feedback.update", "feedback", lambda w: {"id": _feedback(w, OWNER), "status": "resolved"},
        {"status": "resolved", "shared": False}),
    Row("feedback.update", "feedback", lambda w: {"id": _feedback(w, OWNER), "shared": True},
        {"status": "open", "shared": True}, id="the author shares the thread"),
    Row("feedback.update", "feedback",
        lambda w: {"id": _feedback(w, OWNER), "addressed_by_version": "no-such-version"},
        Err(404, S.NOT_FOUND, "unknown_version"), id="addressed by an unknown version"),
    # --- history
    Row("segmentations.list", "segment", lambda w: (_segmentation(w, OWNER), {"patient_id": "P-1"})[1],
        {"segmentations": lambda v: v and all(s["patient_id"] == "P-1" for s in v)}),
    Row("segmentations.choose_threshold", "segment",
        lambda w: {"segmentation_id": _segmentation(w, OWNER), "threshold": 0.5,
                   "note": "edge at 0.5 follows the capsule"},
        {"chosen_threshold": 0.5, "chosen_note": "edge at 0.5 follows the capsule", "area": 4.0}),
    Row("segmentations.choose_threshold", "segment",
        lambda w: {"segmentation_id": _segmentation(w, OWNER), "threshold": 0.55},
        Err(400, S.INVALID_ARGUMENT, "invalid_threshold"), id="threshold off the grid"),
    Row("segmentations.choose_threshold", "segment",
        lambda w: {"segmentation_id": _segmentation(w, "doctor"), "threshold": 0.5},
        Err(404, S.NOT_FOUND, "unknown_segmentation"), id="someone else's segmentation"),
    # masks and thumbnails made from the stored probability map; rows written before read their stored ones
    Row("segmentations.thumbnail", "segment", lambda w: {"segmentation_id": _segmentation(w, OWNER)},
        {"png": scoring.thumbnail_png(PROBABILITY)}),
    Row("segmentations.thumbnail", "segment",
        lambda w: {"segmentation_id": _segmentation(w, OWNER, legacy=True)},
        {"png": LEGACY_THUMBNAIL}, id="a row written before: its stored thumbnail"),
    Row("segmentations.mask", "segment",
        lambda w: {"segmentation_id": _segmentation(w, OWNER), "threshold": 0.7},
        {"png": masks.mask_png(PROBABILITY, 0.7), "threshold": 0.7}),
    Row("segmentations.mask", "segment",
        lambda w: {"segmentation_id": _segmentation(w, OWNER), "threshold": 0.8},
        {"png": masks.mask_png(PROBABILITY, 0.8), "threshold": 0.8}, id="above the map: an empty mask"),
    Row("segmentations.mask", "segment",
        lambda w: {"segmentation_id": _segmentation(w, OWNER, legacy=True), "threshold": 0.7},
        {"png": LEGACY_MASK, "threshold": 0.7}, id="a row written before: its stored mask"),
    Row("segmentations.mask", "segment", lambda w: {"segmentation_id": _segmentation(w, OWNER)},
        {"png": _is_png, "threshold": _between(0.2, 0.8)}, id="no threshold: the organ's default"),
    Row("segmentations.mask", "segment",
        lambda w: {"segmentation_id": _segmentation(w, OWNER), "threshold": 0.9},
        Err(400, S.INVALID_ARGUMENT, "invalid_threshold"), id="mask off the grid"),
    Row("segmentations.mask", "segment",
        lambda w: {"segmentation_id": _segmentation(w, "doctor"), "threshold": 0.5},
        Err(404, S.NOT_FOUND, "unknown_segmentation"), id="someone else's mask"),
    Row("segmentations.trend", "segment", lambda w: (_segmentation(w, OWNER), {"patient_id": "P-1"})[1],
        {"patient_id": "P-1", "points": lambda v: v and all(p["unit"] == "px" for p in v)}),
    # --- training jobs
    Row("training.jobs.list", "train", lambda w: (_no_training(w), {})[1],
        {"jobs": lambda v: isinstance(v, list)}),
    Row("training.jobs.start", "train", _start,
        {"status": lambda v: v in ("running", "failed", "queued"), "epochs": 1}),
    Row("training.jobs.start", "train", lambda w: {**_start(w), "arch": "no-such-arch"},
        Err(400, S.INVALID_ARGUMENT, "unknown_arch"), id="unknown architecture"),
    Row("training.jobs.show", "train", lambda w: {"id": _job(w, "failed")}, {"status": "failed"}),
    Row("training.jobs.show", "train", lambda w: {"id": UNKNOWN_UUID}, Err(404, S.NOT_FOUND, "unknown_job"),
        id="unknown job"),
    Row("training.jobs.show", "train", lambda w: {"id": "not-a-uuid"},
        Err(400, S.INVALID_ARGUMENT, "invalid_input"), id="malformed job id"),
    Row("training.jobs.cancel", "train", lambda w: {"id": _job(w, "queued")}, {"status": "cancelled"}),
    Row("training.jobs.cancel", "train", lambda w: {"id": _job(w, "succeeded")},
        Err(409, S.FAILED_PRECONDITION, "job_finished"), id="finished job"),
]  # fmt: skip


def _row_id(row: Row) -> str:
    return f"{row.op}: {row.id}" if row.id else row.op


def _api_routes(app) -> set[tuple[str, str]]:
    schema = app.openapi()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops} - {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    }  # outside the API: probes, public


def _route(op) -> tuple[str, str]:
    return op.http[0], "/api/v1" + op.http[1]


def test_every_route_and_rpc_is_in_the_access_table(app):
    """Every HTTP route under /api/v1 and every RPC of both medseg.v1 files implements an operation of the
    table, and every route and RPC the table names exists."""
    assert _api_routes(app) == {_route(op) for op in OPERATIONS.values() if op.http}
    assert set(METHODS) == {op.grpc for op in OPERATIONS.values() if op.grpc}


def test_every_operation_has_a_case():
    """An operation with a gRPC method has rows here (run over both edges) and an HTTP call; one that only
    HTTP serves has its rule in tests/api/test_access.py (route × caller)."""
    both = {name for name, op in OPERATIONS.items() if op.grpc}
    assert {r.op for r in ROWS} == both
    assert set(HTTP_CALLS) == both
    for name, op in OPERATIONS.items():
        if not op.grpc:
            assert _route(op) in ROUTE_RULES, f"{name}: no rule in tests/api/test_access.py"


def _declared_access(dependant) -> set:
    """The `Access` of every `require(...)` among a route's dependencies (gateway/api/deps.py marks them)."""
    found = {d.call.access for d in dependant.dependencies if hasattr(d.call, "access")}
    for sub in dependant.dependencies:
        found |= _declared_access(sub)
    return found


def _app_routes(routes, prefix: str = ""):
    """(full path, APIRoute) of every route; FastAPI ≥ 0.165 keeps included routers nested."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            yield from _app_routes(route.original_router.routes, prefix + route.include_context.prefix)


@pytest.mark.parametrize("name", sorted(n for n, op in OPERATIONS.items() if op.http))
def test_the_route_declares_the_table_entry(app, name):
    """The HTTP route admits callers by its operation's entry of the table (by nothing: anyone may call)."""
    method, path = _route(OPERATIONS[name])
    route = next(r for p, r in _app_routes(app.routes) if p == path and method in r.methods)
    access = OPERATIONS[name].access
    assert _declared_access(route.dependant) == ({access} if access else set())


def _ok_row(name: str) -> Row:
    return next(r for r in ROWS if r.op == name and not isinstance(r.expect, Err))


def _refused(outcome) -> bool:
    return isinstance(outcome, Failure) and outcome.status in (
        401, 403, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
    )  # fmt: skip


GRPC_OPERATIONS = sorted(n for n, op in OPERATIONS.items() if op.grpc)


@pytest.mark.parametrize("transport", sorted(DRIVERS))
@pytest.mark.parametrize("name", GRPC_OPERATIONS)
def test_every_scope_of_the_entry_is_admitted(world, app, channel, name, transport):
    """A key with any one scope of the operation's entry gets past the door on both edges."""
    row = _ok_row(name)
    for scope in OPERATIONS[name].access.scopes:
        outcome = DRIVERS[transport](world, channel, Row(name, scope, row.args, row.expect), row.args(world))
        assert not _refused(outcome), f"{name} with a {scope!r} key: {outcome}"


@pytest.mark.parametrize("transport", sorted(DRIVERS))
@pytest.mark.parametrize("name", GRPC_OPERATIONS)
def test_other_keys_and_no_key_are_refused(world, app, channel, name, transport):
    """A key with none of the entry's scopes: 403 / PERMISSION_DENIED; no key: 401 / UNAUTHENTICATED; on both
    edges, and nothing stored changes."""
    row, scopes = _ok_row(name), OPERATIONS[name].access.scopes
    other = next(s for s in KEY_SCOPES if s not in scopes and s != "admin")
    for key, expect in (
        (other, Err(403, grpc.StatusCode.PERMISSION_DENIED, "forbidden")),
        (None, Err(401, grpc.StatusCode.UNAUTHENTICATED, "missing_credentials")),
    ):
        args = row.args(world)
        before = _stored(world)
        outcome = DRIVERS[transport](world, channel, Row(name, key, row.args, expect), args)
        _check(outcome, expect, transport)
        _assert_unchanged(before, _stored(world))


# --- what "nothing lost" means ------------------------------------------------------------------------------
def _stored(world) -> dict:
    with world.session() as session:
        count = lambda table: session.scalar(select(func.count()).select_from(table))  # noqa: E731
        return {
            "versions": sorted(session.execute(select(ModelVersion.version, ModelVersion.state)).all()),
            "feedback": sorted(session.execute(select(Feedback.id, Feedback.status)).all()),
            "replies": count(FeedbackReply),
            "evaluations": count(Evaluation),
            "segmentations": count(Segmentation),
            "chosen": sorted(
                session.execute(select(Segmentation.id, Segmentation.chosen_threshold)).all(), key=str
            ),
            "jobs": dict(session.execute(select(TrainingJob.id, TrainingJob.state)).all()),
        }


def _assert_unchanged(before: dict, after: dict) -> None:
    jobs_before, jobs_after = before.pop("jobs"), after.pop("jobs")
    assert before == after
    # a job whose worker exits meanwhile may finish; a finished one must stay as it was
    assert jobs_before.keys() == jobs_after.keys()
    assert {j: s for j, s in jobs_before.items() if s in FINISHED} == {
        j: s for j, s in jobs_after.items() if jobs_before[j] in FINISHED
    }


def _check(outcome, expect, transport: str) -> None:
    if isinstance(expect, Err):
        status = expect.http if transport == "http" else expect.grpc
        assert outcome == Failure(status, expect.code)
        return
    assert not isinstance(outcome, Failure), outcome
    for name, wanted in expect.items():
        assert name in outcome or wanted is None, f"{name} missing from {sorted(outcome)}"
        if wanted is None:  # null over HTTP, an unset optional field over gRPC
            assert outcome.get(name) is None, f"{name}: {outcome[name]!r}"
        elif callable(wanted):
            assert wanted(outcome[name]), f"{name}: {outcome[name]!r}"
        else:
            assert outcome[name] == wanted, f"{name}: {outcome[name]!r} != {wanted!r}"


@pytest.mark.parametrize("transport", sorted(DRIVERS))
@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_row(world, app, channel, row: Row, transport: str):
    args = row.args(world)
    before = _stored(world) if isinstance(row.expect, Err) else None
    with row.during(world):
        outcome = DRIVERS[transport](world, channel, row, args)
    _check(outcome, row.expect, transport)
    if before is not None:
        _assert_unchanged(before, _stored(world))


@pytest.mark.parametrize("row", [r for r in ROWS if not isinstance(r.expect, Err)], ids=_row_id)
def test_both_transports_answer_the_same_fields(world, app, channel, row: Row):
    """Every field the HTTP answer carries, the gRPC answer carries too (and no other); a null over HTTP is an
    unset optional field over gRPC."""
    http, rpc = (DRIVERS[t](world, channel, row, row.args(world)) for t in ("http", "grpc"))
    assert {k for k, v in http.items() if v is not None} == set(rpc)


def test_one_loop_across_both_transports(world, app, channel):
    """A segmentation made over gRPC is chosen over HTTP and read back over gRPC: one service layer."""
    made = call_grpc(world, channel, Row("segment", "segment", None, {}),
                     {"organ": "liver", "image": IMAGE, "patient_id": "P-X"})  # fmt: skip
    chosen = call_http(world, channel, Row("segmentations.choose_threshold", "segment", None, {}),
                       {"segmentation_id": made["id"], "threshold": 0.7})  # fmt: skip
    assert chosen["chosen_threshold"] == 0.7
    trend = call_grpc(world, channel, Row("segmentations.trend", "segment", None, {}), {"patient_id": "P-X"})
    assert [(p["segmentation_id"], p["chosen"], p["threshold"]) for p in trend["points"]] == [
        (made["id"], True, 0.7)
    ]
