"""Evaluations as background jobs: 202 at once, then poll, instead of a request held open for every case.

    submit (the request: the organ, the version, the dataset or the uploads' pairing and headers checked; a
        4xx and nothing stored for bad input; the uploaded cases stored as one zip; a queued row) → a worker
        claims the row (gateway.service.jobs: any gateway's worker, taken up again when its gateway stops)
        → each case segmented and scored (gateway.service.evaluations.Evaluator.score) while the row's
        cases_done and heartbeat move → the Evaluation, its cases and the job marked done in one commit →
        the uploaded zip removed.

A case that the organ server refuses, or an organ server that is down, fails the job with the code and
message the request would have answered; nothing half-made is kept (no Evaluation, no overlay).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidInput, MedSegError, NotFound
from gateway import metrics, tenancy
from gateway.access import EVALUATION_JOB_CANCEL, EVALUATION_JOB_READ
from gateway.core.db import commit
from gateway.models import ApiKey, Dataset, Evaluation, EvaluationJob, ModelVersion, User, audit
from gateway.principal import Principal
from gateway.service import images, volume3d
from gateway.service.dataplane import Case, Upload
from gateway.service.evaluations import Evaluator, check_dataset_organ
from gateway.service.jobs import JobLimits, JobService, JobWorkers, finish_failed
from services import volumes

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"
MANIFEST = "cases.json"


class Cancelled(Exception):
    """The job's cancel flag was seen between two cases."""


