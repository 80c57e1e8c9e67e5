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

Streams (medseg.v1.Studies): a client-streaming call (Submit) sends the first message with the request's
fields and no data, then every file in chunks; a server stream of files (GetMask, GetSeg, GetImage) is
joined into one body, compared with the HTTP body ({"data", "content_type", "threshold"}); Watch answers
its last study, as an HTTP client polling GET /studies/{id} until the study is finished sees it. A submitted
study is segmented by the app's study workers (the fake organ servers answer its chunks); the driver waits
until it is finished and stops the workers again, so no study changes while another row runs.
"""

from __future__ import annotations

import gzip
import io
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import grpc
import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from fastapi.routing import APIRoute
from google.protobuf import json_format
from medseg.v1 import (
    clinic_pb2,
    clinic_pb2_grpc,
    pacs_pb2,
    pacs_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    studies_pb2,
    studies_pb2_grpc,
)
from sqlalchemy import func, select

from common.errors import ServiceUnavailable
from common.launcher import free_port
from common.pacs import Pacs, PacsCredentials
from gateway import crud
from gateway.access import OPERATIONS
from gateway.models import (
    Evaluation,
    Feedback,
    FeedbackReply,
    ModelVersion,
    Segmentation,
    Study,
    TrainingJob,
)
from gateway.resources.studies import grpc as studies_grpc
from gateway.service import masks, scoring
from gateway.service.training_jobs import FINISHED
from tests import hippodata, studydata
from tests.api.clinic_access import (
    LEGACY_MASK,
    LEGACY_THUMBNAIL,
    PROBABILITY,
    STUDY_PATIENT,
    STUDY_SHAPE,
    STUDY_SPACING,
    _evaluation,
    _feedback,
    _job,
    _key_dataset,
    _no_default,
    _no_training,
    _reference,
    _segmentation,
    _study,
    _version,
    pacs_study,
    study_files,
    study_hu,
    study_mask,
    study_volumes_ml,
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
    app.state.clinic.studies.close()


@pytest.fixture(scope="module", autouse=True)
def small_file_chunks():
    """Files stream out in 64-byte chunks (1 MiB in service), so every test file crosses in several."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(studies_grpc, "CHUNK_BYTES", 64)
        yield


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


STUDY_FINISHED = ("done", "failed")
STUDY_WAIT_S = 60.0


def _watch_http(client, a: dict):
    """Watching over HTTP: polling the study until it is finished (its last answer, or the first error)."""
    deadline = time.monotonic() + STUDY_WAIT_S
    while True:
        response = client.get(f"{ST}/{a['id']}")
        if response.status_code >= 400 or response.json()["status"] in STUDY_FINISHED:
            return response
        assert time.monotonic() < deadline, f"study {a['id']} not finished: {response.json()}"
        time.sleep(0.05)


M = "/api/v1/models"
ST = "/api/v1/studies"
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
    "studies.submit": lambda c, a: c.post(
        ST, data=_json(a, "organ", "patient_id", "study_date"), files=[("files", f) for f in a["files"]]
    ),
    "studies.list": lambda c, a: c.get(ST, params=_json(a, "patient_id", "organ", "limit")),
    "studies.show": lambda c, a: c.get(f"{ST}/{a['id']}"),
    "studies.watch": _watch_http,  # no HTTP route: the HTTP client's way to watch
    "studies.mask": lambda c, a: c.get(f"{ST}/{a['id']}/mask.nii.gz", params=_json(a, "threshold")),
    "studies.seg": lambda c, a: c.get(f"{ST}/{a['id']}/seg.dcm", params=_json(a, "threshold")),
    "studies.image": lambda c, a: c.get(f"{ST}/{a['id']}/image.nii.gz"),
    "studies.cancel": lambda c, a: c.post(f"{ST}/{a['id']}/cancel"),
    "studies.choose_threshold": lambda c, a: c.post(
        f"{ST}/{a['id']}/choice", json=_json(a, "threshold", "note")
    ),
    "pacs.studies": lambda c, a: c.get(
        "/api/v1/pacs/studies", params=_json(a, "patient_id", "modality", "date_from", "date_to", "limit")
    ),
    "pacs.series": lambda c, a: c.get(f"/api/v1/pacs/studies/{a['study_uid']}/series"),
}


