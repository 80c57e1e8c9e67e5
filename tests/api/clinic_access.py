"""Rows of the route × caller table (tests/api/test_access.py) for the clinical loop's routes, with the
fixtures each call needs (a version, an evaluation, a feedback thread, a segmentation or a study owned by
the caller)."""

from __future__ import annotations

import datetime
import functools
import gzip
import sys
import tempfile
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import select

from gateway.models import (
    Dataset,
    Evaluation,
    EvaluationCase,
    Feedback,
    ModelVersion,
    ReferenceSet,
    Segmentation,
    Study,
    TrainingJob,
)
from gateway.service.masks import MASKS_OBJECT, THRESHOLDS, pack_masks, probability_mask
from gateway.service.training_jobs import spawn_worker
from gateway.service.views import VIEW_OBJECT, make_view
from services import volumes
from services.imaging import encode_png
from tests import studydata
from tests.pacsdata import stored_study
from tests.studydata import ct_slice_bytes

PEOPLE = frozenset({"doctor", "researcher", "admin"})
RESEARCH = frozenset({"researcher", "admin"})
READERS = ("models", "segment", "evaluate")


class _Management:
    @contextmanager
    def __call__(self, organ):
        yield self

    def set_default(self, model_name, version, timeout=None):
        return "ok"


def _prepare(world) -> None:
    world.app().state.clinic.promotions.rollout.management = _Management()


def _version(world, state="candidate", **kw) -> ModelVersion:
    _prepare(world)
    with world.session() as session:
        row = ModelVersion(
            organ="liver",
            model_name="liver",
            version=f"acc-{uuid.uuid4().hex[:10]}",
            state=state,
            created_by="test",
            **kw,
        )
        session.add(row)
    return row


def _no_default(world) -> None:
    with world.session() as session:
        for row in session.scalars(select(ModelVersion).where(ModelVersion.state == "default")):
            row.state = "retired"
    world.app().state.clinic.directory.invalidate()


def _promote(world, client, who):
    _no_default(world)  # no default: the first promotion has nothing to be gated against
    return client.post(f"/api/v1/models/liver/versions/{_version(world).version}/promote", json={})


def _rollback(world, client, who):
    _no_default(world)
    old = _version(world, state="retired")
    _version(world, state="default", previous_default_id=old.id)
    world.app().state.clinic.directory.invalidate()
    return client.post("/api/v1/models/liver/rollback", json={})


_key_datasets: dict = {}


def _key_dataset(world, scope: str) -> str:
    """A dataset the `scope` key uploaded (no hospital): its own, so the key reaches it (access.DATASET_READ),
    and so do researchers (every dataset is submitted to them) and the platform admin."""
    if _key_datasets.get(scope, (None,))[0] is not world:
        with world.session() as session:
            row = Dataset(
                id=f"liver-{uuid.uuid4().hex[:12]}", organ="liver", name="t", pair_count=1, size_bytes=1,
                dataset_hash="0" * 64, manifest_key="k", uploaded_by_api_key_id=world.key_rows[scope].id,
            )  # fmt: skip
            session.add(row)
        _key_datasets[scope] = (world, row.id)
    return _key_datasets[scope][1]


def _dataset(world) -> str:
    from tests.api.test_access import _visible_dataset

    return _visible_dataset(world)


def _reference(world) -> None:
    with world.session() as session:
        if session.get(ReferenceSet, "liver") is None:
            session.add(
                ReferenceSet(organ="liver", dataset_id=_dataset(world), dataset_hash="0" * 64, set_by="t")
            )


def _owner(world, who: str, scope: str) -> dict:
    """The owner columns of a row made by `who`: a PEOPLE name, "key_with_scope" (the key of `scope`), or a
    key's scope name. Rows are scoped to their owner (gateway/tenancy.py): a caller reaches its own."""
    if who in world.users:
        return {"user_id": world.users[who].id}
    key = world.key_rows.get(scope if who == "key_with_scope" else who)
    return {"api_key_id": key.id} if key is not None else {}


