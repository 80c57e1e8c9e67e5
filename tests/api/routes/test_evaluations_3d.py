"""Kept evaluations of a 3-D organ of several labels (issue 19: the hippocampus, labels anterior and
posterior): image/label NIfTI pairs scored as `POST /api/v1/evaluate` scores them — per label and their mean,
at every threshold — kept with an overlay of one axial slice, listed, the same over gRPC and through
`Prefer: respond-async`; bad input is a 4xx naming the problem with nothing stored. The organ server is a fake
that answers a whole volume (tests/gateway/fakes.FakeVolumeClient) for synthetic volumes on the hippocampus
grid (tests/hippodata.py); database and gateway are real."""

from __future__ import annotations

import gzip
import io
import uuid

import nibabel as nib
import numpy as np
import pytest
from medseg.v1 import clinic_pb2, clinic_pb2_grpc, segmentation_pb2
from PIL import Image
from sqlalchemy import func, select

from gateway.models import Dataset, Evaluation, EvaluationJob, ModelVersion
from services import volumes
from tests import hippodata
from tests.api.conftest import grpc_channel, png
from tests.api.routes.test_evaluation_jobs import ASYNC, _until_finished

LABELS = ["anterior", "posterior"]
CASES = ("hippo_a", "hippo_b")
THRESHOLDS = ("0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8")


@pytest.fixture(scope="module")
def app(world):
    """The app, with a recorded default hippocampus version (as `medseg serve` seeds from the model store)."""
    app = world.app()
    with world.session() as session:
        session.add(
            ModelVersion(
                organ="hippocampus", model_name="hippocampus", version="1", state="default",
                default_threshold=0.5, created_by="test",
            )
        )  # fmt: skip
    app.state.clinic.directory.invalidate()
    jobs = app.state.clinic.evaluation_jobs
    jobs.settings = jobs.settings.model_copy(update={"study_poll_s": 0.05, "study_stale_after_s": 1.0})
    return app


