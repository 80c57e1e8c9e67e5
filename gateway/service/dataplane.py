"""The operations of the public API (list organs, segment, evaluate, readiness), edge-neutral.

Segment: validate organ and upload (size; format, pixel count and spacing from the header) before
bothering an organ server, call the organ server (which decodes the image, and refuses one whose pixels
are corrupt: a 400 naming the file), then store what cannot be derived: one object, the probability map
the organ server answered, and one row (areas at 0.2 … 0.8 counted from the map, stability, who
asked). Masks at any threshold and the history's thumbnail are made from the stored map when asked for
(gateway.service.masks); the answer carries the masks the caller asked for (all seven by default). The
object is written before the row and removed again when the row fails, so a row never points at an object
that is not there. Asked to keep the image (`keep_image`: the web pages, for their viewer), the gateway also
writes the image as the viewer shows it (gateway.service.views) beside the map: optional, the row stands
without it when it cannot be made or written.
"""

from __future__ import annotations

import logging
import re
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import TypeVar

import numpy as np

from common.errors import InvalidInput, MedSegError, NotFound, PayloadTooLarge, ServiceUnavailable
from common.torchserve_client import InferenceClient
from gateway import metrics
from gateway.service import images, scoring, views, volume3d
from gateway.service.masks import THRESHOLDS, areas, mask_png, probability_mask, stability
from gateway.service.organs import ModelInfo, Organ, OrganRegistry
from services import volumes

logger = logging.getLogger(__name__)

# A pseudonymous patient ID as hospitals issue them (e.g. "P-0042", "LITS-000", "2024.17:3"): ASCII letters
# and digits with . _ : - inside, at most 64 characters. No spaces and no other scripts, so a name typed by
# mistake ("Anna Schmidt", "张三") is refused instead of stored beside a patient's images.
PATIENT_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,62}[A-Za-z0-9])?")


def check_patient_id(value: str) -> str:
    if not PATIENT_ID.fullmatch(value):
        raise InvalidInput(
            "patient_id must be a pseudonymous ID, not a name: 1-64 ASCII letters and digits with . _ : - "
            f"inside and no spaces (e.g. P-0042); got {value[:70]!r}",
            code="invalid_patient_id",
        )
    return value


@dataclass(frozen=True)
class MaskResult:
    threshold: float
    area_px: int
    mask_png: bytes


@dataclass(frozen=True)
class SegmentResult:
    id: str
    organ: str
    model: ModelInfo
    width: int
    height: int
    default_threshold: float
    probability_png: bytes
    masks: list[MaskResult]  # the ones asked for (all seven by default)
    areas: dict[str, int]  # "0.2" … "0.8" → mask area in pixels, at every threshold whatever was asked


@dataclass(frozen=True)
class OrganStatus:
    name: str
    display_name: str
    modality: str
    label: str
    model: ModelInfo
    default_threshold: float
    ready: bool
    labels: tuple[str, ...] = ()  # the mask values 1..N name these
    dimensions: int = 2  # 2: images (a volume slice by slice); 3: whole volumes only (studies)


@dataclass(frozen=True)
class ImageScore:
    filename: str
    dice: float
    iou: float
    width: int
    height: int
    predicted_px: int
    label_px: int
    # an organ of several labels (3-D): {label: {"dice", "iou", "hd95_mm"}}; dice and iou: their means
    per_label: dict[str, dict[str, float | None]] | None = None


@dataclass(frozen=True)
class ThresholdScore:
    threshold: float
    mean_dice: float
    mean_iou: float


@dataclass(frozen=True)
class EvaluateResult:
    organ: str
    model: ModelInfo
    threshold: float
    images: list[ImageScore]
    mean_dice: float
    mean_iou: float
    per_threshold: list[ThresholdScore]
    # an organ of several labels: {label: {"mean_dice", "mean_iou", "mean_hd95_mm"}} over the cases
    per_label: dict[str, dict[str, float | None]] | None = None