def _evaluation(world, who: str = "evaluate") -> tuple[str, int]:
    """An evaluation made by `who` (default: the `evaluate` key), with one case and its overlay."""
    eval_id = uuid.uuid4()
    key = f"evaluations/{eval_id}/0000.png"
    world.store.put_bytes("medseg-results", key, b"\x89PNG\r\n\x1a\nfake")
    with world.session() as session:
        session.add(
            Evaluation(
                id=eval_id,
                organ="liver",
                model_name="liver",
                model_version="acc",
                threshold=0.5,
                case_count=1,
                mean_dice=0.9,
                std_dice=0.0,
                mean_iou=0.8,
                per_threshold=[{"threshold": 0.5, "mean_dice": 0.9, "best": True}],
                best_threshold=0.5,
                created_by="test",
                **_owner(world, who, "evaluate"),
            )
        )
        session.flush()
        case = EvaluationCase(
            evaluation_id=eval_id,
            name="a",
            dice=0.9,
            iou=0.8,
            dice_at={"0.5": 0.9},
            width=32,
            height=32,
            predicted_px=10,
            label_px=10,
            overlay_key=key,
        )
        session.add(case)
        session.flush()
        return str(eval_id), case.id


def _feedback(world, who) -> int:
    version = _version(world)
    with world.session() as session:
        row = Feedback(
            model_version_id=version.id,
            body="missing part",
            author_user_id=world.users[who].id if who in world.users else None,
            author_api_key_id=_owner(world, who, "feedback").get("api_key_id"),
        )
        session.add(row)
        session.flush()
        return row.id


@functools.cache
def ct_view() -> bytes:
    """The stored view (gateway/service/views.py) of a small CT slice: image, HU values, directions."""
    hu = np.full((32, 32), -1000.0)
    hu[8:24, 8:24] = 60.0
    return make_view(ct_slice_bytes(hu), max_pixels=1_000_000, window={"center": 60, "width": 400})


# A stored segmentation's probability map: a 4×4 square at 200/255 in 32×32 (in the masks at 0.2 … 0.7,
# not at 0.8). The rows' areas are made up.
PROBABILITY = np.pad(np.full((4, 4), 200, np.uint8), 14)
# What a row written before masks and thumbnails were derived stored: a masks.zip of one square per threshold
# and a thumbnail. Its probability_key names no object, so only its stored objects can answer.
LEGACY_MASK = encode_png(np.pad(np.ones((2, 2), bool), 15))
LEGACY_THUMBNAIL = b"\x89PNG\r\n\x1a\nstored thumbnail"


def _segmentation(world, who, *, legacy: bool = False) -> str:
    """A segmentation owned by `who`, as the gateway writes one for the pages (its probability map,
    `PROBABILITY`, and the image kept for the viewer, `ct_view`) or, `legacy`, as it wrote them before (stored
    masks and thumbnail, `LEGACY_*`, no image)."""
    seg_id = uuid.uuid4()
    prefix = f"segmentations/liver/{seg_id}"
    stored = {"probability_key": f"{prefix}/probability.png", "mask_keys": {}, "thumbnail_key": None}
    if legacy:
        stored = {
            "probability_key": "p",
            "mask_keys": {f"{t:.1f}": f"{prefix}/{MASKS_OBJECT}" for t in THRESHOLDS},
            "thumbnail_key": f"{prefix}/thumbnail.png",
        }
        world.store.put_bytes("medseg-results", stored["thumbnail_key"], LEGACY_THUMBNAIL)
        masks_zip = pack_masks({t: LEGACY_MASK for t in THRESHOLDS})
        world.store.put_bytes("medseg-results", f"{prefix}/{MASKS_OBJECT}", masks_zip)
    else:
        world.store.put_bytes("medseg-results", stored["probability_key"], encode_png(PROBABILITY))
        stored["view_key"] = f"{prefix}/{VIEW_OBJECT}"
        world.store.put_bytes("medseg-results", stored["view_key"], ct_view())
    with world.session() as session:
        session.add(
            Segmentation(
                id=seg_id,
                organ="liver",
                model_name="liver",
                model_version="acc",
                patient_id="P-1",
                width=32,
                height=32,
                areas_px={"0.5": 4},
                user_id=world.users[who].id if who in world.users else None,
                api_key_id=world.key_rows["segment"].id if who == "key_with_scope" else None,
                **stored,
            )
        )
    return str(seg_id)


# --- studies: a small CT volume (16 × 16 pixels, 4 slices, in HU) as NIfTI and as a DICOM series -------
STUDY_SHAPE = [4, 16, 16]  # [z, y, x], as a study reports it
STUDY_SPACING = [studydata.SLICE_MM, studydata.PIXEL_MM, studydata.PIXEL_MM]
STUDY_PATIENT = "P-S1"


