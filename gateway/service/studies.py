"""Studies: a DICOM series or a NIfTI volume, segmented as a background job, followed per patient in mL.

    submit (the request: read and check the volume, store the upload once, a queued row; 4xx and nothing
        stored for bad input) → a worker thread claims the row → the organ server segments the volume's
        axial slices in chunks (common.volume_inference) while the row's progress and heartbeat move → the
        8-bit probability volume on the INPUT grid is stored → organ volumes in mL at the seven thresholds
        → done.

Masks (NIfTI) and DICOM SEG at any threshold are derived from the stored probability volume on request:
a study is two writes (the upload and the probabilities), not seven volumes.

Jobs live in the database, not in memory: any gateway's worker claims a queued row, or a running row whose
heartbeat is older than `study_stale_after_s` (its gateway stopped or was restarted), so a restart resumes
the work (from the stored upload) instead of losing it; after `study_max_attempts` claims it fails clearly.
The same code runs in Kubernetes, where every gateway replica has workers. Cancel sets a flag the running
worker reads between chunks; a queued study is failed at once.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidInput, MedSegError, NotFound, PayloadTooLarge
from common.volume_inference import segment_volume
from gateway import metrics, tenancy
from gateway.access import STUDY_CANCEL, STUDY_READ, STUDY_WRITE
from gateway.models import Study, audit
from gateway.principal import Principal
from gateway.service.dataplane import DataPlane, check_patient_id
from gateway.service.jobs import Beat, JobLimits, JobService, JobWorkers, finish_failed
from gateway.service.masks import THRESHOLDS, label_counts, label_map, nearest_threshold, probability_mask
from gateway.service.volume3d import check_fits, infer_3d, modalities
from services import volumes
from services.postprocess3d import organ_box, postprocess_mask

logger = logging.getLogger(__name__)

NOT_FOUND = "study {} not found"
CANCELLED = "cancelled"


class Cancelled(Exception):
    """The study's cancel flag was seen between two chunks."""


def _check_for_organ(organ, volume: volumes.Volume) -> None:
    """The study's modality is one the organ segments; a 3-D organ's volume fits its network (check_fits)."""
    if volume.modality and organ.spec.modality and volume.modality.upper() not in modalities(organ.spec):
        raise InvalidInput(
            f"the series is {volume.modality}; organ {organ.name!r} segments {organ.spec.modality}",
            code="wrong_modality",
        )
    if organ.spec.volumetric:
        check_fits(organ.spec, volume)


def _headers_only(info: volumes.StudyInfo) -> volumes.Volume:
    """A Volume of the study's grid and modality whose voxels are one broadcast zero: what the checks on
    shape, spacing and modality read, without a pixel decoded."""
    return volumes.Volume(
        np.broadcast_to(np.float32(0.0), info.shape), info.affine, info.source, modality=info.modality
    )


def input_error(exc: volumes.StudyInputError) -> MedSegError:
    """The reader's refusal as the platform's error of the same status (400 / 409 / 413 / 415)."""
    kind = {409: Conflict, 413: PayloadTooLarge}.get(exc.status, InvalidInput)
    return kind(str(exc), code=exc.code)


