"""Training jobs: the gateway runs the trainer once per job, where a *launcher* says.

    python -m common.cli train --organ liver --dataset <id> --run-dir <state>/runs/<job id> --out …

* Launchers (`TrainerLauncher`): `LocalProcessLauncher` runs the trainer as a separate local worker process
  (the default); `gateway.service.kubernetes_jobs.KubernetesLauncher` (MEDSEG_TRAINING_LAUNCHER=kubernetes)
  runs it as a batch/v1 Job copied from the cluster's trainer CronJob template. A launcher starts the
  trainer, says whether it has ended (`poll`), stops it (`cancel`), reads its progress and its log, and
  decides what happens to jobs a previous gateway left running.
* One `TrainingJob` row per job: queued → running → succeeded | failed | cancelled.
* The local worker runs in its own process group (so a cancel stops it and any child it started) and writes
  its output to `<run dir>/worker.log`; the trainer writes `metrics.json` after every epoch, which is the
  job's progress (epoch, training loss, validation Dice) while it runs.
* When the trainer ends, the gateway finishes the job (`reconcile`): every read and start reconciles, and
  so does the gateway's own watcher (`watch`, a background thread started by `medseg serve`) every
  WATCH_INTERVAL_S, so an outcome is recorded even when nobody reads the training API, long before a
  Kubernetes Job's TTL (ttlSecondsAfterFinished, 24 h) deletes the Job. Success → the packaged .mar is in
  the models bucket (uploaded here from the local run dir, or by the trainer itself in a Job) and is
  recorded as a *candidate* (`model_registry.record_version`), registered with the organ's TorchServe, not
  as its default (the model event `registered` or `not_registered` says which); otherwise the job failed,
  with the reason (exit code, or the Job's condition and container state) and the tail of its log.
* At gateway start, jobs still marked running belong to a gateway that is gone: a local worker is stopped
  when it is still recognisably theirs and the job is failed (`mark_interrupted`); a Kubernetes Job runs on
  in the cluster, so its job is kept and followed by the new gateway.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidInput, MedSegError, NotFound, TooManyRequests
from common.model_store import register_version, store_keys, upload_version
from common.settings import REPO_ROOT
from gateway import metrics, tenancy
from gateway.access import DATASET_READ
from gateway.models import Dataset, ModelEvent, ModelVersion, TrainingJob, audit
from gateway.principal import Principal
from gateway.service import model_registry
from gateway.service.kubernetes_jobs import KubernetesLauncher
from gateway.service.trainer_launch import LOG_TAIL_CHARS, JobRequest, TrainerExit, trainer_args
from services.architectures import ARCHITECTURES

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("succeeded", "failed", "cancelled")
STATES = ACTIVE + FINISHED
LOG_NAME = "worker.log"
KILL_GRACE_S = 5.0
WATCH_INTERVAL_S = 30.0  # the watcher's period: far below the Job TTL (k8s/base/trainer/cronjob.yaml)

# argv, env, cwd, log file → a started process (tests substitute a cheap one).
Spawn = Callable[..., subprocess.Popen]


def _now() -> datetime:
    return datetime.now(UTC)


def spawn_worker(argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """Start the worker in a new session (own process group), stdout and stderr into `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def progress_from_metrics(metrics: dict | None) -> dict | None:
    """The trainer's metrics.json → {"epochs": [{epoch, loss, val_dice}], "best_val_dice"}."""
    if not isinstance(metrics, dict):
        return None
    epochs = [
        {"epoch": h.get("epoch"), "loss": h.get("train_loss"), "val_dice": h.get("val_dice")}
        for h in metrics.get("history", [])
    ]
    best = metrics.get("best_val_dice")
    return {"epochs": epochs, "best_val_dice": best if epochs else None}


class TrainerLauncher(Protocol):
    """Where a job's trainer runs. Every method gets the job's row; none of them commits."""

    uploads_model: bool  # the trainer uploads and registers its .mar itself (else the gateway does)

    def start(self, job: TrainingJob, request: JobRequest) -> int | None:
        """Start the trainer; the local process id, or None. Raises OSError / MedSegError when it cannot."""

    def poll(self, job: TrainingJob) -> TrainerExit | None:
        """None while the trainer runs (or when it is not this launcher's to follow); else how it ended."""

    def cancel(self, job: TrainingJob) -> dict:
        """Stop the trainer; what was stopped, for the audit log."""

    def interrupted(self, job: TrainingJob) -> str | None:
        """At gateway start, for a job a previous gateway left active: None to keep following it, else the
        reason it is failed (its trainer was stopped)."""

    def metrics(self, job: TrainingJob) -> dict | None:
        """The trainer's metrics.json as far as it got, or None."""

    def log_tail(self, job: TrainingJob, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the trainer's output."""

    def stop_all(self) -> None:
        """Stop whatever this launcher started and still runs (tests; a gateway that must not leave it)."""

    def held(self) -> set[uuid.UUID]:
        """Jobs whose trainer is a child of this process (to be polled, i.e. reaped, whatever their state)."""


class LocalProcessLauncher:
    """A worker process per job on this machine, in its own process group, output in <run dir>/worker.log."""

    uploads_model = False

    def __init__(self, jobs: TrainingJobs, spawn: Spawn = spawn_worker):
        self.jobs = jobs
        self.spawn = spawn
        self._workers: dict[uuid.UUID, subprocess.Popen] = {}

    def command(self, job: TrainingJob, request: JobRequest) -> list[str]:
        run_dir = self.jobs.run_dir(job)
        argv = [sys.executable, "-m", "common.cli"]
        argv += trainer_args(job, request, run_dir=str(run_dir), out=str(run_dir / "package"))
        if self.jobs.threads:
            argv += ["--threads", str(self.jobs.threads)]
        return argv

    def worker_env(self) -> dict[str, str]:
        """The worker uses this gateway's object store and state dir (its Settings are read from env)."""
        s = self.jobs.settings
        env = dict(os.environ)
        env.update(
            MEDSEG_STATE_DIR=str(s.state_dir),
            MEDSEG_SERVICES_DIR=str(s.services_dir),
            MEDSEG_MODEL_STORE_DIR=str(s.model_store_dir),
            MEDSEG_S3_ENDPOINT=s.s3_endpoint,
            MEDSEG_S3_ACCESS_KEY=s.s3_access_key,
            MEDSEG_S3_SECRET_KEY=s.s3_secret_key,
            MEDSEG_S3_SECURE=str(s.s3_secure).lower(),
            MEDSEG_BUCKET_DATASETS=s.bucket_datasets,
            MEDSEG_BUCKET_MODELS=s.bucket_models,
            MEDSEG_BUCKET_RUNS=s.bucket_runs,
            MEDSEG_BUCKET_RESULTS=s.bucket_results,
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, job: TrainingJob, request: JobRequest) -> int | None:
        run_dir = self.jobs.run_dir(job)
        argv = self.command(job, request)
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / LOG_NAME
        log_path.write_text(f"$ {' '.join(argv)}\n")
        worker = self.spawn(argv, env=self.worker_env(), cwd=REPO_ROOT, log_path=log_path)
        self._workers[job.id] = worker
        logger.info("training job %s: worker pid %s, %s", job.id, worker.pid, " ".join(argv[3:]))
        return worker.pid

    def poll(self, job: TrainingJob) -> TrainerExit | None:
        worker = self._workers.get(job.id)
        code = worker.poll() if worker is not None else None
        if code is None:
            return None
        del self._workers[job.id]
        if code == 0:
            return TrainerExit(True)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return TrainerExit(False, f"the trainer {how}")

    def cancel(self, job: TrainingJob) -> dict:
        stopped = self._stop_worker(job)
        self._workers.pop(job.id, None)
        return {"stopped_pid": stopped}

    def interrupted(self, job: TrainingJob) -> str | None:
        if job.id in self._workers:  # started by this very process: not interrupted
            return None
        stopped = self._stop_worker(job)
        return (
            f"the gateway restarted while this job was {job.state}"
            + (f"; its worker (pid {stopped}) was stopped" if stopped else "")
            + "; start the job again"
        )

    def metrics(self, job: TrainingJob) -> dict | None:
        try:
            return json.loads((self.jobs.run_dir(job) / "metrics.json").read_text())
        except (OSError, ValueError):  # not written yet, or caught mid-write: the next read will see it
            return None

    def log_tail(self, job: TrainingJob, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            with open(self.jobs.run_dir(job) / LOG_NAME, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - chars))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _stop_worker(self, job: TrainingJob) -> int | None:
        """Stop exactly the job's process group (SIGTERM, then SIGKILL); the pid it had, or None."""
        worker = self._workers.get(job.id)
        pid = worker.pid if worker is not None else self._orphan_pid(job)
        if pid is None:
            return None
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return None
        if worker is not None:
            try:
                worker.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                worker.wait()
            return pid
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline and self._orphan_pid(job) is not None:
            time.sleep(0.1)
        if self._orphan_pid(job) is not None:
            os.killpg(pid, signal.SIGKILL)
        return pid

    def _orphan_pid(self, job: TrainingJob) -> int | None:
        """The recorded pid if it still leads its own process group and runs this job's worker (a pid can
        be reused by another program after the worker is gone: then it is not ours to stop)."""
        if not job.pid:
            return None
        try:
            cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{job.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[0] == "Z":  # exited, not yet reaped by its parent
            return None
        group = int(fields[2]) if len(fields) > 2 and re.fullmatch(r"\d+", fields[2]) else None
        if group != job.pid or str(self.jobs.run_dir(job)).encode() not in cmdline:
            return None
        return job.pid

    def held(self) -> set[uuid.UUID]:
        return set(self._workers)

    def stop_all(self) -> None:
        for job_id, worker in list(self._workers.items()):
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            worker.wait()
            del self._workers[job_id]


def build_launcher(settings, jobs: TrainingJobs) -> TrainerLauncher:
    """The launcher `Settings.training_launcher` names."""
    if settings.training_launcher == "kubernetes":
        return KubernetesLauncher.from_settings(settings, jobs.store)
    return LocalProcessLauncher(jobs)


class TrainingJobs:
    """Starts, follows and cancels training jobs through a launcher; records their outcome."""

    def __init__(self, settings, store, *, management=None, launcher: TrainerLauncher | None = None):
        self.settings = settings
        self.store = store
        # organ → a ManagementClient (context manager) of its TorchServe; None: candidates are only stored
        self.management = management
        # (session, organ) after a candidate was recorded: Promotions.serve_candidates (set by Clinic)
        self.on_candidate: Callable[[Session, str], None] | None = None
        self.max_running = settings.max_running_training_jobs
        self.runs_dir = Path(settings.state_dir) / "runs"
        self.threads: int | None = None  # torch threads per local worker (None: the trainer's default)
        self.launcher = launcher or build_launcher(settings, self)
        self._lock = threading.RLock()  # one finisher per job, even with concurrent requests
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()

    def run_dir(self, job: TrainingJob) -> Path:
        return self.runs_dir / str(job.id)

    # --- reading ------------------------------------------------------------------------------------------
    def recent(self, session: Session, limit: int = 50) -> list[TrainingJob]:
        self.reconcile(session)
        return list(session.scalars(select(TrainingJob).order_by(TrainingJob.created_at.desc()).limit(limit)))

    def get(self, session: Session, job_id: uuid.UUID) -> TrainingJob:
        self.reconcile(session)
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise NotFound(f"no training job {job_id}", code="unknown_job")
        return job

    def progress(self, job: TrainingJob) -> dict:
        """{"epochs": [{epoch, loss, val_dice}], "best_val_dice"}: live from the trainer while the job runs,
        as recorded when it finished afterwards."""
        if job.state in FINISHED and job.progress:
            return job.progress
        return self._read_progress(job) or job.progress or {"epochs": [], "best_val_dice": None}

    def _read_progress(self, job: TrainingJob) -> dict | None:
        try:
            return progress_from_metrics(self.launcher.metrics(job))
        except MedSegError as exc:  # progress is a view: an unreachable source shows the last one recorded
            logger.warning("training job %s: progress unavailable: %s", job.id, exc.message)
            return None

    def log_tail(self, job: TrainingJob, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            text = self.launcher.log_tail(job, chars)
        except MedSegError as exc:
            return f"(no log: {exc.message})"
        # tqdm redraws lines with carriage returns; keep what a reader would see last on each line
        lines = [line.rsplit("\r", 1)[-1] for line in text[-chars:].splitlines()]
        return "\n".join(line for line in lines if line.strip()).strip()

    def publish_states(self, session: Session) -> None:
        """Jobs by state → the `medseg_training_jobs` gauge (after every change this process makes)."""
        rows = session.execute(select(TrainingJob.state, func.count()).group_by(TrainingJob.state)).all()
        metrics.set_training_jobs({state: n for state, n in rows}, STATES)

    # --- starting -----------------------------------------------------------------------------------------
    def start(self, session: Session, principal: Principal, request: JobRequest) -> TrainingJob:
        dataset = self._checked_request(session, principal, request)
        # under the lock: reconcile finishes jobs, and two starts must not both take the last free slot
        with self._lock:
            self.reconcile(session)
            self._refuse_when_full(session)
            job = self._queue_job(session, principal, request, dataset)
            self._launch(session, job, request)
        return job

    def _refuse_when_full(self, session: Session) -> None:
        running = session.scalars(select(TrainingJob).where(TrainingJob.state.in_(ACTIVE))).all()
        if len(running) >= self.max_running:
            raise TooManyRequests(
                f"{len(running)} training job(s) running (at most {self.max_running} at once: "
                "MEDSEG_MAX_RUNNING_TRAINING_JOBS); wait for one to finish or cancel one "
                f"({', '.join(str(j.id) for j in running)})",
                code="too_many_training_jobs",
                params={"running": len(running), "limit": self.max_running},
            )

    @staticmethod
    def _checked_request(session: Session, principal: Principal, request: JobRequest) -> Dataset:
        """The dataset to train on: a known architecture and a ready dataset of the request's organ that the
        caller sees."""
        if request.arch not in ARCHITECTURES:
            raise InvalidInput(
                f"unknown architecture {request.arch!r}; valid: {', '.join(sorted(ARCHITECTURES))}",
                code="unknown_arch",
                params={"arch": request.arch},
            )
        missing = NotFound(
            f"no dataset {request.dataset_id!r}", code="unknown_dataset", params={"id": request.dataset_id}
        )
        dataset = tenancy.get(session, principal, DATASET_READ, request.dataset_id, missing)  # one it sees
        if dataset.status != "ready" or dataset.deleted_at is not None:
            raise missing
        if dataset.organ != request.organ:
            raise InvalidInput(
                f"dataset {dataset.id} is a {dataset.organ} dataset, not {request.organ}",
                code="wrong_organ",
                params={"dataset_organ": dataset.organ, "organ": request.organ},
            )
        return dataset

    @staticmethod
    def _queue_job(
        session: Session, principal: Principal, request: JobRequest, dataset: Dataset
    ) -> TrainingJob:
        """Record the queued job and its audit entry (committed before the trainer is launched)."""
        job_id = uuid.uuid4()
        job = TrainingJob(
            id=job_id,
            organ=request.organ,
            dataset_id=dataset.id,
            arch=request.arch,
            budget_minutes=request.minutes,
            epochs=request.epochs,
            state="queued",
            progress={"epochs": [], "best_val_dice": None},
            version=f"{_now():%Y%m%d.%H%M%S}-{job_id.hex[:6]}",
            created_by=principal.actor,
            user_id=principal.user.id if principal.user is not None else None,
        )
        session.add(job)
        audit(
            session, principal.actor, "training.start", f"training:{job_id}",
            {"organ": job.organ, "dataset": job.dataset_id, "arch": job.arch, "minutes": request.minutes,
             "epochs": request.epochs, "widths": list(request.widths or ()), "limit": request.limit},
        )  # fmt: skip
        session.commit()
        return job

    def _launch(self, session: Session, job: TrainingJob, request: JobRequest) -> None:
        try:
            pid = self.launcher.start(job, request)
        except (OSError, MedSegError) as exc:
            reason = exc.message if isinstance(exc, MedSegError) else str(exc)
            job.state, job.finished_at = "failed", _now()
            job.error = f"the trainer could not be started: {reason}"
            session.commit()
            self.publish_states(session)
            logger.warning("training job %s: %s", job.id, job.error)
            return
        job.state, job.pid, job.started_at = "running", pid, _now()
        session.commit()
        self.publish_states(session)

    # --- finishing ----------------------------------------------------------------------------------------
    def reconcile(self, session: Session) -> None:
        """Finish the jobs whose trainer has ended."""
        with self._lock:
            started = ("running", "cancelling")  # a queued job has no trainer yet
            jobs = {
                j.id: j for j in session.scalars(select(TrainingJob).where(TrainingJob.state.in_(started)))
            }
            for job_id in self.launcher.held() - set(
                jobs
            ):  # settled elsewhere: its process still needs reaping
                if (job := session.get(TrainingJob, job_id)) is not None:
                    jobs[job_id] = job
            for job in jobs.values():
                ended = self.launcher.poll(job)
                if ended is not None and job.state in started:
                    self._finish(session, job, ended)

    def _finish(self, session: Session, job: TrainingJob, ended: TrainerExit) -> None:
        job.progress = self._read_progress(job) or job.progress
        job.pid, job.finished_at = None, _now()
        session.commit()
        if not ended.ok:
            tail = self.log_tail(job)
            job.state, job.error = "failed", ended.reason + (f":\n{tail}" if tail else "")
            session.commit()
            self.publish_states(session)
            logger.warning("training job %s failed: %s", job.id, ended.reason)
            return
        try:
            version = self._record_candidate(session, job)
        except MedSegError as exc:
            session.rollback()
            job = session.get(TrainingJob, job.id)
            if job.state in FINISHED:  # another gateway (replica) finished it meanwhile
                return
            job.state, job.error = "failed", f"training finished but the candidate was not recorded: {exc}"
            session.commit()
            self.publish_states(session)
            logger.warning("training job %s: %s", job.id, job.error)
            return
        job.state, job.candidate_version_id = "succeeded", version.id
        session.commit()
        self.publish_states(session)
        self._register(session, job, version)
        if self.on_candidate is not None:
            self.on_candidate(session, job.organ)
        logger.info("training job %s succeeded: %s candidate %s", job.id, job.organ, version.version)

    def _record_candidate(self, session: Session, job: TrainingJob) -> ModelVersion:
        """Record the job's model as a candidate version: its .mar and card are in the models bucket (uploaded
        here from the local run's package, or already by the trainer's Job)."""
        if self.launcher.uploads_model:
            mar_key, card_key = store_keys(job.organ, job.organ, job.version)
            try:
                card = json.loads(self.store.get_bytes(self.store.buckets.models, card_key))
            except NotFound:
                raise InvalidInput(
                    f"the trainer's Job ended without uploading the model ({card_key} is missing from the "
                    f"{self.store.buckets.models} bucket)",
                    code="model_not_packaged",
                ) from None
            done = {"model_name": job.organ, "mar_key": mar_key, "bucket": self.store.buckets.models,
                    "card": card, "sha256": card.get("mar_sha256")}  # fmt: skip
        else:
            mar = self.run_dir(job) / "package" / f"{job.organ}.mar"
            if not mar.is_file():
                raise InvalidInput(
                    f"the trainer exited without packaging a model ({mar} is missing)",
                    code="model_not_packaged",
                )
            done = upload_version(self.store, mar, job.organ, job.version)
        card = done["card"] or {}
        dataset = card.get("dataset") if isinstance(card.get("dataset"), dict) else {}
        return model_registry.record_version(
            session,
            job.created_by,
            job.organ,
            model_registry.NewVersion(
                model_name=done["model_name"],
                version=job.version,
                mar_key=done["mar_key"],
                mar_sha256=done["sha256"],
                card={**card, "training_job": str(job.id)},
                metrics=card.get("metrics") if isinstance(card.get("metrics"), dict) else {},
                dataset_id=job.dataset_id,
                dataset_hash=dataset.get("hash"),  # none when only part of the dataset was used
                commit=card.get("commit"),
                default_threshold=card.get("default_threshold"),
            ),
            store=self.store,
            models_bucket=done["bucket"],
        )

    def _register(self, session: Session, job: TrainingJob, version: ModelVersion) -> None:
        """Register the candidate with the organ's TorchServe (not as its default) so it can be evaluated and
        promoted. A server that does not answer leaves the recorded candidate and an event saying what to run.
        A trainer that registers its model itself (a Kubernetes Job: only the trainer reaches the management
        ports) has done so before it succeeded."""
        if self.launcher.uploads_model:
            action, reason = "registered", "by the trainer's Job"
        elif self.management is None:
            return
        else:
            mar = self.run_dir(job) / "package" / f"{job.organ}.mar"
            try:
                with self.management(job.organ) as mgmt:
                    register_version(
                        self.store, mgmt, mar, job.organ, job.version, model_name=version.model_name
                    )
            except MedSegError as exc:
                action = "not_registered"
                reason = (
                    f"{exc.message}; register it with `medseg model register --organ {job.organ} --mar {mar}`"
                )
                logger.warning("training job %s: %s not registered: %s", job.id, job.version, reason)
            else:
                action, reason = "registered", None
        session.add(
            ModelEvent(
                version_id=version.id,
                action=action,
                actor=job.created_by,
                reason=reason,
                detail={"training_job": str(job.id)},
            )
        )
        session.commit()

    # --- cancelling ---------------------------------------------------------------------------------------
    def cancel(self, session: Session, principal: Principal, job_id: uuid.UUID) -> TrainingJob:
        with self._lock:
            job = self.get(session, job_id)
            if job.state in FINISHED:
                raise Conflict(
                    f"training job {job_id} has already {job.state}; only queued or running jobs can be "
                    "cancelled",
                    code="job_finished",
                    params={"state": job.state},
                )
            stopped = self.launcher.cancel(job)
            job.progress = self._read_progress(job) or job.progress
            job.state, job.pid, job.finished_at = "cancelled", None, _now()
            job.error = f"cancelled by {principal.actor}"
            audit(session, principal.actor, "training.cancel", f"training:{job.id}", stopped)
            session.commit()
            self.publish_states(session)
        return job

    # --- watching -----------------------------------------------------------------------------------------
    def watch(
        self, sessions: Callable[[], AbstractContextManager[Session]], interval_s: float = WATCH_INTERVAL_S
    ):
        """Reconcile every `interval_s` seconds in a background thread until `stop_watching`: a trainer that
        ended is recorded (candidate or failure) within one period whether or not anyone reads the API.
        `sessions`: a new session per round (gateway.core.db.session_scope). A round that fails (the database
        or the Kubernetes API down) is logged and the next one tries again; several gateway replicas may
        watch at once (`_finish` leaves a job another replica finished)."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop_watching.clear()

        def loop() -> None:
            while not self._stop_watching.wait(interval_s):
                self.watch_once(sessions)

        self._watcher = threading.Thread(target=loop, name="medseg-training-watch", daemon=True)
        self._watcher.start()

    def watch_once(self, sessions: Callable[[], AbstractContextManager[Session]]) -> None:
        """One round of the watcher."""
        try:
            with sessions() as session:
                self.reconcile(session)
        except Exception:  # noqa: BLE001 - a watcher that dies would lose every later outcome
            logger.exception("training jobs: reconciling failed; retrying in the next round")

    def stop_watching(self, timeout: float = 10.0) -> None:
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            self._watcher = None

    def stop_workers(self) -> None:
        """Stop every trainer this instance started (tests; a gateway that must not leave them running)."""
        with self._lock:
            self.launcher.stop_all()

    # --- gateway start ------------------------------------------------------------------------------------
    def mark_interrupted(self, session: Session) -> list[TrainingJob]:
        """Jobs a previous gateway left active: failed with the reason (their local worker is stopped), unless
        the launcher follows them on (a Kubernetes Job keeps running without the gateway)."""
        with self._lock:
            jobs = session.scalars(select(TrainingJob).where(TrainingJob.state.in_(ACTIVE))).all()
            left = []
            for job in jobs:
                reason = self.launcher.interrupted(job)
                if reason is None:
                    logger.info("training job %s: still %s; following it", job.id, job.state)
                    continue
                job.progress = self._read_progress(job) or job.progress
                job.error = reason
                job.state, job.pid, job.finished_at = "failed", None, _now()
                logger.warning("training job %s: %s", job.id, job.error)
                left.append(job)
            session.commit()
            self.publish_states(session)
        return left