@dataclass(frozen=True)
class SegmentationRecord:
    """One segmentation as the database records it (`DataPlane.record_segmentation`, in production
    gateway.crud.record_segmentation): the model that made it, its one object already written (the
    probability map's key in the results bucket; masks and thumbnail are derived from it), and who asked (a
    person, a key, or neither)."""

    id: str
    organ: str
    model: ModelInfo
    patient_id: str | None
    width: int
    height: int
    spacing_mm: tuple[float, float] | None  # (row, column) pixel spacing, when the image carried one
    probability_key: str
    areas: dict[str, int]  # "0.5" → mask area in pixels
    api_key_id: int | None
    stability: float | None = None
    view_key: str | None = None  # the image kept for the viewer (gateway.service.views), if asked and written
    user_id: int | None = None
    actor: str | None = None
    hospital: str | None = None  # the owner's (gateway/tenancy.py)


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class Case:
    """An image and its label, named by the image's file stem (uploads) or by the dataset's pair name."""

    name: str
    image: Upload
    label: Upload


@dataclass(frozen=True)
class _ScoredImage:
    """One image of `DataPlane.evaluate`, scored: its public score and (Dice, IoU) at every threshold."""

    score: ImageScore
    at: dict[float, tuple[float, float]]


@dataclass
class Readiness:
    components: dict[str, str] = field(default_factory=dict)  # name → "ok" or what is wrong

    @property
    def ready(self) -> bool:
        return all(v == "ok" for v in self.components.values())

    @property
    def down(self) -> list[str]:
        return [k for k, v in self.components.items() if v != "ok"]


RECENT_SEGMENTATIONS = 9  # per organ, for expected_seconds