def call_http(world, channel, row: Row, args: dict):
    client = world.client(f"key:{row.key}" if row.key else "anonymous")
    response = HTTP_CALLS[row.op](client, args)
    if response.status_code >= 400:
        return Failure(response.status_code, response.json()["error"]["code"])
    content_type = response.headers["content-type"]
    threshold = response.headers.get("x-medseg-threshold")  # a stored mask's, in the gRPC answer's field
    at = {"threshold": float(threshold)} if threshold else {}
    if content_type == "image/png":
        return {"png": response.content} | at
    if not content_type.startswith("application/json"):  # a study's file
        return {"data": response.content, "content_type": content_type} | at
    return _settled(world, row, response.json())


# --- gRPC driver --------------------------------------------------------------------------------------------
def _methods() -> dict[str, tuple[object, object]]:
    """ "Service/Method" → (pb2 module, pb2_grpc module), over the medseg.v1 files."""
    out = {}
    for pb, pb_grpc in (
        (segmentation_pb2, segmentation_pb2_grpc),
        (clinic_pb2, clinic_pb2_grpc),
        (studies_pb2, studies_pb2_grpc),
        (pacs_pb2, pacs_pb2_grpc),
    ):
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


UPLOAD_CHUNK_BYTES = 100  # a client streaming a study's files sends them in pieces this size (NIfTI: 345 B)


def _upload_chunks(args: dict):
    """A study's upload as Submit's client stream: the request's fields first (no data), then each file in
    pieces, every piece naming its file."""
    yield studies_pb2.StudyUploadChunk(**{k: v for k, v in args.items() if k != "files"})
    for name, data in args["files"]:
        for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
            yield studies_pb2.StudyUploadChunk(filename=name, data=data[start : start + UPLOAD_CHUNK_BYTES])


def _joined(chunks: list) -> dict:
    """A server stream of FileChunk as one file, in the HTTP driver's shape (the first chunk's threshold; an
    image has none)."""
    first = chunks[0]
    at = {"threshold": first.threshold} if first.threshold else {}
    return {"data": b"".join(c.data for c in chunks), "content_type": first.content_type} | at