class EvaluationJobs(JobService):
    """Submit, read and cancel evaluation jobs, and the worker threads that run them."""

    def __init__(self, evaluator: Evaluator, settings, session_factory: Callable[[], Session] | None = None):
        self.evaluator = evaluator
        self.settings = settings
        self.workers = JobWorkers(
            EvaluationJob,
            lambda: JobLimits(
                self.settings.evaluation_workers, self.settings.study_poll_s,
                self.settings.study_stale_after_s, self.settings.study_max_attempts,
            ),
            self._run,
            self._finish_failed,
            "evaluation",
            session_factory,
        )  # fmt: skip

    # --- submit -------------------------------------------------------------------------------------
    def submit(
        self,
        session: Session,
        principal: Principal,
        organ: str,
        version: str | None,
        dataset: Dataset | None,
        image_files: Sequence[Upload],
        label_files: Sequence[Upload],
    ) -> EvaluationJob:
        """Check what can be checked now (a 4xx, nothing stored), store the uploaded cases, queue the job."""
        evaluator = self.evaluator
        target = evaluator.target(session, organ, version)
        served = evaluator.dataplane.registry.get(target.organ)
        job_id = uuid.uuid4()
        input_key = None
        if dataset is not None:
            check_dataset_organ(served)
            case_count = self._check_dataset(dataset, target.organ)
        else:
            cases = evaluator.upload_cases(image_files, label_files)
            if not cases:
                raise InvalidInput("nothing to evaluate: no image/label pairs", code="missing_images")
            if served.spec.volumetric:
                self._check_volumes(served.spec, cases)
            else:
                self._check_headers(cases)
            case_count = len(cases)
            input_key = f"evaluation-jobs/{job_id}/cases.zip"
            dp = evaluator.dataplane
            dp.store.ensure_buckets()
            dp.store.put_bytes(dp.results_bucket, input_key, _pack(cases), content_type="application/zip")
        row = EvaluationJob(
            id=job_id,
            organ=target.organ,
            model_version=target.version,
            dataset_id=dataset.id if dataset is not None else None,
            input_key=input_key,
            case_count=case_count,
            created_by=principal.actor,
            user_id=principal.user.id if principal.user else None,
            api_key_id=principal.api_key.id if principal.api_key else None,
            hospital=principal.hospital,
        )
        try:
            session.add(row)
            audit(
                session, principal.actor, "evaluation.submit", f"evaluation-job:{job_id}",
                {"organ": target.organ, "version": target.version, "cases": case_count},
            )  # fmt: skip
            commit(session)
        except BaseException:
            session.rollback()
            if input_key:
                self.evaluator.dataplane.remove_results([input_key])
            raise
        self.start()  # workers start with the gateway, or at the first job
        self.workers.wake()
        return row

    def _check_dataset(self, dataset: Dataset, organ: str) -> int:
        if dataset.status != "ready" or dataset.deleted_at is not None:
            raise NotFound(f"no dataset {dataset.id!r}", code="unknown_dataset", params={"id": dataset.id})
        if dataset.organ != organ:
            raise InvalidInput(
                f"dataset {dataset.id} is a {dataset.organ} dataset, not {organ}",
                code="wrong_organ",
                params={"dataset_organ": dataset.organ, "organ": organ},
            )
        limit = self.evaluator.max_dataset_cases
        if dataset.pair_count > limit:
            raise InvalidInput(
                f"dataset {dataset.id} has {dataset.pair_count} pairs; at most {limit} are evaluated at once",
                code="too_many_images",
                params={"count": dataset.pair_count, "limit": limit},
            )
        return dataset.pair_count

    def _check_headers(self, cases: Sequence[Case]) -> None:
        """Every image and label reads as an image of acceptable size, from its header (no pixel decoded):
        what is plainly unusable is refused now rather than failing the job later."""
        dp = self.evaluator.dataplane
        for case in cases:
            for upload in (case.image, case.label):
                if len(upload.data) > dp.max_upload_bytes:
                    raise InvalidInput(
                        f"{upload.filename} is larger than {dp.max_upload_bytes} bytes",
                        code="file_too_large",
                        params={"name": upload.filename, "limit": dp.max_upload_bytes},
                    )
                images.inspect(upload.data, upload.filename, max_pixels=dp.max_image_pixels)

    def _check_volumes(self, spec, cases: Sequence[Case]) -> None:
        """A 3-D organ's cases read and checked as the job will (volume3d.read_case: volumes, the label on the
        image's grid, its values the spec's labels, the size the network takes), one at a time: volumes are
        small crops, and a bad one is refused now rather than failing the job later."""
        limits = volumes.StudyLimits(max_bytes=self.evaluator.dataplane.max_upload_bytes)
        for case in cases:
            volume3d.read_case(spec, case, limits)

    # --- the worker ---------------------------------------------------------------------------------
    def _run(self, job_id: uuid.UUID) -> None:
        started = time.perf_counter()
        try:
            self._evaluate(job_id)
        except Cancelled:
            self._end_failed(job_id, CANCELLED, "the evaluation was cancelled")
        except MedSegError as exc:
            logger.warning("evaluation job %s failed: %s", job_id, exc.message)
            self._end_failed(job_id, exc.code, exc.message)
        except Exception as exc:
            logger.exception("evaluation job %s failed", job_id)
            self._end_failed(job_id, "internal", f"internal error ({type(exc).__name__})")
        finally:
            metrics.observe_latency("evaluation_job", "-", "-", started)

    def _evaluate(self, job_id: uuid.UUID) -> None:
        evaluator = self.evaluator
        with self.workers.session() as session:
            job = session.get(EvaluationJob, job_id)
            target = self._target(session, job)
            principal = _principal(session, job)
            dataset = None
            if job.dataset_id:
                dataset, cases = evaluator.dataset_cases(session, job.dataset_id)
            else:
                cases = self._read_cases(job.input_key)
            input_key = job.input_key
        with self.workers.beat(job_id) as beat:

            def step(done: int, total: int) -> None:
                beat.progress(done, total, cases_done=done)
                if beat.cancelled():
                    raise Cancelled()

            scored = evaluator.score(target, cases, step)
        if beat.cancelled(force=True):
            raise Cancelled()

        def mark_done(session: Session, evaluation: Evaluation) -> None:
            session.execute(
                update(EvaluationJob)
                .where(EvaluationJob.id == job_id)
                .values(
                    status="done", progress=1.0, cases_done=len(scored), evaluation_id=evaluation.id,
                    finished_at=datetime.now(UTC), input_key=None,
                )
            )  # fmt: skip

        started = time.perf_counter()
        with self.workers.session() as session:
            evaluation = evaluator.store(
                session, principal, target, scored, purpose="test", dataset=dataset, before_commit=mark_done
            )
            mean_dice = evaluation.mean_dice
        metrics.observe_latency("evaluation", target.organ, target.version, started)
        metrics.observe_evaluation(target.organ, target.version, "test", mean_dice)
        if input_key:
            self.evaluator.dataplane.remove_results([input_key])
        logger.info("evaluation job %s done: %d cases, evaluation %s", job_id, len(scored), evaluation.id)

    def _target(self, session: Session, job: EvaluationJob):
        """The version the job was submitted for; for an organ with no recorded version (its server's model,
        "unknown" in the registry) what the organ serves, as the submit resolved it."""
        recorded = session.scalar(
            select(ModelVersion.id).where(
                ModelVersion.organ == job.organ, ModelVersion.version == job.model_version
            )
        )
        return self.evaluator.target(session, job.organ, job.model_version if recorded else None)

    def _read_cases(self, key: str) -> list[Case]:
        dp = self.evaluator.dataplane
        with zipfile.ZipFile(io.BytesIO(dp.store.get_bytes(dp.results_bucket, key))) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            return [
                Case(
                    entry["name"],
                    Upload(entry["image"], archive.read(f"{n:04d}/image")),
                    Upload(entry["label"], archive.read(f"{n:04d}/label")),
                )
                for n, entry in enumerate(manifest)
            ]

    def _end_failed(self, job_id: uuid.UUID, code: str, message: str) -> None:
        with self.workers.session() as session:
            self._finish_failed(session, job_id, code, message)

    def _finish_failed(self, session: Session, job_id, code: str, message: str) -> None:
        """The job failed (also when its claims ran out): recorded, and its uploaded cases removed with the
        row's reference to them."""
        key = session.scalar(select(EvaluationJob.input_key).where(EvaluationJob.id == job_id))
        session.execute(update(EvaluationJob).where(EvaluationJob.id == job_id).values(input_key=None))
        finish_failed(session, EvaluationJob, job_id, code, message)
        if key:
            self.evaluator.dataplane.remove_results([key])

    # --- reading, cancelling ------------------------------------------------------------------------
    def get(self, session: Session, principal: Principal, job_id: str) -> EvaluationJob:
        missing = NotFound(f"no evaluation job {job_id!r}", code="unknown_evaluation_job")
        try:
            key = uuid.UUID(str(job_id))
        except ValueError:
            raise missing from None
        return tenancy.get(session, principal, EVALUATION_JOB_READ, key, missing)

    def cancel(self, session: Session, principal: Principal, job_id: str) -> EvaluationJob:
        row = self.get(session, principal, job_id)
        tenancy.check(
            session, principal, EVALUATION_JOB_CANCEL, row,
            "only whoever submitted the evaluation cancels it", code="not_your_evaluation",
        )  # fmt: skip
        if row.status in ("done", "failed"):
            raise Conflict(f"evaluation job {job_id} is already {row.status}", code="evaluation_finished")
        row.cancel_requested = True
        input_key = None
        if row.status == "queued":
            row.status, row.finished_at = "failed", datetime.now(UTC)
            row.error_code, row.error_message = CANCELLED, "the evaluation was cancelled"
            input_key, row.input_key = row.input_key, None
        audit(session, principal.actor, "evaluation.cancel", f"evaluation-job:{row.id}")
        session.commit()
        if input_key:
            self.evaluator.dataplane.remove_results([input_key])
        return row


def _pack(cases: Sequence[Case]) -> bytes:
    """The uploaded cases as one zip: a manifest of names and file names, and each file as it came."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # images are compressed already
        manifest = []
        for n, case in enumerate(cases):
            archive.writestr(f"{n:04d}/image", case.image.data)
            archive.writestr(f"{n:04d}/label", case.label.data)
            manifest.append({"name": case.name, "image": case.image.filename, "label": case.label.filename})
        archive.writestr(MANIFEST, json.dumps(manifest))
    return buffer.getvalue()


def _principal(session: Session, job: EvaluationJob) -> Principal:
    """Who submitted the job, as the Evaluation records its maker."""
    user = session.get(User, job.user_id) if job.user_id is not None else None
    key = session.get(ApiKey, job.api_key_id) if job.api_key_id is not None else None
    if user is None and key is None:
        raise Conflict(
            "the account or key that submitted this evaluation no longer exists", code="submitter_gone"
        )
    return Principal(user=user, api_key=key)