@dataclass(frozen=True)
class Upload:
    """One uploaded file of a study."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class PacsSource:
    """The PACS series a study was fetched from; `store_result`: its DICOM SEG goes back into that study."""

    study_uid: str
    series_uid: str
    store_result: bool


# Stores a study's DICOM SEG (bytes, at a threshold) where the study came from and answers the record of it
# (gateway/service/pacs.py: STOW-RS into the PACS study); raises a MedSegError when it cannot.
SegPublisher = Callable[[Study, bytes, float], dict]


def parse_study_date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"study_date {value!r} is not a date: write it as YYYY-MM-DD", code="invalid_study_date"
        ) from None


class StudyJobs(JobService):
    """The study service of one gateway process: submit, read, derive, cancel, and the worker threads."""

    def __init__(self, dataplane: DataPlane, settings, session_factory: Callable[[], Session] | None = None):
        self.dataplane = dataplane
        self.settings = settings
        self.limits = volumes.StudyLimits(
            max_voxels=settings.study_max_voxels, max_bytes=settings.study_max_bytes
        )
        self.workers = JobWorkers(
            Study,
            lambda: JobLimits(
                self.settings.study_workers, self.settings.study_poll_s, self.settings.study_stale_after_s,
                self.settings.study_max_attempts,
            ),
            self._run,
            self._finish_failed,
            "study",
            session_factory,
        )  # fmt: skip
        # Volumes read by this process's submit, handed to its own worker (no second parse of the upload);
        # a worker of another process (or after a restart) reads the stored upload instead.
        self._fresh: dict[uuid.UUID, volumes.Volume] = {}
        self.publish_seg: SegPublisher | None = None  # set by the Clinic: the PACS's STOW-RS

    # --- sessions, workers: gateway.service.jobs.JobService -----------------------------------------
    def _session(self) -> Session:
        return self.workers.session()

    # --- submit -------------------------------------------------------------------------------------
    def submit(
        self,
        session: Session,
        principal: Principal,
        organ_name: str,
        files: Sequence[Upload],
        patient_id: str | None = None,
        study_date: str | None = None,
        pacs: PacsSource | None = None,
    ) -> Study:
        """Check and store one study, queued; the worker pool takes it from there. `pacs`: the files were
        fetched from the PACS (the row keeps where from, and whether the result goes back)."""
        organ = self.dataplane.registry.get(organ_name)
        if patient_id is not None:
            check_patient_id(patient_id)
        given_date = parse_study_date(study_date)
        if not files:
            raise InvalidInput(
                "no files: send one NIfTI, the DICOM files of one series, or a zip", code="no_files"
            )
        total = sum(len(f.data) for f in files)
        if total > self.settings.study_max_bytes:
            raise PayloadTooLarge(
                f"the study is {total} bytes; the limit is {self.settings.study_max_bytes} bytes",
                code="study_too_large",
            )
        pairs = [(f.filename, f.data) for f in files]
        study_id = uuid.uuid4()
        key, blob, kind = _source_object(f"studies/{organ.name}/{study_id}", files)
        clock = [time.perf_counter()]
        # The upload goes to the object store while it is read and checked (the store's I/O beside the
        # parsing: 0.8 s of a 200-slice CT series); refused, it is removed again and the refusal answered.
        with ThreadPoolExecutor(1, thread_name_prefix="study-source") as pool:
            stored = pool.submit(self._store_source, key, blob, kind)
            try:
                volume = self._read_for_organ(organ, pairs)
            except BaseException:
                if stored.exception() is None:
                    self.dataplane.remove_results([key])
                raise
            clock.append(time.perf_counter())
            stored.result()
        clock.append(time.perf_counter())
        row = Study(
            id=study_id,
            organ=organ.name,
            patient_id=patient_id or volume.patient_id and check_patient_id(volume.patient_id),
            study_date=volume.study_date or given_date,  # a DICOM StudyDate wins
            source=volume.source,
            modality=volume.modality,
            study_uid=volume.series.study_instance_uid if volume.series else None,
            series_uid=volume.series.series_instance_uid if volume.series else None,
            status="queued",
            progress=0.0,
            attempts=0,
            shape=list(volume.canonical_shape(_axcodes(organ.spec))),
            spacing_mm=[round(float(s), 4) for s in volume.canonical_spacing(_axcodes(organ.spec))],
            labels=list(organ.spec.labels),
            volumes_ml={},
            input_key=key,
            source_key=key if volume.source == "dicom" else None,
            size_bytes=len(blob),
            api_key_id=principal.api_key.id if principal.api_key else None,
            user_id=principal.user.id if principal.user else None,
            hospital=principal.hospital,
            pacs_study_uid=pacs.study_uid if pacs else None,
            pacs_series_uid=pacs.series_uid if pacs else None,
            pacs_store_result=bool(pacs and pacs.store_result),
            pacs_segs=[] if pacs else None,
        )
        try:
            session.add(row)
            audit(
                session,
                principal.actor,
                "study.submit",
                str(study_id),
                {"organ": organ.name, "slices": row.shape[0]},
            )
            session.commit()
        except Exception:
            self.dataplane.remove_results([key])
            raise
        clock.append(time.perf_counter())
        self._fresh[study_id] = volume
        self.start()
        self.workers.wake()
        logger.info(
            "study %s queued: %d bytes read in %.2f s, stored %.2f s later, recorded in %.2f s",
            study_id, total, *np.diff(clock),
        )  # fmt: skip
        return row

    def _read_for_organ(self, organ, pairs: list[tuple[str, bytes]]) -> volumes.Volume:
        """The study read and checked against what the organ's network takes (4xx when it does not)."""
        try:
            if organ.spec.volumetric:  # a crop around the organ: refused from the headers, before any pixel
                _check_for_organ(organ, _headers_only(volumes.inspect_study(pairs, limits=self.limits)))
            volume = volumes.read_study(pairs, limits=self.limits)
        except volumes.StudyInputError as exc:
            raise input_error(exc) from None
        _check_for_organ(organ, volume)
        return volume

    def _store_source(self, key: str, blob: bytes, kind: str) -> None:
        self.dataplane._ensure_buckets_once()
        self.dataplane.store.put_bytes(self.dataplane.results_bucket, key, blob, content_type=kind)

    # --- the job --------------------------------------------------------------------------------------
    def _run(self, study_id: uuid.UUID) -> None:
        started = time.perf_counter()
        try:
            self._segment(study_id)
        except Cancelled:
            with self._session() as session:
                self._finish_failed(session, study_id, CANCELLED, "the study was cancelled")
        except volumes.StudyInputError as exc:  # the stored upload no longer reads: not worth retrying
            with self._session() as session:
                self._finish_failed(session, study_id, exc.code, str(exc))
        except MedSegError as exc:
            logger.warning("study %s failed: %s", study_id, exc.message)
            with self._session() as session:
                self._finish_failed(session, study_id, exc.code, exc.message)
        except Exception as exc:
            logger.exception("study %s failed", study_id)
            with self._session() as session:
                self._finish_failed(session, study_id, "internal", f"internal error ({type(exc).__name__})")
        finally:
            self._fresh.pop(study_id, None)
            metrics.observe_latency("study", "-", "-", started)

    def _segment(self, study_id: uuid.UUID) -> None:
        with self._session() as session:
            row = session.get(Study, study_id)
            organ = self.dataplane.registry.get(row.organ)
            input_key, prefix = row.input_key, row.input_key.rsplit("/", 1)[0]
        clock = [time.perf_counter()]  # the phases' ends, logged with the study's end (operators, benchmarks)
        volume = self._fresh.pop(study_id, None) or self._read_stored(input_key)
        axcodes = _axcodes(organ.spec)
        model = self.dataplane.registry.model(organ.name)
        clock.append(time.perf_counter())
        with self.workers.beat(study_id) as beat:
            if organ.spec.volumetric:
                prob, label = self._infer_3d(organ, model, volume, beat)
            else:
                prob, label = self._infer(organ, model, volume.canonical(axcodes), beat), None
        clock.append(time.perf_counter())
        if beat.cancelled(force=True):
            raise Cancelled()
        self._store_result(study_id, volume, organ, model, prob, label, prefix, axcodes)
        clock.append(time.perf_counter())
        read, infer, store = np.diff(clock)
        logger.info(
            "study %s done: %d slices in %.2f s (input %.2f, organ server %.2f, results %.2f)",
            study_id, prob.shape[0], clock[-1] - clock[0], read, infer, store,
        )  # fmt: skip

    def _infer_3d(self, organ, model, volume: volumes.Volume, beat: Beat) -> tuple[np.ndarray, np.ndarray]:
        """A 3-D organ: the whole volume in one request (gateway.service.volume3d)."""
        answer = infer_3d(
            self.dataplane.clients[organ.name],
            organ.spec,
            volume,
            version=model.version if model.version != "unknown" else None,
            timeout=max(60.0, 4 * self.settings.inference_timeout_s),
        )
        beat.progress(1, 1)
        return answer

    def _infer(self, organ, model, canonical: np.ndarray, beat: Beat) -> np.ndarray:
        return segment_volume(
            self.dataplane.clients[organ.name],
            organ.name,
            canonical,
            version=model.version if model.version != "unknown" else None,
            chunk=organ.spec.inference.volume_chunk,
            progress=beat.progress,
            cancelled=beat.cancelled,
            # a chunk may queue behind another study's (and 2-D requests) on a busy server
            timeout=max(60.0, 4 * self.settings.inference_timeout_s),
        )

    def _store_result(
        self, study_id, volume: volumes.Volume, organ, model, prob: np.ndarray, label, prefix, axcodes
    ):
        """Store the foreground probability volume on the input grid (and, for an organ of several labels,
        the label of largest probability beside it, `labels_key`), the mL per label at every threshold, the
        PACS's SEG when asked; then the row is done."""
        # views, not copies: on the input grid they lie in NIfTI's own voxel order (i fastest), which the
        # .nii.gz and the SEG's frames are written in (a C-order copy cost 0.5 s for 200×512², and 0.4 s more
        # to write it back in that order)
        prob_ijk = volume.from_canonical(prob, axcodes)
        label_ijk = None if label is None else volume.from_canonical(label, axcodes)
        key = f"{prefix}/probability.nii.gz"
        written = []
        try:
            for target, array in ((key, prob_ijk), (labels_key(key), label_ijk)):
                if array is not None:
                    blob = volumes.nifti_bytes(volume, array)
                    self.dataplane.store.put_bytes(
                        self.dataplane.results_bucket, target, blob, content_type="application/gzip"
                    )
                    written.append(target)
            per_voxel = volume.voxel_volume_ml
            names, options = organ.spec.labels, organ.spec.postprocess_3d
            volumes_ml = {
                t: {n: round(int(counts[i]) * per_voxel, 2) for i, n in enumerate(names)}
                for t, counts in _voxel_counts(prob, label, len(names), options).items()
            }
            # the SEG goes back to the PACS before the study is done: a refusal fails it, nothing half-kept
            with self.workers.beat(study_id):  # a slow PACS must not make the study look abandoned
                pacs_segs = self._publish_result(study_id, organ.spec, volume, prob_ijk, label_ijk)
        except Exception:
            self.dataplane.remove_results(written)
            raise
        with self._session() as session:
            session.execute(
                update(Study)
                .where(Study.id == study_id, Study.status == "running")
                .values(
                    status="done", progress=1.0, probability_key=key, volumes_ml=volumes_ml,
                    pacs_segs=pacs_segs,
                    model_name=model.name, model_version=model.version, finished_at=datetime.now(UTC),
                    heartbeat_at=datetime.now(UTC), error_code=None, error_message=None,
                )
            )  # fmt: skip
            session.commit()

    def _publish_result(
        self, study_id: uuid.UUID, spec, volume: volumes.Volume, prob_ijk: np.ndarray, label_ijk
    ) -> list | None:
        """The study's SEGs after its result is published: when it came from the PACS with `store_result`, its
        DICOM SEG at the saved (else the default) threshold, stored back there."""
        with self._session() as session:
            row = session.get(Study, study_id)
            if not (row.pacs_store_result and self.publish_seg):
                return row.pacs_segs
            threshold = self.threshold_of(row, None)
            return self._published(row, self._labels(spec, volume, prob_ijk, threshold, label_ijk), threshold)

    def _published(self, row: Study, labels: np.ndarray, threshold: float) -> list:
        """`row.pacs_segs` with one more: the SEG at `threshold`, a new series, stored by `publish_seg`."""
        done = list(row.pacs_segs or [])
        seg = self._seg_bytes(row, labels, threshold, series_index=len(done))
        return [*done, self.publish_seg(row, seg, threshold)]

    def _read_stored(self, key: str) -> volumes.Volume:
        blob = self.dataplane.store.get_bytes(self.dataplane.results_bucket, key)
        return volumes.read_study(_stored_files(key, blob), limits=self.limits)

    @staticmethod
    def _labels(
        spec,
        volume: volumes.Volume,
        prob_ijk: np.ndarray,
        threshold: float,
        label_ijk: np.ndarray | None = None,
    ) -> np.ndarray:
        """uint8 labels on the input grid at `threshold` (masks.labels_at's rule: `label_ijk`, the label of
        largest probability, where the foreground probability `prob_ijk` reaches it), the foreground
        post-processed (spec.postprocess_3d) on the canonical grid, whose first axis is the axial one the
        options work slice by slice on."""
        mask = probability_mask(prob_ijk, threshold)
        if spec.postprocess_3d.enabled:
            axcodes = _axcodes(spec)
            canonical = replace(volume, data=mask.view(np.uint8)).canonical(axcodes) > 0.5
            mask = volume.from_canonical(postprocess_mask(canonical, spec.postprocess_3d), axcodes)
        return label_map(mask, label_ijk)

    def _finish_failed(self, session: Session, study_id, code: str, message: str) -> None:
        finish_failed(session, Study, study_id, code, message)

    # --- reading ----------------------------------------------------------------------------------------
    def get(self, session: Session, principal: Principal, study_id: str) -> Study:
        ident = _study_uuid(study_id)
        return tenancy.get(
            session, principal, STUDY_READ, ident, NotFound(NOT_FOUND.format(study_id), code="unknown_study")
        )

    def list(
        self, session: Session, principal: Principal, patient_id: str | None, organ: str | None, limit: int
    ) -> list[Study]:
        query = select(Study).where(tenancy.where(principal, STUDY_READ))
        if patient_id:
            query = query.where(Study.patient_id == patient_id)
        if organ:
            query = query.where(Study.organ == organ)
        return list(session.scalars(query.order_by(Study.created_at.desc()).limit(limit)))

    def threshold_of(self, row: Study, threshold: float | None) -> float:
        """The threshold asked for (one of the seven: 400 otherwise), else the one saved, else the organ's
        default (the nearest of the seven)."""
        if threshold is not None:
            return grid_threshold(threshold)
        if row.chosen_threshold is not None:
            return float(row.chosen_threshold)
        return nearest_threshold(self.dataplane.registry.default_threshold(row.organ))

    def _done(self, row: Study) -> None:
        if row.status != "done":
            raise Conflict(f"study {row.id} is {row.status}: its result is not there", code="study_not_done")

    def labels_volume(self, row: Study, threshold: float) -> tuple[volumes.Volume, np.ndarray]:
        """(the study's probability volume as read, uint8 labels on the input grid at `threshold`)."""
        self._done(row)
        organ = self.dataplane.registry.get(row.organ)
        blob = self.dataplane.store.get_bytes(self.dataplane.results_bucket, row.probability_key)
        prob = volumes.read_study([("probability.nii.gz", blob)], limits=self.limits)
        label = None
        if len(row.labels) > 1:  # the label of largest probability, stored beside it
            blob = self.dataplane.store.get_bytes(
                self.dataplane.results_bucket, labels_key(row.probability_key)
            )
            label = volumes.read_study([("labels.nii.gz", blob)], limits=self.limits).data.round()
            label = label.astype(np.uint8)
        labels = self._labels(organ.spec, prob, prob.data.round().astype(np.uint8), threshold, label)
        return prob, labels

    def mask_nifti(self, row: Study, threshold: float) -> bytes:
        prob, labels = self.labels_volume(row, threshold)
        return volumes.nifti_bytes(prob, labels)

    def seg_dicom(self, row: Study, threshold: float) -> bytes:
        if row.source != "dicom" or not row.source_key:
            raise Conflict(
                f"study {row.id} came as NIfTI: a DICOM SEG needs the source DICOM series "
                "(ask for mask.nii.gz)",
                code="not_dicom",
            )
        _, labels = self.labels_volume(row, threshold)
        return self._seg_bytes(row, labels, threshold)

    def _seg_bytes(self, row: Study, labels: np.ndarray, threshold: float, series_index: int = 0) -> bytes:
        blob = self.dataplane.store.get_bytes(self.dataplane.results_bucket, row.source_key)
        return volumes.dicom_seg(
            _stored_files(row.source_key, blob),
            labels,
            list(row.labels),
            algorithm=row.model_name or row.organ,
            version=row.model_version or "unknown",
            threshold=threshold,
            series_index=series_index,
            # several labels: the parts of one structure (the spec's `label`), named by SegmentLabel
            structure=self.dataplane.registry.get(row.organ).spec.label if len(row.labels) > 1 else None,
        )

    def image_nifti(self, row: Study) -> bytes:
        """The study's image as NIfTI on its input grid (the viewer's background)."""
        blob = self.dataplane.store.get_bytes(self.dataplane.results_bucket, row.input_key)
        if row.input_key.endswith((".nii", ".nii.gz")):  # a NIfTI as it came (from a zip: read from it)
            return blob
        volume = volumes.read_study(_stored_files(row.input_key, blob), limits=self.limits)
        return volumes.nifti_bytes(volume, _compact(volume.data))

    # --- the doctor's choices -----------------------------------------------------------------------
    def cancel(self, session: Session, principal: Principal, study_id: str) -> Study:
        row = self.get(session, principal, study_id)
        tenancy.check(
            session,
            principal,
            STUDY_CANCEL,
            row,
            "only whoever submitted the study cancels it",
            code="not_your_study",
        )
        if row.status in ("done", "failed"):
            raise Conflict(f"study {study_id} is already {row.status}", code="study_finished")
        row.cancel_requested = True
        if row.status == "queued":
            row.status, row.error_code, row.error_message = "failed", CANCELLED, "the study was cancelled"
            row.finished_at = datetime.now(UTC)
        audit(session, principal.actor, "study.cancel", str(row.id))
        session.commit()
        return row

    def choose_threshold(
        self, session: Session, principal: Principal, study_id: str, threshold: float, note: str | None
    ) -> Study:
        row = self.get(session, principal, study_id)
        tenancy.check(
            session,
            principal,
            STUDY_WRITE,
            row,
            "only the doctor (or the API key) who submitted the study saves its threshold",
            code="not_your_study",
        )
        self._done(row)
        chosen = grid_threshold(threshold)
        stored = {s["threshold"] for s in row.pacs_segs or []}
        if row.pacs_store_result and self.publish_seg and chosen not in stored:
            # a new SEG in the PACS first: when the PACS refuses, the choice is not saved either
            row.pacs_segs = self._published(row, self.labels_volume(row, chosen)[1], chosen)
        row.chosen_threshold = chosen
        row.chosen_note = note
        row.chosen_at = datetime.now(UTC)
        audit(
            session,
            principal.actor,
            "study.choose_threshold",
            str(row.id),
            {"threshold": row.chosen_threshold},
        )
        session.commit()
        return row

    def trend(self, session: Session, principal: Principal, patient_id: str, organ: str | None) -> list[dict]:
        """One point per finished study of the patient: study date (else the upload day), mL per label at the
        saved threshold, else the organ's default."""
        rows = [r for r in self.list(session, principal, patient_id, organ, 500) if r.status == "done"]
        points = []
        for row in rows:
            threshold = self.threshold_of(row, None)
            points.append(
                {
                    "study_id": str(row.id),
                    "study_date": row.study_date or row.created_at.date(),
                    "date_from": "study" if row.study_date else "upload",
                    "organ": row.organ,
                    "model_version": row.model_version,
                    "threshold": threshold,
                    "chosen": row.chosen_threshold is not None,
                    "volumes_ml": row.volumes_ml.get(f"{threshold:.1f}", {}),
                }
            )
        return sorted(points, key=lambda p: (p["study_date"], p["study_id"]))