def call_grpc(world, channel, row: Row, args: dict):
    rpc = OPERATIONS[row.op].grpc
    pb, pb_grpc = METHODS[rpc]
    service, method = rpc.split("/")
    stub = getattr(pb_grpc, f"{service}Stub")(channel)
    metadata = (("authorization", f"Bearer {world.keys[row.key]}"),) if row.key else ()
    kind = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    try:
        if kind.client_streaming:
            answer = getattr(stub, method)(_upload_chunks(args), metadata=metadata, timeout=60)
        else:
            answer = getattr(stub, method)(_request(pb, service, method, args), metadata=metadata, timeout=60)
        if kind.server_streaming:
            answer = list(answer)  # the call's error, if any, surfaces here
    except grpc.RpcError as exc:
        codes = dict(exc.trailing_metadata() or ())
        return Failure(exc.code(), codes.get("medseg-error-code", ""))
    if kind.server_streaming and kind.output_type.name == "FileChunk":
        return _joined(answer)
    if kind.server_streaming:  # Watch: the study at its last change
        answer = answer[-1]
    if answer.DESCRIPTOR.name == "Png":
        return {"png": answer.png}
    if answer.DESCRIPTOR.name == "MaskPng":
        return {"png": answer.png, "threshold": answer.threshold}
    data = json_format.MessageToDict(
        answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if nested := NESTED.get(answer.DESCRIPTOR.name):
        data.update(data.pop(nested))
    return _settled(world, row, data)


def _settled(world, row: Row, answer: dict) -> dict:
    """A submitted study's answer, once the app's study workers have finished it (and been stopped again)."""
    if row.op != "studies.submit":
        return answer
    jobs = world.app().state.clinic.studies
    try:
        _wait_finished(world, answer["id"])
    finally:
        jobs.close()
    return answer


def _wait_finished(world, study_id: str) -> Study:
    deadline = time.monotonic() + STUDY_WAIT_S
    while True:
        with world.session() as session:
            study = session.get(Study, uuid.UUID(study_id))
        if study.status in STUDY_FINISHED:
            return study
        assert time.monotonic() < deadline, f"study {study_id} still {study.status}"
        time.sleep(0.05)


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


def _pacs_swapped(world, pacs: Pacs):
    """The gateway's PACS client replaced by `pacs` for one row (a PACS that is down, or refuses us)."""
    from contextlib import contextmanager

    @contextmanager
    def swapped():
        gateway = world.app().state.clinic.pacs
        configured, gateway.pacs = gateway.pacs, pacs
        try:
            yield
        finally:
            gateway.pacs = configured

    return swapped()


def _pacs_down(world):
    return _pacs_swapped(world, Pacs(f"http://127.0.0.1:{free_port()}/dicom-web", PacsCredentials("u", "p")))


def _pacs_refusing_us(world):
    return _pacs_swapped(world, Pacs(world.settings.pacs_url, PacsCredentials("medseg", "not-the-password")))


def _pacs_patient(world) -> dict:
    pacs_study(world)
    return {"patient_id": world.pacs_patient_id}


UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"
S = grpc.StatusCode


def _organs(names: list) -> bool:
    return "liver" in [o["name"] for o in names]


def _hippocampus_volumes(w) -> dict:
    """One synthetic hippocampus case (NIfTI image and label volume) the fake 3-D organ server answers."""
    files = hippodata.synthetic_files("h")
    return {
        "organ": "hippocampus",
        **{field: [f for kind, f in files if kind == field] for field in ("images", "labels")},
    }


def _two_labels(scores) -> bool:
    """Scores per label, HTTP's object keyed by label or gRPC's LabelScores, of the hippocampus's labels."""
    names = list(scores) if isinstance(scores, dict) else [s["label"] for s in scores]
    return names == ["anterior", "posterior"]


# --- studies ------------------------------------------------------------------------------------------------
def _upload(source: str = "nifti", **fields):
    return lambda w: {"organ": "liver", "files": list(study_files(source)), **fields}


def _bad_upload(files: Callable, **fields):
    return lambda w: {"organ": "liver", "files": files(), **fields}


def _series(**kw) -> list:
    return studydata.series_files(studydata.ct_datasets(study_hu(), name="api-study", **kw))


def _two_series() -> list:
    a, b = _series(series_number=2), _series(series_number=3, series_description="another")
    return [("two.zip", studydata.zipped([(f"a/{n}", d) for n, d in a] + [(f"b/{n}", d) for n, d in b]))]


def _missing_slice() -> list:
    files = _series()
    return files[:2] + files[3:]


def _mr_series() -> list:
    datasets = studydata.ct_datasets(study_hu(), name="api-study-mr")
    for ds in datasets:
        ds.Modality = "MR"
    return studydata.series_files(datasets)


def _four_d() -> list:
    image = studydata.nifti_image(study_hu().astype(np.int16))
    data = np.stack([np.asanyarray(image.dataobj)] * 2, axis=-1)
    return [("4d.nii", nib.Nifti1Image(data, image.affine).to_bytes())]


def _study_limit(limit: int):
    """The study size limit of both edges (and of the study service) set to `limit` bytes for a while
    (the test NIfTI is 345 bytes)."""

    @contextmanager
    def limited(world):
        clinic = world.app().state.clinic
        saved = clinic.settings, clinic.studies.settings
        clinic.settings = clinic.studies.settings = clinic.settings.model_copy(
            update={"study_max_bytes": limit}
        )
        try:
            yield
        finally:
            clinic.settings, clinic.studies.settings = saved

    return limited


@contextmanager
def _store_down(world):
    world.store.fail = True
    try:
        yield
    finally:
        world.store.fail = False


def _nifti(blob: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(blob))


def _on_the_grid(image: nib.Nifti1Image) -> bool:
    """The input's grid: its shape and the affine of studydata's base grid (NIfTI and DICOM alike)."""
    return image.shape == study_hu().shape and np.allclose(image.affine, studydata.base_affine(image.shape))


def _mask_at(threshold: float, source: str = "nifti"):
    """A .nii.gz of the study's labels at `threshold`, uint8 on the input's grid."""

    def check(blob: bytes) -> bool:
        image = _nifti(blob)
        labels = np.asanyarray(image.dataobj)
        return (image.get_data_dtype() == np.uint8 and _on_the_grid(image)
                and np.array_equal(labels, study_mask(source, threshold)))  # fmt: skip

    return check


def _seg_at(threshold: float):
    """A DICOM SEG of the series' labels at `threshold`: referencing every source instance, its frames
    (placed by their source instances) the mask's slices."""

    def check(blob: bytes) -> bool:
        seg = hd.seg.segread(io.BytesIO(blob))
        sources = [ds.SOPInstanceUID for ds in studydata.ct_datasets(study_hu(), name="api-study")]
        referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                      for r in s.ReferencedInstanceSequence}  # fmt: skip
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=[1])
        expected = study_mask("dicom", threshold).transpose(2, 1, 0)  # (slice, row, column)
        return referenced == set(sources) and np.array_equal(pixels[..., 0].astype(np.uint8), expected)

    return check