@lru_cache
def study_hu() -> np.ndarray:
    """HU on the base grid (i, j, k) = (16, 16, 4): a ramp from air to bone, different on every slice."""
    i, j, k = np.meshgrid(np.arange(16), np.arange(16), np.arange(4), indexing="ij")
    return (-200.0 + 20.0 * i + 5.0 * j + 30.0 * k).astype(np.float32)


@lru_cache
def study_files(source: str = "nifti") -> tuple[tuple[str, bytes], ...]:
    """The study as uploaded: one .nii.gz, or the DICOM files of one series (patient LIVER-0001, study date
    2024-03-01 in the headers)."""
    if source == "nifti":
        image = studydata.nifti_image(study_hu().astype(np.int16))
        return (("study.nii.gz", gzip.compress(image.to_bytes(), mtime=0)),)
    return tuple(studydata.series_files(studydata.ct_datasets(study_hu(), name="api-study")))


@lru_cache
def _study_volume(source: str) -> volumes.Volume:
    return volumes.read_study(list(study_files(source)))


@lru_cache
def study_probability(source: str = "nifti") -> np.ndarray:
    """The stored 8-bit probabilities on the input grid: 0 … 255 across the first axis."""
    shape = _study_volume(source).shape
    ramp = np.linspace(0, 255, shape[0]).round().astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(ramp[:, None, None], shape))


def study_mask(source: str, threshold: float) -> np.ndarray:
    """The labels a study's mask at `threshold` must hold (the liver spec has no 3-D post-processing)."""
    return probability_mask(study_probability(source), threshold).astype(np.uint8)


def study_volumes_ml(source: str = "nifti") -> dict:
    """The organ's volume in mL at each threshold of those probabilities, as the study service counts it."""
    prob, voxel_ml = study_probability(source), _study_volume(source).voxel_volume_ml
    return {
        f"{t:.1f}": {"liver": round(int(probability_mask(prob, t).sum()) * voxel_ml, 2)} for t in THRESHOLDS
    }


@lru_cache
def _study_objects(source: str) -> tuple[str, bytes, bytes]:
    """(input object name, input bytes, probability .nii.gz) of a study made from the files."""
    if source == "nifti":
        name, data = "source.nii.gz", study_files(source)[0][1]
    else:
        name, data = "source.zip", studydata.zipped(study_files(source))
    return name, data, volumes.nifti_bytes(_study_volume(source), study_probability(source))


def make_study(
    world,
    *,
    user_id: int | None = None,
    api_key_id: int | None = None,
    hospital: str | None = None,
    status: str = "done",
    source: str = "nifti",
    patient_id: str = STUDY_PATIENT,
    chosen_threshold: float | None = None,
) -> str:
    """A study row as the study service leaves it (queued: its upload stored; done: its probabilities and
    organ volumes too), with its objects in the results bucket; its id."""
    study_id = uuid.uuid4()
    prefix = f"studies/liver/{study_id}"
    name, data, probability = _study_objects(source)
    world.store.put_bytes("medseg-results", f"{prefix}/{name}", data)
    done = status == "done"
    if done:
        world.store.put_bytes("medseg-results", f"{prefix}/probability.nii.gz", probability)
    dicom = _study_volume(source).series
    with world.session() as session:
        session.add(
            Study(
                id=study_id, organ="liver", patient_id=patient_id, study_date=datetime.date(2024, 3, 1),
                source=source, modality="CT", study_uid=dicom and dicom.study_instance_uid,
                series_uid=dicom and dicom.series_instance_uid, status=status, progress=1.0 if done else 0.0,
                attempts=1 if done else 0, model_name="liver" if done else None,
                model_version="acc" if done else None, shape=STUDY_SHAPE, spacing_mm=STUDY_SPACING,
                labels=["liver"], volumes_ml=study_volumes_ml(source) if done else {},
                input_key=f"{prefix}/{name}", source_key=f"{prefix}/{name}" if source == "dicom" else None,
                probability_key=f"{prefix}/probability.nii.gz" if done else None, size_bytes=len(data),
                api_key_id=api_key_id, user_id=user_id, hospital=hospital, chosen_threshold=chosen_threshold,
            )
        )  # fmt: skip
    return str(study_id)


def _study(world, who, **kw) -> str:
    """A study made by `who` (a PEOPLE name, or "key_with_scope": the `segment` key), of its hospital."""
    owner = _owner(world, who, "segment")
    hospital = world.users[who].hospital if who in world.users else None
    return make_study(world, **owner, hospital=hospital, **kw)