class DataPlane:
    """Everything both edges serve. Collaborators are injected so tests can swap any of them."""

    def __init__(
        self,
        registry: OrganRegistry,
        clients: dict[str, InferenceClient],
        store,
        *,
        results_bucket: str,
        record_segmentation: Callable[[object, SegmentationRecord], object],
        max_upload_bytes: int,
        max_image_pixels: int,
        max_evaluate_images: int = 64,
        readiness_timeout_s: float = 1.0,
        workers_probe: Callable[[str, ModelInfo, float], tuple[bool, str]] | None = None,
    ):
        self.registry = registry
        self.clients = clients
        self.store = store
        self.results_bucket = results_bucket
        self.record_segmentation = record_segmentation
        self.max_upload_bytes = max_upload_bytes
        self.max_image_pixels = max_image_pixels
        self.max_evaluate_images = max_evaluate_images
        self.readiness_timeout_s = readiness_timeout_s
        # (organ, the model version it must serve, timeout) → (ready, why not): whether TorchServe's workers
        # for that version are READY (gateway/service/organ_readiness.py); None: a Ping answered is ready.
        self.workers_probe = workers_probe
        self._buckets_ready = False
        # Probes run here so a hung dependency costs a probe its timeout, not a request thread forever.
        self._probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medseg-probe")
        # A segmentation's one object is written here while the request thread makes the answer's masks.
        self._writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="medseg-store")
        # How long this gateway's last segmentations of each organ took, for the pages' progress estimate.
        self._recent_seconds: dict[str, deque[float]] = {}
        self._recent_lock = threading.Lock()

    # --- health -------------------------------------------------------------------------------
    def readiness(self) -> Readiness:
        """Every organ server and the object store, probed concurrently within readiness_timeout_s."""
        futures = {f"organ:{name}": self._probes.submit(self._organ_health, name) for name in self.clients}
        futures["objectstore"] = self._probes.submit(self._store_ping)
        result = Readiness()
        for name, future in futures.items():
            try:
                ok, detail = future.result(timeout=self.readiness_timeout_s + 0.5)
            except FutureTimeout:
                ok, detail = False, "timeout"
            except Exception as exc:  # a probe must report, never raise
                logger.warning("readiness probe %s failed: %s", name, exc)
                ok, detail = False, type(exc).__name__
            result.components[name] = "ok" if ok else (detail or "down")
        return result

    def _organ_health(self, organ: str) -> tuple[bool, str]:
        """(ready, why not) of one organ: its server answers Ping and, with a `workers_probe`, the version the
        gateway asks for has a READY worker (a new TorchServe answers Ping before its workers load)."""
        ok, detail = self.clients[organ].health(self.readiness_timeout_s)
        if ok and self.workers_probe is not None:
            return self.workers_probe(organ, self.registry.model(organ), self.readiness_timeout_s)
        return ok, detail

    def _store_ping(self) -> tuple[bool, str]:
        try:
            self.store.ping()  # raises ServiceUnavailable when the store does not answer
        except MedSegError as exc:
            return False, exc.message
        return True, "ok"

    def list_organs(self) -> list[OrganStatus]:
        """Every organ folder with its model and whether it is ready (an organ this data plane has no client
        for cannot be reached: not ready)."""
        organs = [o.name for o in self.registry.all() if o.name in self.clients]
        futures = {name: self._probes.submit(self._organ_health, name) for name in organs}
        statuses = []
        for organ in self.registry.all():
            try:
                ready = (
                    organ.name in futures
                    and futures[organ.name].result(timeout=self.readiness_timeout_s + 0.5)[0]
                )
            except FutureTimeout:
                ready = False
            spec = organ.spec
            statuses.append(
                OrganStatus(
                    organ.name,
                    spec.display_name,
                    spec.modality,
                    spec.label,
                    self.registry.model(organ.name),
                    self.registry.default_threshold(organ.name),
                    ready,
                    spec.labels,
                    spec.dimensions,
                )
            )
        return statuses

    # --- segment ------------------------------------------------------------------------------
    def _check_upload(self, data: bytes, filename: str, what: str = "file") -> None:
        if len(data) > self.max_upload_bytes:
            raise PayloadTooLarge(
                f"{what} {filename!r} is {len(data)} bytes; the limit is "
                f"{self.max_upload_bytes} bytes per image",
                code="file_too_large",
                params={"name": filename, "limit": self.max_upload_bytes},
            )
        if not data:
            raise InvalidInput(f"{what} {filename!r} is empty", code="empty_file", params={"name": filename})

    def _infer(self, organ: Organ, data: bytes, filename: str) -> tuple[np.ndarray, bytes, tuple | None]:
        """Validate, run the organ server; return the probability map (uint8 H×W), its PNG and the
        image's pixel spacing (mm, when the file carries one)."""
        prob_png, shape, spacing_mm = self._predict(organ, data, filename)
        return self._probability(organ, prob_png, shape), prob_png, spacing_mm

    def _predict(
        self, organ: Organ, data: bytes, filename: str
    ) -> tuple[bytes, tuple[int, int], tuple | None]:
        """Validate, run the organ server; return its probability PNG as it came (not yet read: see
        `_probability`), the image's (height, width) and its pixel spacing (mm, when the file carries one)."""
        check_two_dimensional(organ)
        self._check_upload(data, filename)
        height, width, spacing_mm = images.inspect(data, filename, max_pixels=self.max_image_pixels)
        # Ask for the version the registry reports, so the answer and its label always agree.
        model = self.registry.model(organ.name)
        try:
            prob_png = self.clients[organ.name].predict(
                organ.name, data, version=model.version if model.version != "unknown" else None
            )
        except InvalidInput as exc:  # the organ server could not decode the pixels
            raise images.refused_by_organ(exc, filename) from None
        except NotFound as exc:  # the caller named no version: a missing default is ours to fix, not theirs
            logger.error("organ %s does not serve its default %s: %s", organ.name, model.version, exc.message)
            raise ServiceUnavailable(
                f"organ {organ.name!r} does not serve its default model version {model.version} yet",
                code="model_not_ready",
            ) from None
        return prob_png, (height, width), spacing_mm

    @staticmethod
    def _probability(organ: Organ, prob_png: bytes, shape: tuple[int, int]) -> np.ndarray:
        """The organ server's probability PNG as uint8 H×W; 503 when it is unreadable or not `shape`."""
        height, width = shape
        try:
            prob = images.decode_probability(prob_png)
        except ValueError as exc:
            logger.error("organ %s returned an unreadable probability map: %s", organ.name, exc)
            raise ServiceUnavailable(
                f"organ server {organ.name!r} returned an invalid answer", code="organ_error"
            ) from None
        if prob.shape != (height, width):
            logger.error("organ %s answered %s for a %dx%d image", organ.name, prob.shape, height, width)
            raise ServiceUnavailable(
                f"organ server {organ.name!r} returned a map of the wrong size", code="organ_error"
            )
        return prob

    def segment(
        self,
        session,
        organ_name: str,
        data: bytes,
        filename: str = "",
        patient_id: str | None = None,
        api_key_id=None,
        user_id=None,
        actor: str | None = None,
        hospital: str | None = None,
        masks: Sequence[float] = THRESHOLDS,
        keep_image: bool = False,
    ) -> SegmentResult:
        """Segment and record: the probability map's object first, then the complete row (who asked, areas,
        stability) in one commit; the object is removed again when the row fails. The answer carries the
        masks at `masks` (thresholds of the grid; gateway.service.masks.selection reads a request's).
        `keep_image`: the image is kept too, as the viewer shows it, written beside the map."""
        started = time.perf_counter()
        organ = self.registry.get(organ_name)
        filename = filename or "upload"
        if patient_id is not None:
            check_patient_id(patient_id)
        prob_png, (height, width), spacing_mm = self._predict(organ, data, filename)
        seg_id = str(uuid.uuid4())
        written: list[str] = []
        try:
            self._ensure_buckets_once()
            prefix = f"segmentations/{organ.name}/{seg_id}"
            probability_key, view_key = f"{prefix}/probability.png", f"{prefix}/{views.VIEW_OBJECT}"
            view = (
                self._writers.submit(self._store_view, view_key, data, organ.spec.window)
                if keep_image
                else None
            )
            try:
                areas_px, answered = self._store_results(
                    organ, probability_key, prob_png, (height, width), masks, written
                )
            finally:
                view_key = self._kept(view, view_key, written)
            model = self.registry.model(organ.name)
            record = self._segmentation_record(
                seg_id, organ.name, model, probability_key, areas_px, (width, height), spacing_mm,
                patient_id=patient_id, api_key_id=api_key_id, user_id=user_id, actor=actor, hospital=hospital,
                view_key=view_key,
            )  # fmt: skip
            self.record_segmentation(session, record)
        except Exception:
            self.remove_results(written)  # a row never points at an object that is not there
            raise
        metrics.observe_latency("segment", organ.name, model.version, started)
        self._remember_seconds(organ.name, time.perf_counter() - started)
        threshold = self.registry.default_threshold(organ.name)
        return SegmentResult(
            seg_id, organ.name, model, width, height, threshold, prob_png, answered, areas_px
        )

    def _remember_seconds(self, organ: str, seconds: float) -> None:
        with self._recent_lock:
            self._recent_seconds.setdefault(organ, deque(maxlen=RECENT_SEGMENTATIONS)).append(seconds)

    def expected_seconds(self, organ: str) -> float | None:
        """The median time of this gateway's last RECENT_SEGMENTATIONS successful segmentations of `organ`
        (upload received to answer made), or None before the first: what the segment page's progress bar
        expects a new one to take."""
        with self._recent_lock:
            recent = list(self._recent_seconds.get(organ, ()))
        return statistics.median(recent) if recent else None

    def _ensure_buckets_once(self) -> None:
        # once per process, at the first segmentation: the store may have been empty or down at start
        if not self._buckets_ready:
            self.store.ensure_buckets()
            self._buckets_ready = True

    @staticmethod
    def _segmentation_record(
        seg_id: str,
        organ: str,
        model: ModelInfo,
        probability_key: str,
        areas_px: dict[str, int],
        size: tuple[int, int],
        spacing_mm: tuple[float, float] | None,
        *,
        patient_id: str | None,
        api_key_id,
        user_id,
        actor: str | None,
        hospital: str | None,
        view_key: str | None = None,
    ) -> SegmentationRecord:
        """The row of a segmentation whose probability map is written at `probability_key` (and the image
        kept for the viewer at `view_key`); size: (width, height)."""
        width, height = size
        return SegmentationRecord(
            id=seg_id,
            organ=organ,
            model=model,
            patient_id=patient_id,
            width=width,
            height=height,
            spacing_mm=spacing_mm,
            probability_key=probability_key,
            areas=areas_px,
            stability=stability(areas_px),
            view_key=view_key,
            api_key_id=api_key_id,
            user_id=user_id,
            actor=actor,
            hospital=hospital,
        )

    def _store_results(
        self,
        organ: Organ,
        key: str,
        prob_png: bytes,
        shape: tuple[int, int],
        thresholds: Sequence[float],
        written: list[str],
    ) -> tuple[dict[str, int], list[MaskResult]]:
        """Write the probability map (the organ server's PNG, as it came) at `key` in the writer pool while
        this thread reads it (`_probability`: 503 when it is unreadable), takes its areas at every threshold
        (counted, no mask made) and makes the masks at `thresholds` (zlib and numpy release the GIL, so they
        overlap the write's round trip). Appends `key` to `written` once the object is there. Returns (areas,
        masks) when the write succeeded, else raises its failure; either way only after the write has
        finished, so nothing is in flight when the caller removes what was written."""
        write = self._writers.submit(self._store_probability, key, prob_png)
        try:
            prob = self._probability(organ, prob_png, shape)
            areas_px = areas(prob)
            answered = [MaskResult(t, areas_px[f"{t:.1f}"], mask_png(prob, t)) for t in thresholds]
        finally:
            wait([write])
            if write.exception() is None:
                written.append(key)
        write.result()  # the write's failure, if any
        return areas_px, answered

    def _store_probability(self, key: str, prob_png: bytes) -> None:
        self.store.put_bytes(self.results_bucket, key, prob_png, content_type="image/png")

    def _store_view(self, key: str, data: bytes, window: dict | None) -> None:
        view = views.make_view(data, max_pixels=self.max_image_pixels, window=window)
        self.store.put_bytes(self.results_bucket, key, view, content_type="application/zip")

    @staticmethod
    def _kept(view, key: str, written: list[str]) -> str | None:
        """The kept image's key once its write has finished (appended to `written`), or None when it was not
        asked for or failed: the segmentation stands without it."""
        if view is None:
            return None
        wait([view])
        failed = view.exception()
        if failed is None:
            written.append(key)
            return key
        if not isinstance(failed, Exception):  # KeyboardInterrupt, SystemExit: not a failed preview
            raise failed
        logger.warning("the image of %s was not kept: %s", key, failed)
        return None

    def remove_results(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                self.store.delete(self.results_bucket, key)
            except Exception as exc:  # store likely down; orphans without a row are harmless
                logger.warning("could not remove orphaned result object %s: %s", key, exc)

    # --- evaluate -----------------------------------------------------------------------------
    def evaluate(
        self, organ_name: str, image_files: Sequence[Upload], label_files: Sequence[Upload]
    ) -> EvaluateResult:
        """Score the model the organ serves on images and their labels (matched by file name) at the organ's
        default threshold; nothing is stored (stored evaluations: gateway.service.evaluations)."""
        started = time.perf_counter()
        organ = self.registry.get(organ_name)
        cases = labelled_cases(image_files, label_files, self.max_evaluate_images)
        threshold = self.registry.default_threshold(organ.name)
        if organ.spec.volumetric:
            result = self._evaluate_volumes(organ, cases, threshold)
            metrics.observe_latency("evaluate", organ.name, result.model.version, started)
            metrics.observe_evaluation(organ.name, result.model.version, "evaluate", result.mean_dice)
            return result
        scored = score_cases(
            cases,
            lambda image: self._infer(organ, image.data, image.filename)[0],
            lambda case, prob, label: _score_image(case.image.filename, prob, label, threshold),
            max_image_pixels=self.max_image_pixels,
            check_label=lambda label: self._check_upload(label.data, label.filename, what="label"),
        )
        result = _evaluate_result(organ.name, self.registry.model(organ.name), threshold, scored)
        metrics.observe_latency("evaluate", organ.name, result.model.version, started)
        metrics.observe_evaluation(organ.name, result.model.version, "evaluate", result.mean_dice)
        return result

    def _evaluate_volumes(self, organ: Organ, cases: Sequence[Case], threshold: float) -> EvaluateResult:
        """A 3-D organ's evaluation: each NIfTI / DICOM-zip volume through volume3d.infer_3d, its label map at
        every threshold (masks.labels_at) against the label volume on the same grid, Dice / IoU / HD95 (mm)
        per label and their mean (volume3d.score_volume)."""
        model = self.registry.model(organ.name)
        version = model.version if model.version != "unknown" else None
        limits = volumes.StudyLimits(max_bytes=self.max_upload_bytes)
        scored = []
        for case in cases:
            s = volume3d.score_volume(
                self.clients[organ.name], organ.spec, case, threshold, version=version, limits=limits
            )
            score = ImageScore(
                case.image.filename, s.dice, s.iou, s.width, s.height, s.predicted_voxels, s.label_voxels,
                per_label=s.per_label,
            )  # fmt: skip
            scored.append(_ScoredImage(score, s.at))
        per_label = scoring.label_means([s.score.per_label for s in scored])  # as kept evaluations count them
        return replace(_evaluate_result(organ.name, model, threshold, scored), per_label=per_label)

    def close(self) -> None:
        self._probes.shutdown(wait=False, cancel_futures=True)
        self._writers.shutdown(wait=True)
        for client in self.clients.values():
            client.close()


LABEL_SUFFIXES = ("_mask", "_label", "_labels", "_seg", "_gt")


def _pair_key(filename: str, *, label: bool) -> str:
    stem = PurePosixPath(filename.replace("\\", "/")).name
    stem = stem.split(".", 1)[0] if not stem.startswith(".") else stem
    if label:
        for suffix in LABEL_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                return stem[: -len(suffix)]
    return stem


def pair_by_name(
    image_files: Sequence[Upload], label_files: Sequence[Upload], max_images: int
) -> list[tuple[Upload, Upload]]:
    """Match labels to images by file name: `x.png` ↔ `x.png`, `x_mask.png`, `x.tif` (same stem)."""
    if not image_files:
        raise InvalidInput("send at least one image and its label", code="missing_images")
    if len(image_files) > max_images:
        raise InvalidInput(
            f"{len(image_files)} images; at most {max_images} per request",
            code="too_many_images",
            params={"count": len(image_files), "limit": max_images},
        )
    if len(label_files) != len(image_files):
        raise InvalidInput(
            f"{len(image_files)} images but {len(label_files)} labels; send one label per image",
            code="label_count_mismatch",
            params={"images": len(image_files), "labels": len(label_files)},
        )
    by_key: dict[str, Upload] = {}
    for image in image_files:
        key = _pair_key(image.filename, label=False)
        if key in by_key:
            raise InvalidInput(
                f"two images named {key!r}; image file names must be unique",
                code="duplicate_name",
                params={"name": key},
            )
        by_key[key] = image
    labels: dict[str, Upload] = {}
    for label in label_files:
        key = _pair_key(label.filename, label=True)
        if key not in by_key and _pair_key(label.filename, label=False) in by_key:
            key = _pair_key(label.filename, label=False)
        if key in labels:
            raise InvalidInput(f"two labels for image {key!r}", code="duplicate_label", params={"name": key})
        labels[key] = label
    unmatched_images = sorted(set(by_key) - set(labels))
    unmatched_labels = sorted(labels[k].filename for k in set(labels) - set(by_key))
    if unmatched_images or unmatched_labels:
        raise InvalidInput(
            f"labels are matched to images by file name (x.png ↔ x.png or x_mask.png); no label for images "
            f"{unmatched_images}, no image for labels {unmatched_labels}",
            code="label_mismatch",
            params={"images": ", ".join(unmatched_images), "labels": ", ".join(unmatched_labels)},
        )
    return [(image, labels[key]) for key, image in by_key.items()]


def labelled_cases(
    image_files: Sequence[Upload], label_files: Sequence[Upload], max_images: int
) -> list[Case]:
    """`pair_by_name`'s pairs as cases, each named by its image's file stem."""
    pairs = pair_by_name(image_files, label_files, max_images)
    return [Case(_pair_key(image.filename, label=False), image, label) for image, label in pairs]


Scored = TypeVar("Scored")


def score_cases(
    cases: Sequence[Case],
    predict: Callable[[Upload], np.ndarray],
    score: Callable[[Case, np.ndarray, np.ndarray], Scored],
    *,
    max_image_pixels: int,
    check_label: Callable[[Upload], None] | None = None,
) -> list[Scored]:
    """Score labelled images one case at a time: check the label (`check_label`, when given), decode it,
    `predict` the image's probability map (uint8 H×W), check both are the same size, then
    `score(case, probability map, label)`. The first bad case stops the loop with an error naming its file.
    `DataPlane.evaluate` and stored evaluations (gateway.service.evaluations) both run this loop, so they
    accept, refuse and report cases the same way."""
    results = []
    for case in cases:
        image, label_file = case.image, case.label
        if check_label is not None:
            check_label(label_file)
        try:
            label = images.decode_label(label_file.data, label_file.filename, max_pixels=max_image_pixels)
        except InvalidInput as exc:
            raise InvalidInput(
                f"label {label_file.filename!r}: {exc.message}", code=exc.code, params=exc.params
            ) from None
        try:
            prob = predict(image)
        except InvalidInput as exc:
            raise InvalidInput(
                f"image {image.filename!r}: {exc.message}", code=exc.code, params=exc.params
            ) from None
        if label.shape != prob.shape:
            raise InvalidInput(
                f"label {label_file.filename!r} is {label.shape[1]}x{label.shape[0]} but image "
                f"{image.filename!r} is {prob.shape[1]}x{prob.shape[0]}; they must be the same size",
                code="size_mismatch",
                params={"label": label_file.filename, "image": image.filename},
            )
        results.append(score(case, prob, label))
    return results


def _score_image(filename: str, prob: np.ndarray, label: np.ndarray, threshold: float) -> _ScoredImage:
    at = scoring.dice_iou_at(prob, label, {threshold, *THRESHOLDS})  # MONAI, as stored evaluations
    dice, iou = at[threshold]
    predicted = probability_mask(prob, threshold)
    height, width = prob.shape
    score = ImageScore(
        filename,
        dice,
        iou,
        width,
        height,
        int(np.count_nonzero(predicted)),
        int(np.count_nonzero(label)),
    )
    return _ScoredImage(score, at)


def _evaluate_result(
    organ: str, model: ModelInfo, threshold: float, scored: list[_ScoredImage]
) -> EvaluateResult:
    scores = [s.score for s in scored]
    return EvaluateResult(
        organ=organ,
        model=model,
        threshold=threshold,
        images=scores,
        mean_dice=float(np.mean([s.dice for s in scores])),
        mean_iou=float(np.mean([s.iou for s in scores])),
        per_threshold=[
            ThresholdScore(
                t,
                float(np.mean([s.at[t][0] for s in scored])),
                float(np.mean([s.at[t][1] for s in scored])),
            )
            for t in THRESHOLDS
        ],
    )


def check_two_dimensional(organ: Organ) -> None:
    """A 3-D organ segments whole volumes only: a 2-D image for it is a 400 naming where volumes go."""
    if organ.spec.volumetric:
        raise InvalidInput(
            f"organ {organ.name!r} is 3-D: it segments whole volumes, not 2-D images; send the volume "
            "(a NIfTI or a DICOM series) as a study, POST /api/v1/studies",
            code="organ_needs_volume",
            params={"organ": organ.name},
        )


def organ_deadline_s(settings, organ: Organ) -> float:
    """The deadline of one call to the organ's server: MEDSEG_ORGAN_INFERENCE_TIMEOUTS_S's entry for it,
    else its spec's `inference_deadline_s` (services/<organ>/spec.yaml), else Settings.inference_timeout_s."""
    if organ.name in settings.organ_inference_timeouts_s:
        return settings.organ_inference_timeouts_s[organ.name]
    return organ.spec.inference_deadline_s or settings.inference_timeout_s


def build_dataplane(settings) -> DataPlane:
    """The production DataPlane: organs from services/, one InferenceClient each, the S3 store, SQL rows."""
    from common.objectstore import ObjectStore
    from gateway import crud
    from gateway.service.keys import inference_key
    from gateway.service.organ_readiness import local_workers_probe

    registry = OrganRegistry(
        settings.services_dir,
        settings.model_store_dir,
        host=settings.organ_host,
        addresses=settings.organ_addresses,
    )
    clients = {
        organ.name: InferenceClient(
            organ.address,
            key=lambda organ=organ: inference_key(settings, organ.name),
            timeout=organ_deadline_s(settings, organ),
            retries=settings.inference_retries,
            label=f"organ server {organ.name!r}",
            renew_after_s=settings.organ_channel_renew_s or None,
            ca_file=settings.organ_tls_ca_file,
            server_name=settings.organ_tls_server_names.get(organ.name),
        )
        for organ in registry.all()
    }
    return DataPlane(
        registry,
        clients,
        ObjectStore.from_settings(settings),
        results_bucket=settings.bucket_results,
        record_segmentation=crud.record_segmentation,
        max_upload_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_evaluate_images=settings.max_evaluate_images,
        readiness_timeout_s=settings.readiness_timeout_s,
        workers_probe=local_workers_probe(settings, registry),
    )