def _image_of(source: str):
    """The study's image: a NIfTI input as it came; a DICOM series as NIfTI of its HU on the series' grid."""
    if source == "nifti":
        return lambda blob: blob == study_files("nifti")[0][1]
    return lambda blob: _on_the_grid(_nifti(blob)) and np.array_equal(_nifti(blob).get_fdata(), study_hu())


def _volumes(ml: dict) -> bool:
    return (
        sorted(ml) == [f"{t / 10:.1f}" for t in range(2, 9)] and ml["0.2"]["liver"] > ml["0.8"]["liver"] > 0
    )


def _patient_with_a_study(world) -> dict:
    patient = f"P-{uuid.uuid4().hex[:8]}"
    _study(world, OWNER, patient_id=patient)
    return {"patient_id": patient}


def _a_point_in_ml(points: list) -> bool:
    return len(points) == 1 and points[0]["threshold"] == 0.5 and points[0]["volumes_ml"]["liver"] > 0


STUDY = {"organ": "liver", "shape": STUDY_SHAPE, "spacing_mm": STUDY_SPACING, "labels": ["liver"],
         "default_threshold": 0.5}  # fmt: skip
QUEUED = ("queued", "running", "done")  # what a submit answers, by how quickly the worker takes it up


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
    Row("evaluations.run", "evaluate", _hippocampus_volumes,
        {"case_count": 1, "per_label": _two_labels, "mean_hd95": None,
         "cases": lambda v: [c["name"] for c in v] == ["h"] and _two_labels(v[0]["per_label"])},
        id="a 3-D organ of two labels"),
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
    # --- studies: submitted in chunks (gRPC), segmented in the background by the fake organ servers
    Row("studies.submit", "segment", _upload("nifti", patient_id="P-S9", study_date="2024-05-02"),
        {**STUDY, "status": lambda v: v in QUEUED, "source": "nifti", "patient_id": "P-S9",
         "study_date": "2024-05-02", "error": None}),
    Row("studies.submit", "segment", _upload("dicom", study_date="2020-01-01"),
        {**STUDY, "source": "dicom", "patient_id": studydata.PATIENT_ID, "study_date": "2024-03-01"},
        id="a DICOM series: its own patient and study date win"),
    Row("studies.submit", "segment", _bad_upload(lambda: [("s.zip", studydata.zipped(_series()))]),
        {**STUDY, "source": "dicom"}, id="a zip of the series"),
    Row("studies.submit", "segment", _upload("nifti", organ="kidney"), Err(404, S.NOT_FOUND, "unknown_organ"),
        id="unknown organ"),
    Row("studies.submit", "segment", _bad_upload(_two_series),
        Err(409, S.FAILED_PRECONDITION, "several_series"), id="two series in one zip"),
    Row("studies.submit", "segment", _bad_upload(_missing_slice),
        Err(400, S.INVALID_ARGUMENT, "missing_slice"),
        id="a missing slice"),
    Row("studies.submit", "segment", _bad_upload(_four_d), Err(400, S.INVALID_ARGUMENT, "nifti_not_3d"),
        id="a 4-D NIfTI"),
    Row("studies.submit", "segment", _bad_upload(_mr_series), Err(400, S.INVALID_ARGUMENT, "wrong_modality"),
        id="an MR series for a CT organ"),
    Row("studies.submit", "segment", _upload("nifti", study_date="2024-13-45"),
        Err(400, S.INVALID_ARGUMENT, "invalid_study_date"), id="a study date that is no date"),
    Row("studies.submit", "segment", _upload("nifti", patient_id="Jane Doe"),
        Err(400, S.INVALID_ARGUMENT, "invalid_patient_id"), id="a name as patient id"),
    Row("studies.submit", "segment", _upload("nifti"), Err(413, S.RESOURCE_EXHAUSTED, "study_too_large"),
        during=_study_limit(100), id="over the size limit"),
    Row("studies.submit", "segment", _upload("nifti"), Err(503, S.UNAVAILABLE, "service_unavailable"),
        during=_store_down, id="object store down"),
    Row("studies.list", "segment", lambda w: (_study(w, OWNER), {"patient_id": STUDY_PATIENT, "limit": 5})[1],
        {"studies": lambda v: 1 <= len(v) <= 5 and all(s["patient_id"] == STUDY_PATIENT for s in v)}),
    Row("studies.list", "segment", lambda w: {"limit": 500}, Err(400, S.INVALID_ARGUMENT, "invalid_input"),
        id="limit too large"),
    Row("studies.show", "segment", lambda w: {"id": _study(w, OWNER)},
        {**STUDY, "status": "done", "progress": 1.0, "model": {"name": "liver", "version": "acc"},
         "volumes_ml": _volumes, "error": None, "chosen_threshold": None}),
    Row("studies.show", "segment", lambda w: {"id": UNKNOWN_UUID}, Err(404, S.NOT_FOUND, "unknown_study"),
        id="unknown study"),
    Row("studies.show", "segment", lambda w: {"id": "not-a-uuid"}, Err(404, S.NOT_FOUND, "unknown_study"),
        id="malformed study id"),
    Row("studies.show", "segment", lambda w: {"id": _study(w, "doctor")},
        Err(404, S.NOT_FOUND, "unknown_study"),
        id="someone else's study"),
    Row("studies.watch", "segment", lambda w: {"id": _study(w, OWNER)},
        {**STUDY, "status": "done", "progress": 1.0, "volumes_ml": _volumes}),
    Row("studies.watch", "segment", lambda w: {"id": UNKNOWN_UUID}, Err(404, S.NOT_FOUND, "unknown_study"),
        id="unknown study"),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, OWNER), "threshold": 0.7},
        {"data": _mask_at(0.7), "content_type": "application/gzip", "threshold": 0.7}),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, OWNER)},
        {"data": _mask_at(0.5), "threshold": 0.5}, id="no threshold: the organ's default"),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, OWNER, chosen_threshold=0.3)},
        {"data": _mask_at(0.3), "threshold": 0.3}, id="no threshold: the saved one"),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, OWNER, source="dicom"), "threshold": 0.4},
        {"data": _mask_at(0.4, "dicom"), "threshold": 0.4}, id="a DICOM study: on the series' grid"),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, OWNER), "threshold": 0.9},
        Err(400, S.INVALID_ARGUMENT, "invalid_threshold"), id="threshold above 0.8"),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, OWNER), "threshold": 0.55},
        Err(400, S.INVALID_ARGUMENT, "invalid_threshold"), id="threshold off the grid"),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, OWNER, status="queued")},
        Err(409, S.FAILED_PRECONDITION, "study_not_done"), id="a study not done yet"),
    Row("studies.mask", "segment", lambda w: {"id": _study(w, "doctor")},
        Err(404, S.NOT_FOUND, "unknown_study"),
        id="someone else's mask"),
    Row("studies.seg", "segment", lambda w: {"id": _study(w, OWNER, source="dicom"), "threshold": 0.5},
        {"data": _seg_at(0.5), "content_type": "application/dicom", "threshold": 0.5}),
    Row("studies.seg", "segment", lambda w: {"id": _study(w, OWNER)},
        Err(409, S.FAILED_PRECONDITION, "not_dicom"),
        id="a NIfTI study"),
    Row("studies.seg", "segment", lambda w: {"id": _study(w, OWNER, source="dicom", status="queued")},
        Err(409, S.FAILED_PRECONDITION, "study_not_done"), id="a study not done yet"),
    Row("studies.image", "segment", lambda w: {"id": _study(w, OWNER)},
        {"data": _image_of("nifti"), "content_type": "application/gzip"}),
    Row("studies.image", "segment", lambda w: {"id": _study(w, OWNER, source="dicom")},
        {"data": _image_of("dicom")}, id="a DICOM study: its HU as NIfTI"),
    Row("studies.image", "segment", lambda w: {"id": UNKNOWN_UUID}, Err(404, S.NOT_FOUND, "unknown_study"),
        id="unknown study"),
    Row("studies.cancel", "segment", lambda w: {"id": _study(w, OWNER, status="queued")},
        {"status": "failed", "error": {"code": "cancelled", "message": "the study was cancelled"}}),
    Row("studies.cancel", "segment", lambda w: {"id": _study(w, OWNER)},
        Err(409, S.FAILED_PRECONDITION, "study_finished"), id="a finished study"),
    Row("studies.cancel", "segment", lambda w: {"id": _study(w, "doctor", status="queued")},
        Err(404, S.NOT_FOUND, "unknown_study"), id="someone else's study"),
    Row("studies.choose_threshold", "segment",
        lambda w: {"id": _study(w, OWNER), "threshold": 0.3, "note": "0.3 keeps the caudate lobe"},
        {"chosen_threshold": 0.3, "chosen_note": "0.3 keeps the caudate lobe", "status": "done"}),
    Row("studies.choose_threshold", "segment", lambda w: {"id": _study(w, OWNER), "threshold": 0.55},
        Err(400, S.INVALID_ARGUMENT, "invalid_threshold"), id="threshold off the grid"),
    Row("studies.choose_threshold", "segment",
        lambda w: {"id": _study(w, OWNER, status="queued"), "threshold": 0.5},
        Err(409, S.FAILED_PRECONDITION, "study_not_done"), id="a study not done yet"),
    Row("studies.choose_threshold", "segment", lambda w: {"id": _study(w, "doctor"), "threshold": 0.5},
        Err(404, S.NOT_FOUND, "unknown_study"), id="someone else's study"),
    Row("segmentations.trend", "segment", _patient_with_a_study, {"points": [], "studies": _a_point_in_ml},
        id="a study: one point in mL"),
    # --- the hospital's PACS (a real Orthanc), for pickers
    Row("pacs.studies", "segment", _pacs_patient,
        {"studies": lambda v: len(v) == 1 and v[0]["modalities"] == ["CT"] and v[0]["series_count"] == 1}),
    Row("pacs.studies", "segment", lambda w: {"modality": "C T"},
        Err(400, S.INVALID_ARGUMENT, "invalid_modality"), id="not a modality"),
    Row("pacs.studies", "segment", lambda w: {"date_from": "2024-02-30", "limit": 5},
        Err(400, S.INVALID_ARGUMENT, "invalid_input"), id="not a date"),
    Row("pacs.studies", "segment", lambda w: {"patient_id": "P\\1"},
        Err(400, S.INVALID_ARGUMENT, "invalid_input"), id="a patient ID QIDO cannot take"),
    Row("pacs.studies", "datasets", lambda w: {}, Err(403, S.PERMISSION_DENIED, "forbidden"),
        id="key without the scope"),
    Row("pacs.studies", None, lambda w: {}, Err(401, S.UNAUTHENTICATED, "missing_credentials"), id="no key"),
    Row("pacs.studies", "segment", lambda w: {}, Err(503, S.UNAVAILABLE, "pacs_unavailable"),
        during=_pacs_down, id="PACS down"),
    Row("pacs.studies", "segment", lambda w: {}, Err(503, S.UNAVAILABLE, "pacs_credentials"),
        during=_pacs_refusing_us, id="PACS refuses our credentials"),
    Row("pacs.series", "segment", lambda w: {"study_uid": pacs_study(w)},
        {"series": lambda v: [(s["modality"], s["segmentable"], s["instance_count"]) for s in v]
         == [("CT", True, 3)]}),
    Row("pacs.series", "segment", lambda w: {"study_uid": "1.2.3.4.5"},
        Err(404, S.NOT_FOUND, "pacs_not_found"), id="a study the PACS does not hold"),
    Row("pacs.series", "segment", lambda w: {"study_uid": "1.2.abc"},
        Err(400, S.INVALID_ARGUMENT, "invalid_uid"), id="not a UID"),
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
            "studies": sorted(
                session.execute(
                    select(Study.id, Study.status, Study.chosen_threshold, Study.cancel_requested)
                ).all(),
                key=str,
            ),
            "study_objects": sorted(k for _, k in world.store.objects if k.startswith("studies/")),
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
    unset optional field over gRPC, or an empty repeated one (a repeated field has no presence: per_label)."""
    http, rpc = (DRIVERS[t](world, channel, row, row.args(world)) for t in ("http", "grpc"))
    unset = {k for k, v in rpc.items() if v == [] and k in http and http[k] is None}
    assert {k for k, v in http.items() if v is not None} == set(rpc) - unset


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


def _stub(world, channel):
    metadata = (("authorization", f"Bearer {world.keys['segment']}"),)
    return studies_pb2_grpc.StudiesStub(channel), metadata


def test_a_study_submitted_in_chunks_is_watched_until_done_and_read_back_over_http(world, app, channel):
    """Submit (client stream) → the app's study worker segments the volume through the organ server → Watch
    streams the study until it is done, its progress only growing → the mask over HTTP is the organ server's
    answer on the input's grid (the fake answers 0 … 255 across the image's columns: the canonical x axis,
    the input's first), and the volumes in mL are its voxels at each threshold."""
    stub, metadata = _stub(world, channel)
    try:
        queued = stub.Submit(_upload_chunks(_upload("nifti")(world)), metadata=metadata, timeout=60)
        states = list(stub.Watch(studies_pb2.GetStudyRequest(id=queued.id), metadata=metadata, timeout=60))
    finally:
        app.state.clinic.studies.close()
    assert queued.status in QUEUED
    assert states[-1].status == "done" and states[-1].progress == 1.0
    assert [s.progress for s in states] == sorted(s.progress for s in states)
    shown = call_http(world, channel, Row("studies.show", "segment", None, {}), {"id": queued.id})
    assert shown["volumes_ml"] == json_format.MessageToDict(states[-1].volumes_ml)
    assert _volumes(shown["volumes_ml"])
    assert shown["volumes_ml"] == study_volumes_ml("nifti")
    mask = call_http(
        world, channel, Row("studies.mask", "segment", None, {}), {"id": queued.id, "threshold": 0.6}
    )
    assert _mask_at(0.6)(mask["data"]) and mask["threshold"] == 0.6