def _evaluation_job(world, who) -> str:
    """A queued evaluation job made by `who` (a PEOPLE name, or "key_with_scope": the `evaluate` key)."""
    from gateway.models import EvaluationJob

    owner = _owner(world, who, "evaluate")
    with world.session() as session:
        row = EvaluationJob(
            organ="liver", model_version="acc", case_count=1, created_by=who,
            hospital=world.users[who].hospital if who in world.users else None, **owner,
        )  # fmt: skip
        session.add(row)
        session.flush()
        return str(row.id)


def _study_submit(world, client, who):
    return client.post(
        "/api/v1/studies", data={"organ": "liver"}, files=[("files", f) for f in study_files("nifti")]
    )


def _upload_eval(world, client, who):
    from tests.api.conftest import png

    _prepare(world)
    image = png(np.zeros((32, 32), np.uint8))
    label = png(np.pad(np.full((8, 8), 255, np.uint8), 12))
    return client.post(
        "/api/v1/evaluations",
        data={"organ": "liver"},
        files=[("images", ("a.png", image)), ("labels", ("a.png", label))],
    )


def _no_training(world):
    """The app's training jobs with a worker that exits at once (access is the point, not training)."""
    jobs = world.app().state.clinic.jobs
    if not hasattr(jobs, "_access_runs"):
        jobs._access_runs = jobs.runs_dir = Path(tempfile.mkdtemp(prefix="medseg-access-runs-"))
        jobs.max_running = 1_000_000
        jobs.launcher.spawn = lambda argv, **kw: spawn_worker([sys.executable, "-c", "pass"], **kw)
    return jobs


def _start_job(world, client, who):
    _no_training(world)
    body = {
        "organ": "liver",
        "dataset_id": _key_dataset(world, "train"),
        "arch": "erunet",
        "minutes": 1,
        "epochs": 1,
    }
    return client.post("/api/v1/training/jobs", json=body)


def _job(world, state: str) -> str:
    _no_training(world)
    with world.session() as session:
        row = TrainingJob(organ="liver", dataset_id="d", arch="erunet", budget_minutes=1, epochs=1,
                          state=state, version=f"job-{uuid.uuid4().hex[:8]}", created_by="test")  # fmt: skip
        session.add(row)
        session.flush()
        return str(row.id)


def _pacs_thumbnail(world) -> str:
    study_uid = pacs_study(world)
    return f"/api/v1/pacs/studies/{study_uid}/series/{world.pacs_series_uid}/thumbnail.png"


def pacs_study(world) -> str:
    """The UID of a study in the world's PACS (a real Orthanc: tests/fixtures/pacs.py), stored once."""
    if not getattr(world, "pacs_study_uid", None):
        world.pacs_patient_id = f"P-{uuid.uuid4().hex[:8]}"
        series = stored_study(world.app().state.clinic.pacs.pacs, patient_id=world.pacs_patient_id)
        world.pacs_study_uid = series[0].StudyInstanceUID
        world.pacs_series_uid = series[0].SeriesInstanceUID
    return world.pacs_study_uid


def _rule(roles, scopes, call) -> tuple:
    """(roles, scopes, call): test_access.Rule's fields."""
    return frozenset(roles), tuple(scopes), call


