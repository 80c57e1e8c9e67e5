"""Training jobs: the gateway runs the trainer as a separate local worker process per job.

    python -m gateway.cli train --organ liver --dataset <id> --run-dir <state>/runs/<job id> --out …

* One `TrainingJob` row per job: queued → running → succeeded | failed | cancelled.
* The worker runs in its own process group (so a cancel stops it and any child it started) and writes its
  output to `<run dir>/worker.log`; the trainer writes `metrics.json` after every epoch, which is the
  job's progress (epoch, training loss, validation Dice) while it runs.
* When the worker exits, the gateway process that started it finishes the job the next time anyone looks
  (`reconcile`, called by every read and start): exit code 0 → the packaged .mar goes to the models bucket
  (`trainer.register.upload_version`) and is recorded as a *candidate* (`model_registry.record_version`),
  then registered with the organ's TorchServe, not as its default (`register_version`: the model event
  `registered` or `not_registered` says which); otherwise the job failed, with its exit code and the tail
  of its log as the reason.
* At gateway start, jobs still marked running belong to a gateway that is gone: they are marked failed
  (`mark_interrupted`), and a worker they left behind is stopped when it is still recognisably theirs.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.core.config import REPO_ROOT
from gateway.errors import Conflict, InvalidInput, MedSegError, NotFound, TooManyRequests
from gateway.models import Dataset, ModelEvent, ModelVersion, TrainingJob, audit
from gateway.principal import Principal
from gateway.service import model_registry

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("succeeded", "failed", "cancelled")
LOG_NAME = "worker.log"
LOG_TAIL_CHARS = 1500
KILL_GRACE_S = 5.0

# argv, env, cwd, log file → a started process (tests substitute a cheap one).
Launcher = Callable[..., subprocess.Popen]


def _now() -> datetime:
    return datetime.now(UTC)


def spawn_worker(argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """Start the worker in a new session (own process group), stdout and stderr into `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


@dataclass(frozen=True)
class JobRequest:
    organ: str
    dataset_id: str
    arch: str
    minutes: float
    epochs: int
    widths: tuple[int, ...] | None = None
    limit: int | None = None  # only the first N pairs (small runs)


class TrainingJobs:
    """Starts, watches and cancels the training workers of this gateway process."""

    def __init__(self, settings, store, *, management=None, launcher: Launcher = spawn_worker):
        self.settings = settings
        self.store = store
        # organ → a ManagementClient (context manager) of its TorchServe; None: candidates are only stored
        self.management = management
        self.launcher = launcher
        self.max_running = settings.max_running_training_jobs
        self.runs_dir = Path(settings.state_dir) / "runs"
        self.threads: int | None = None  # torch threads per worker (None: the trainer's default)
        self._workers: dict[uuid.UUID, subprocess.Popen] = {}
        self._lock = threading.RLock()  # one finisher per job, even with concurrent requests

    # --- paths and the worker's command -----------------------------------------------------------------
    def run_dir(self, job: TrainingJob) -> Path:
        return self.runs_dir / str(job.id)

    def command(self, job: TrainingJob, request: JobRequest) -> list[str]:
        run_dir = self.run_dir(job)
        argv = [
            sys.executable, "-m", "gateway.cli", "train",
            "--organ", job.organ, "--dataset", job.dataset_id, "--arch", job.arch,
            "--run-dir", str(run_dir), "--run-id", f"job-{job.id}", "--out", str(run_dir / "package"),
            "--version", job.version, "--minutes", str(job.budget_minutes), "--epochs", str(job.epochs),
        ]  # fmt: skip
        if self.threads:
            argv += ["--threads", str(self.threads)]
        if request.widths:
            argv += ["--widths", ",".join(str(w) for w in request.widths)]
        if request.limit:
            # a handful of pairs cannot fill 5 folds: validate on a third of them
            argv += ["--limit", str(request.limit), "--folds", str(min(5, max(2, request.limit // 3)))]
        return argv

    def worker_env(self) -> dict[str, str]:
        """The worker uses this gateway's object store and state dir (its Settings are read from env)."""
        s = self.settings
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
        """{"epochs": [{epoch, loss, val_dice}], "best_val_dice"}: live from metrics.json while the job runs,
        as recorded when it finished afterwards."""
        if job.state in FINISHED and job.progress:
            return job.progress
        return self._read_metrics(job) or job.progress or {"epochs": [], "best_val_dice": None}

    def _read_metrics(self, job: TrainingJob) -> dict | None:
        path = self.run_dir(job) / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet, or caught mid-write: the next read will see it
            return None
        epochs = [
            {"epoch": h.get("epoch"), "loss": h.get("train_loss"), "val_dice": h.get("val_dice")}
            for h in metrics.get("history", [])
        ]
        best = metrics.get("best_val_dice")
        return {"epochs": epochs, "best_val_dice": best if epochs else None}

    def log_tail(self, job: TrainingJob, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            with open(self.run_dir(job) / LOG_NAME, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - chars))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        # tqdm redraws lines with carriage returns; keep what a reader would see last on each line
        lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
        return "\n".join(line for line in lines if line.strip()).strip()

    # --- starting -----------------------------------------------------------------------------------------
    def start(self, session: Session, principal: Principal, request: JobRequest) -> TrainingJob:
        from trainer.models import MODELS

        if request.arch not in MODELS:
            raise InvalidInput(
                f"unknown architecture {request.arch!r}; valid: {', '.join(sorted(MODELS))}",
                code="unknown_arch",
            )
        dataset = session.get(Dataset, request.dataset_id)
        if dataset is None or dataset.status != "ready" or dataset.deleted_at is not None:
            raise NotFound(f"no dataset {request.dataset_id!r}", code="unknown_dataset")
        if dataset.organ != request.organ:
            raise InvalidInput(
                f"dataset {dataset.id} is a {dataset.organ} dataset, not {request.organ}", code="wrong_organ"
            )
        with self._lock:
            self.reconcile(session)
            running = session.scalars(select(TrainingJob).where(TrainingJob.state.in_(ACTIVE))).all()
            if len(running) >= self.max_running:
                raise TooManyRequests(
                    f"{len(running)} training job(s) running (at most {self.max_running} at once: "
                    "MEDSEG_MAX_RUNNING_TRAINING_JOBS); wait for one to finish or cancel one "
                    f"({', '.join(str(j.id) for j in running)})",
                    code="too_many_training_jobs",
                )
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
            self._launch(session, job, request)
        return job

    def _launch(self, session: Session, job: TrainingJob, request: JobRequest) -> None:
        run_dir = self.run_dir(job)
        argv = self.command(job, request)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            log_path = run_dir / LOG_NAME
            log_path.write_text(f"$ {' '.join(argv)}\n")
            worker = self.launcher(argv, env=self.worker_env(), cwd=REPO_ROOT, log_path=log_path)
        except OSError as exc:
            job.state, job.error, job.finished_at = (
                "failed",
                f"the worker could not be started: {exc}",
                _now(),
            )
            session.commit()
            return
        self._workers[job.id] = worker
        job.state, job.pid, job.started_at = "running", worker.pid, _now()
        session.commit()
        logger.info("training job %s: worker pid %s, %s", job.id, worker.pid, " ".join(argv[3:]))

    # --- finishing ----------------------------------------------------------------------------------------
    def reconcile(self, session: Session) -> None:
        """Finish the jobs whose worker (started by this process) has exited."""
        with self._lock:
            for job_id, worker in list(self._workers.items()):
                code = worker.poll()
                if code is None:
                    continue
                del self._workers[job_id]
                job = session.get(TrainingJob, job_id)
                if job is not None and job.state in ACTIVE:
                    self._finish(session, job, code)

    def _finish(self, session: Session, job: TrainingJob, code: int) -> None:
        job.progress = self._read_metrics(job) or job.progress
        job.pid, job.finished_at = None, _now()
        session.commit()
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            tail = self.log_tail(job)
            job.state, job.error = "failed", f"the trainer {how}" + (f":\n{tail}" if tail else "")
            session.commit()
            logger.warning("training job %s failed: the trainer %s", job.id, how)
            return
        try:
            version = self._record_candidate(session, job)
        except MedSegError as exc:
            session.rollback()
            job = session.get(TrainingJob, job.id)
            job.state, job.error = "failed", f"training finished but the candidate was not recorded: {exc}"
            session.commit()
            logger.warning("training job %s: %s", job.id, job.error)
            return
        job.state, job.candidate_version_id = "succeeded", version.id
        session.commit()
        self._register(session, job, version)
        logger.info("training job %s succeeded: %s candidate %s", job.id, job.organ, version.version)

    def _record_candidate(self, session: Session, job: TrainingJob) -> ModelVersion:
        """Upload the run's package to the models bucket and record it as a candidate version."""
        from trainer.register import upload_version

        mar = self.run_dir(job) / "package" / f"{job.organ}.mar"
        if not mar.is_file():
            raise InvalidInput(f"the trainer exited without packaging a model ({mar} is missing)")
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
        """
        from trainer.register import register_version

        if self.management is None:
            return
        mar = self.run_dir(job) / "package" / f"{job.organ}.mar"
        try:
            with self.management(job.organ) as mgmt:
                register_version(self.store, mgmt, mar, job.organ, job.version, model_name=version.model_name)
        except MedSegError as exc:
            action = "not_registered"
            reason = (
                f"{exc.message}; register it with `medseg model register --organ {job.organ} --mar {mar}`"
            )
            logger.warning("training job %s: candidate %s not registered: %s", job.id, job.version, reason)
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
                )
            stopped = self._stop_worker(job)
            self._workers.pop(job.id, None)
            job.progress = self._read_metrics(job) or job.progress
            job.state, job.pid, job.finished_at = "cancelled", None, _now()
            job.error = f"cancelled by {principal.actor}"
            audit(session, principal.actor, "training.cancel", f"training:{job.id}", {"stopped_pid": stopped})
            session.commit()
        return job

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
        if group != job.pid or str(self.run_dir(job)).encode() not in cmdline:
            return None
        return job.pid

    def stop_workers(self) -> None:
        """Stop every worker this instance started (tests; a gateway that must not leave them running)."""
        with self._lock:
            for job_id, worker in list(self._workers.items()):
                try:
                    os.killpg(worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                worker.wait()
                del self._workers[job_id]

    # --- gateway start ------------------------------------------------------------------------------------
    def mark_interrupted(self, session: Session) -> list[TrainingJob]:
        """Jobs left active by a previous gateway are failed with the reason (their worker is stopped)."""
        with self._lock:
            jobs = session.scalars(select(TrainingJob).where(TrainingJob.state.in_(ACTIVE))).all()
            left = [job for job in jobs if job.id not in self._workers]
            for job in left:
                stopped = self._stop_worker(job)
                job.progress = self._read_metrics(job) or job.progress
                job.error = (
                    f"the gateway restarted while this job was {job.state}"
                    + (f"; its worker (pid {stopped}) was stopped" if stopped else "")
                    + "; start the job again"
                )
                job.state, job.pid, job.finished_at = "failed", None, _now()
                logger.warning("training job %s: %s", job.id, job.error)
            session.commit()
        return left