@pytest.mark.parametrize(
    "op, source", [("studies.mask", "nifti"), ("studies.image", "nifti"), ("studies.image", "dicom")]
)
def test_streamed_files_join_to_the_http_body(world, app, channel, op, source):
    """A file streamed in several chunks (the first carrying content type and threshold) joins to exactly the
    HTTP body."""
    args = {"id": _study(world, OWNER, source=source)}
    stub, metadata = _stub(world, channel)
    method = {"studies.mask": stub.GetMask, "studies.image": stub.GetImage}[op]
    request = studies_pb2.GetStudyResultRequest if op == "studies.mask" else studies_pb2.GetStudyRequest
    chunks = list(method(request(**args), metadata=metadata, timeout=60))
    http = call_http(world, channel, Row(op, "segment", None, {}), args)
    assert len(chunks) > 1 and all(not c.content_type for c in chunks[1:])
    assert _joined(chunks) == http


def test_a_dicom_seg_streamed_in_chunks_is_the_http_one(world, app, channel):
    """The DICOM SEG over both edges: the same segments on the same source instances (each answer is a new
    SEG instance, with UIDs of its own)."""
    args = {"id": _study(world, OWNER, source="dicom"), "threshold": 0.6}
    stub, metadata = _stub(world, channel)
    chunks = list(stub.GetSeg(studies_pb2.GetStudyResultRequest(**args), metadata=metadata, timeout=60))
    http = call_http(world, channel, Row("studies.seg", "segment", None, {}), args)
    assert len(chunks) > 1 and chunks[0].threshold == http["threshold"] == 0.6
    assert _seg_at(0.6)(_joined(chunks)["data"]) and _seg_at(0.6)(http["data"])