def _rules() -> dict:
    return {
        ("GET", "/api/v1/models/{organ}/versions"): _rule(
            PEOPLE, READERS, lambda w, c, who: c.get("/api/v1/models/liver/versions")
        ),
        ("POST", "/api/v1/models/{organ}/versions"): _rule(
            RESEARCH,
            ("models",),
            lambda w, c, who: c.post(
                "/api/v1/models/liver/versions",
                json={"model_name": "liver", "version": f"r-{uuid.uuid4().hex[:10]}"},
            ),
        ),
        ("GET", "/api/v1/models/{organ}/versions/{version}"): _rule(
            PEOPLE, READERS, lambda w, c, who: c.get(f"/api/v1/models/liver/versions/{_version(w).version}")
        ),
        ("POST", "/api/v1/models/{organ}/versions/{version}/promote"): _rule(RESEARCH, ("models",), _promote),
        ("POST", "/api/v1/models/{organ}/rollback"): _rule(RESEARCH, ("models",), _rollback),
        ("PUT", "/api/v1/models/{organ}/reference-set"): _rule(
            RESEARCH,
            ("models",),
            lambda w, c, who: c.put(
                "/api/v1/models/liver/reference-set", json={"dataset_id": _key_dataset(w, "models")}
            ),
        ),
        ("GET", "/api/v1/models/{organ}/reference-set"): _rule(
            PEOPLE, READERS, lambda w, c, who: (_reference(w), c.get("/api/v1/models/liver/reference-set"))[1]
        ),
        ("GET", "/api/v1/models/{organ}/suggested-threshold"): _rule(
            PEOPLE, READERS, lambda w, c, who: c.get("/api/v1/models/liver/suggested-threshold")
        ),
        ("POST", "/api/v1/evaluations"): _rule(PEOPLE, ("evaluate",), _upload_eval),
        ("GET", "/api/v1/evaluations"): _rule(
            PEOPLE, ("evaluate",), lambda w, c, who: c.get("/api/v1/evaluations")
        ),
        ("GET", "/api/v1/evaluations/compare"): _rule(
            PEOPLE,
            ("evaluate",),
            lambda w, c, who: c.get(
                "/api/v1/evaluations/compare",
                params={"a": _evaluation(w, who)[0], "b": _evaluation(w, who)[0]},
            ),
        ),
        ("GET", "/api/v1/evaluations/{evaluation_id}"): _rule(
            PEOPLE, ("evaluate",), lambda w, c, who: c.get(f"/api/v1/evaluations/{_evaluation(w, who)[0]}")
        ),
        ("GET", "/api/v1/evaluations/{evaluation_id}/cases/{case_id}/overlay.png"): _rule(
            PEOPLE,
            ("evaluate",),
            lambda w, c, who: c.get(
                "/api/v1/evaluations/{}/cases/{}/overlay.png".format(*_evaluation(w, who))
            ),
        ),
        ("POST", "/api/v1/models/{organ}/versions/{version}/feedback"): _rule(
            {"doctor", "admin"},
            ("feedback",),
            lambda w, c, who: c.post(
                f"/api/v1/models/liver/versions/{_version(w).version}/feedback",
                json={"body": "case 6: part missing"},
            ),
        ),
        ("GET", "/api/v1/feedback"): _rule(
            PEOPLE, ("feedback",), lambda w, c, who: c.get("/api/v1/feedback")
        ),
        ("GET", "/api/v1/feedback/{feedback_id}"): _rule(
            PEOPLE, ("feedback",), lambda w, c, who: c.get(f"/api/v1/feedback/{_feedback(w, who)}")
        ),
        ("POST", "/api/v1/feedback/{feedback_id}/replies"): _rule(
            PEOPLE,
            ("feedback",),
            lambda w, c, who: c.post(f"/api/v1/feedback/{_feedback(w, who)}/replies", json={"body": "ok"}),
        ),
        ("PATCH", "/api/v1/feedback/{feedback_id}"): _rule(
            PEOPLE,
            ("feedback",),
            lambda w, c, who: c.patch(f"/api/v1/feedback/{_feedback(w, who)}", json={"status": "resolved"}),
        ),
        ("GET", "/api/v1/segmentations"): _rule(
            PEOPLE, ("segment",), lambda w, c, who: c.get("/api/v1/segmentations")
        ),
        ("POST", "/api/v1/segmentations/{segmentation_id}/choice"): _rule(
            {"doctor"},
            ("segment",),  # the key that made the segmentation (a hospital system, for its doctor)
            lambda w, c, who: c.post(
                f"/api/v1/segmentations/{_segmentation(w, who)}/choice", json={"threshold": 0.5}
            ),
        ),
        ("GET", "/api/v1/segmentations/{segmentation_id}/thumbnail.png"): _rule(
            PEOPLE,
            ("segment",),
            lambda w, c, who: c.get(f"/api/v1/segmentations/{_segmentation(w, who)}/thumbnail.png"),
        ),
        ("GET", "/api/v1/segmentations/{segmentation_id}/mask.png"): _rule(
            PEOPLE,
            ("segment",),
            lambda w, c, who: c.get(f"/api/v1/segmentations/{_segmentation(w, who)}/mask.png"),
        ),
        **{
            ("GET", f"/api/v1/segmentations/{{segmentation_id}}/{path}"): _rule(
                PEOPLE,
                ("segment",),
                lambda w, c, who, path=path: c.get(f"/api/v1/segmentations/{_segmentation(w, who)}/{path}"),
            )
            for path in ("image.png", "values.npy", "nuclei")
        },
        ("GET", "/api/v1/training/architectures"): _rule(
            RESEARCH, ("train",), lambda w, c, who: c.get("/api/v1/training/architectures")
        ),
        ("GET", "/api/v1/training/jobs"): _rule(
            RESEARCH, ("train",), lambda w, c, who: (_no_training(w), c.get("/api/v1/training/jobs"))[1]
        ),
        ("POST", "/api/v1/training/jobs"): _rule(RESEARCH, ("train",), _start_job),
        ("GET", "/api/v1/training/jobs/{job_id}"): _rule(
            RESEARCH, ("train",), lambda w, c, who: c.get(f"/api/v1/training/jobs/{_job(w, 'failed')}")
        ),
        ("POST", "/api/v1/training/jobs/{job_id}/cancel"): _rule(
            RESEARCH,
            ("train",),
            lambda w, c, who: c.post(f"/api/v1/training/jobs/{_job(w, 'queued')}/cancel"),
        ),
        ("GET", "/api/v1/patients/{patient_id}/trend"): _rule(
            PEOPLE, ("segment",), lambda w, c, who: c.get("/api/v1/patients/P-1/trend")
        ),
        ("POST", "/api/v1/studies"): _rule(PEOPLE, ("segment",), _study_submit),
        ("GET", "/api/v1/studies"): _rule(PEOPLE, ("segment",), lambda w, c, who: c.get("/api/v1/studies")),
        ("GET", "/api/v1/studies/{study_id}"): _rule(
            PEOPLE, ("segment",), lambda w, c, who: c.get(f"/api/v1/studies/{_study(w, who)}")
        ),
        ("GET", "/api/v1/studies/{study_id}/mask.nii.gz"): _rule(
            PEOPLE, ("segment",), lambda w, c, who: c.get(f"/api/v1/studies/{_study(w, who)}/mask.nii.gz")
        ),
        ("GET", "/api/v1/studies/{study_id}/seg.dcm"): _rule(
            PEOPLE,
            ("segment",),
            lambda w, c, who: c.get(f"/api/v1/studies/{_study(w, who, source='dicom')}/seg.dcm"),
        ),
        ("GET", "/api/v1/studies/{study_id}/image.nii.gz"): _rule(
            PEOPLE, ("segment",), lambda w, c, who: c.get(f"/api/v1/studies/{_study(w, who)}/image.nii.gz")
        ),
        ("GET", "/api/v1/evaluation-jobs/{job_id}"): _rule(
            PEOPLE,
            ("evaluate",),
            lambda w, c, who: c.get(f"/api/v1/evaluation-jobs/{_evaluation_job(w, who)}"),
        ),
        ("POST", "/api/v1/evaluation-jobs/{job_id}/cancel"): _rule(
            PEOPLE,
            ("evaluate",),
            lambda w, c, who: c.post(f"/api/v1/evaluation-jobs/{_evaluation_job(w, who)}/cancel"),
        ),
        ("POST", "/api/v1/studies/{study_id}/cancel"): _rule(
            PEOPLE,
            ("segment",),
            lambda w, c, who: c.post(f"/api/v1/studies/{_study(w, who, status='queued')}/cancel"),
        ),
        ("POST", "/api/v1/studies/{study_id}/choice"): _rule(
            {"doctor"},
            ("segment",),  # the key that submitted the study (a hospital system, for its doctor)
            lambda w, c, who: c.post(f"/api/v1/studies/{_study(w, who)}/choice", json={"threshold": 0.5}),
        ),
        # the hospital's PACS: its doctors and its systems' keys (gateway/access.py PACS_READER)
        ("GET", "/api/v1/pacs/studies"): _rule(
            {"doctor"}, ("segment",), lambda w, c, who: c.get("/api/v1/pacs/studies", params={"limit": 5})
        ),
        ("GET", "/api/v1/pacs/studies/{study_uid}/series"): _rule(
            {"doctor"}, ("segment",), lambda w, c, who: c.get(f"/api/v1/pacs/studies/{pacs_study(w)}/series")
        ),
        ("GET", "/api/v1/pacs/studies/{study_uid}/series/{series_uid}/thumbnail.png"): _rule(
            {"doctor"}, ("segment",), lambda w, c, who: c.get(_pacs_thumbnail(w))
        ),
    }


CLINIC_ACCESS = _rules()