@pytest.fixture(scope="module")
def evaluated(world, app) -> dict:
    """The two cases through `/evaluate` (nothing kept), answered once for the module."""
    answer = world.client("doctor").post(
        "/api/v1/evaluate", data={"organ": "hippocampus"}, files=hippodata.synthetic_files(*CASES)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _run(client, files=None, headers=None, **data):
    return client.post(
        "/api/v1/evaluations",
        data={"organ": "hippocampus", **data},
        files=files if files is not None else hippodata.synthetic_files(*CASES),
        headers=headers or {},
    )


def _stored(world) -> tuple[int, int, int]:
    """Evaluations, evaluation jobs, objects under evaluations/ (overlays) or evaluation-jobs/ (uploads)."""
    with world.session() as session:
        rows = (
            session.scalar(select(func.count()).select_from(Evaluation)),
            session.scalar(select(func.count()).select_from(EvaluationJob)),
        )
    prefixes = ("evaluations/", "evaluation-jobs/")
    return (*rows, sum(key.startswith(prefixes) for _, key in world.store.objects))


def _check_as_evaluated(kept: dict, evaluated: dict) -> None:
    """A kept evaluation's cases and summary carry the scores `/evaluate` answered for the same volumes."""
    assert kept["organ"] == "hippocampus" and kept["case_count"] == len(CASES)
    assert [c["name"] for c in kept["cases"]] == list(CASES)
    for case, image in zip(kept["cases"], evaluated["images"], strict=True):
        assert image["filename"] == f"{case['name']}.nii.gz"
        assert (case["dice"], case["iou"]) == pytest.approx((image["dice"], image["iou"]))
        assert list(case["per_label"]) == LABELS
        for name in LABELS:
            mine, theirs = case["per_label"][name], image["per_label"][name]
            assert (mine["dice"], mine["iou"]) == pytest.approx((theirs["dice"], theirs["iou"]))
            assert mine["hd95_mm"] == (
                pytest.approx(theirs["hd95_mm"]) if theirs["hd95_mm"] is not None else None
            )
        known = [s["hd95_mm"] for s in image["per_label"].values()]
        assert case["hd95_mm"] == (pytest.approx(np.mean(known)) if None not in known else None)
        assert case["hd95"] is None  # no HD95 in pixels for a volume
        assert (case["predicted_px"], case["label_px"]) == (image["predicted_px"], image["label_px"])
        assert set(case["dice_at"]) == set(THRESHOLDS)
    assert kept["mean_dice"] == pytest.approx(evaluated["mean_dice"])
    assert kept["mean_iou"] == pytest.approx(evaluated["mean_iou"])
    assert [t["mean_dice"] for t in kept["per_threshold"]] == pytest.approx(
        [t["mean_dice"] for t in evaluated["per_threshold"]]
    )
    assert list(kept["per_label"]) == LABELS
    for name in LABELS:
        mine, theirs = kept["per_label"][name], evaluated["per_label"][name]
        assert (mine["mean_dice"], mine["mean_iou"]) == pytest.approx(
            (theirs["mean_dice"], theirs["mean_iou"])
        )
        assert mine["mean_hd95_mm"] == pytest.approx(theirs["mean_hd95_mm"])


def test_the_synthetic_cases_score_differently_per_label_and_per_threshold(evaluated):
    """The cases are not trivial: the labels, the cases and the thresholds score apart (else the comparisons
    below would prove little), and the second case's posterior is not predicted at all (HD95 unknown)."""
    first, second = (i["per_label"] for i in evaluated["images"])
    assert first["anterior"]["dice"] != first["posterior"]["dice"]
    assert first["posterior"]["dice"] != second["posterior"]["dice"]
    assert second["posterior"] == {"dice": 0.0, "iou": 0.0, "hd95_mm": None}
    assert first["anterior"]["hd95_mm"] is not None and first["posterior"]["hd95_mm"] is not None
    assert len({round(t["mean_dice"], 6) for t in evaluated["per_threshold"]}) > 2


def test_a_kept_evaluation_scores_each_label_as_evaluate_does_and_keeps_an_axial_overlay(
    world, app, evaluated
):
    doctor = world.client("doctor")
    answer = _run(doctor)
    assert answer.status_code == 201, answer.text
    kept = answer.json()
    _check_as_evaluated(kept, evaluated)

    # listed and shown again with the same per-label scores
    listed = doctor.get("/api/v1/evaluations", params={"organ": "hippocampus"}).json()["evaluations"]
    summary = next(e for e in listed if e["id"] == kept["id"])
    assert summary["per_label"] == kept["per_label"]
    assert doctor.get(f"/api/v1/evaluations/{kept['id']}").json() == kept

    # the overlay: image | label | prediction | differences of the axial slice with the most label voxels
    _, labels = hippodata.synthetic_case(0)
    truth = volumes.Volume(labels, np.eye(4), "nifti").canonical() > 0  # (z, y, x), axial slices first
    z = int(np.argmax(np.count_nonzero(truth, axis=(1, 2))))
    overlay = doctor.get(kept["cases"][0]["overlay_url"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    sheet = np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB")).astype(int)
    height, width = truth.shape[1:]
    assert sheet.shape == (height, 4 * width + 3 * 4, 3)
    image_panel, label_panel = sheet[:, :width], sheet[:, width + 4 : 2 * width + 4]
    tinted = np.any(image_panel != label_panel, axis=2)  # the label panel tints the label's pixels green
    assert np.array_equal(tinted, truth[z]) and tinted.any()


def test_the_same_evaluation_as_a_background_job(world, app, evaluated):
    key = world.client("key:evaluate")
    answer = _run(key, headers=ASYNC)
    assert answer.status_code == 202, answer.text
    assert answer.json()["case_count"] == len(CASES)
    done = _until_finished(key, answer.json()["url"])
    assert done["status"] == "done", done
    kept = key.get(done["evaluation_url"]).json()
    _check_as_evaluated(kept, evaluated)
    assert key.get(kept["cases"][1]["overlay_url"]).content.startswith(b"\x89PNG")
    assert not [k for _, k in world.store.objects if k.startswith("evaluation-jobs/")]  # the upload removed


@pytest.fixture(scope="module")
def channel(world, app):
    yield from grpc_channel(world, app)


def _label_scores(message) -> dict:
    """LabelScores as HTTP's object keyed by label (an unset HD95: None)."""
    return {
        s.label: {"dice": s.dice, "iou": s.iou, "hd95_mm": s.hd95_mm if s.HasField("hd95_mm") else None}
        for s in message
    }


def test_grpc_carries_the_same_scores_per_label_as_label_scores(world, app, channel):
    """RunEvaluation, GetEvaluation, ListEvaluations and CompareEvaluations: the per-label scores HTTP
    answers, as Evaluate's LabelScores (the means in dice / iou / hd95_mm)."""
    metadata = (("authorization", f"Bearer {world.keys['evaluate']}"),)
    stub = clinic_pb2_grpc.EvaluationsStub(channel)
    files = hippodata.synthetic_files(*CASES)
    request = clinic_pb2.RunEvaluationRequest(
        organ="hippocampus",
        **{
            field: [
                segmentation_pb2.LabelledImage(filename=n, image=data)
                for kind, (n, data) in files
                if kind == field
            ]
            for field in ("images", "labels")
        },
    )
    ran = stub.RunEvaluation(request, metadata=metadata, timeout=60)
    http = world.client("key:evaluate").get(f"/api/v1/evaluations/{ran.evaluation.id}").json()
    shown = stub.GetEvaluation(clinic_pb2.GetEvaluationRequest(id=ran.evaluation.id), metadata=metadata)
    for detail in (ran, shown):
        assert [_label_scores(c.per_label) for c in detail.cases] == [c["per_label"] for c in http["cases"]]
        assert not any(c.HasField("hd95") for c in detail.cases)
        means = {
            k: {f"mean_{n}": v for n, v in s.items()}
            for k, s in _label_scores(detail.evaluation.per_label).items()
        }
        assert means == http["per_label"]
    listed = stub.ListEvaluations(clinic_pb2.ListEvaluationsRequest(organ="hippocampus"), metadata=metadata)
    summary = next(e for e in listed.evaluations if e.id == ran.evaluation.id)
    assert list(summary.per_label) == list(ran.evaluation.per_label)
    compared = stub.CompareEvaluations(
        clinic_pb2.CompareEvaluationsRequest(a=ran.evaluation.id, b=ran.evaluation.id), metadata=metadata
    )
    assert compared.ties == len(CASES) and list(compared.a.per_label) == list(ran.evaluation.per_label)


def _one_case(image: np.ndarray, labels: np.ndarray) -> list:
    return [
        ("images", ("bad.nii.gz", hippodata.synthetic_nifti(image))),
        ("labels", ("bad.nii.gz", hippodata.synthetic_nifti(labels))),
    ]


def _off_grid() -> list:
    image, labels = hippodata.synthetic_case(0)
    return _one_case(image, labels[:, :, :-2])


def _moved_grid() -> list:
    image, labels = hippodata.synthetic_case(0)
    moved = nib.Nifti1Image(labels, np.diag([1.0, 1.0, 2.0, 1.0]))
    return [
        ("images", ("bad.nii.gz", hippodata.synthetic_nifti(image))),
        ("labels", ("bad.nii.gz", gzip.compress(moved.to_bytes()))),
    ]


def _label_three() -> list:
    image, labels = hippodata.synthetic_case(0)
    return _one_case(image, np.where(labels == 2, 3, labels).astype(np.uint8))


def _two_d() -> list:
    square = np.pad(np.full((8, 8), 255, np.uint8), 12)
    return [("images", ("bad.png", png(square))), ("labels", ("bad_mask.png", png(square)))]


def _dataset(world) -> dict:
    """A hippocampus dataset the `evaluate` key uploaded (so it may read it)."""
    with world.session() as session:
        row = Dataset(
            id=f"hippocampus-{uuid.uuid4().hex[:12]}", organ="hippocampus", name="t", pair_count=1,
            size_bytes=1, dataset_hash="0" * 64, manifest_key="k",
            uploaded_by_api_key_id=world.key_rows["evaluate"].id,
        )  # fmt: skip
        session.add(row)
    return {"dataset_id": row.id}


BAD = {
    "label on a smaller grid": (lambda w: {"files": _off_grid()}, "size_mismatch", "bad.nii.gz"),
    "label with other voxel sizes": (lambda w: {"files": _moved_grid()}, "size_mismatch", "bad.nii.gz"),
    "label values beyond the labels": (lambda w: {"files": _label_three()}, "invalid_label", "anterior"),
    "a 2-D PNG pair": (lambda w: {"files": _two_d()}, "organ_needs_volume", "bad.png"),
    "a dataset": (lambda w: {"files": [], **_dataset(w)}, "organ_needs_volume", "upload the volumes"),
}


@pytest.mark.parametrize("respond_async", [False, True], ids=["held", "async"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_400_naming_the_problem_and_nothing_is_stored(world, app, case, respond_async):
    make, code, named = BAD[case]
    key = world.client("key:evaluate")
    organ_server = app.state.dataplane.clients["hippocampus"]
    before, calls = _stored(world), organ_server.calls
    answer = _run(key, headers=ASYNC if respond_async else None, **make(world))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and named in error["message"], error
    assert _stored(world) == before
    assert organ_server.calls == calls  # refused before any volume is sent