def _axcodes(spec) -> tuple[str, str, str]:
    return tuple(getattr(spec, "volume_axcodes", None) or ("L", "A", "S"))


def _voxel_counts(prob: np.ndarray, label, n_labels: int, options) -> dict[str, np.ndarray]:
    """Voxels per label at every threshold on the canonical grid (where the post-processing's slices are
    axial): counted from the probabilities when no post-processing is on (masks.label_counts), else each
    threshold's mask post-processed and counted."""
    if not options.enabled:
        return label_counts(prob, label, n_labels)
    # the masks are nested (a voxel in the mask at 0.3 is in it at 0.2), so every one lies within the lowest
    # threshold's box: the post-processing and the counting work on that crop (a liver is ~1/3 of a CT slice)
    box = organ_box(probability_mask(prob, THRESHOLDS[0]))
    if box is None:
        return label_counts(prob, label, n_labels)  # nothing at any threshold
    prob = prob[box]
    label = None if label is None else label[box]

    def count(t: float) -> np.ndarray:
        mask = postprocess_mask(probability_mask(prob, t), options)
        if label is None:  # one label: its voxels, counted without the int64 copy np.bincount makes
            return np.array([np.count_nonzero(mask)])
        return np.bincount(label_map(mask, label).ravel(), minlength=n_labels + 1)[1:]

    # two threads: scipy's labelling lets go of the GIL for part of its work (the seven thresholds of a
    # 200-slice liver study: 1.58 s one after the other, 0.96 s on two threads)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="postprocess") as pool:
        return {f"{t:.1f}": n for t, n in zip(THRESHOLDS, pool.map(count, THRESHOLDS), strict=True)}


def labels_key(probability_key: str) -> str:
    """Where an organ of several labels keeps the label of largest probability beside the study's
    probability volume."""
    return probability_key.rsplit("/", 1)[0] + "/labels.nii.gz"


def _study_uuid(study_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(study_id))
    except ValueError:
        raise NotFound(NOT_FOUND.format(study_id), code="unknown_study") from None


def grid_threshold(value: float) -> float:
    """`value` as one of the seven thresholds (0.2 … 0.8 in steps of 0.1), as a segmentation's mask and
    choice take them (gateway/service/history.py); anything else (0.55, 0.9, NaN) is a 400 naming them."""
    nearest = nearest_threshold(float(value))
    if not abs(float(value) - nearest) <= 1e-9:  # written so that NaN fails too
        raise InvalidInput(
            f"threshold must be one of {', '.join(f'{t:.1f}' for t in THRESHOLDS)}, not {value}",
            code="invalid_threshold",
        )
    return nearest


def _compact(data: np.ndarray) -> np.ndarray:
    """int16 when every value is a whole number within its range (CT in HU), else float32."""
    if data.size and np.all(np.isfinite(data)):
        low, high = float(data.min()), float(data.max())
        if -32768 <= low and high <= 32767 and np.array_equal(data, np.round(data)):
            return data.astype(np.int16)
    return data.astype(np.float32)


def _source_object(prefix: str, files: Sequence[Upload]) -> tuple[str, bytes, str]:
    """The upload as stored once, as it came: one NIfTI or one zip as it is; DICOM files in one zip."""
    if len(files) == 1:
        data = files[0].data
        if zipfile.is_zipfile(io.BytesIO(data)):
            return f"{prefix}/source.zip", data, "application/zip"
        if volumes.is_nifti(data):
            if data[:2] == b"\x1f\x8b":
                return f"{prefix}/source.nii.gz", data, "application/gzip"
            return f"{prefix}/source.nii", data, "application/octet-stream"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for n, upload in enumerate(files):
            archive.writestr(f"{n:05d}.dcm", upload.data)
    return f"{prefix}/source.zip", buffer.getvalue(), "application/zip"


def _stored_files(key: str, blob: bytes) -> list[tuple[str, bytes]]:
    return [(key.rsplit("/", 1)[-1], blob)]
