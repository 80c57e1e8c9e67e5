"""Background jobs kept in the database: the worker threads, the claim, the heartbeat, progress and cancel.

A job is a row of a table with the columns `status` (queued | running | done | failed), `progress`,
`attempts`, `cancel_requested`, `heartbeat_at`, `started_at`, `finished_at`, `error_code`,
`error_message` and `created_at` (gateway/models.py: Study, EvaluationJob). Any gateway's worker claims a
queued row, or a running row whose heartbeat is older than the stale limit (its gateway stopped or was
restarted), so a restart resumes the work instead of losing it; after `max_attempts` claims the row fails
clearly. The same code runs in Kubernetes, where every gateway replica has workers.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from gateway.core.db import get_sessionmaker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobLimits:
    workers: int  # threads per gateway process (0: this process runs none)
    poll_s: float  # how often an idle worker looks for work (a submit wakes it at once)
    stale_after_s: float  # a running row whose heartbeat is older than this is taken up again
    max_attempts: int  # claims of one row before it fails as "interrupted"


class JobWorkers:
    """The worker threads of one kind of job in one gateway process.

    `limits()` is read at each use (settings may change under a test); `run(job_id)` does the work and
    records its end; `fail(session, job_id, code, message)` records a failure; `kind` names the job in
    logs and threads ("study", "evaluation")."""

    def __init__(
        self,
        table,
        limits: Callable[[], JobLimits],
        run: Callable[[uuid.UUID], None],
        fail: Callable[[Session, uuid.UUID, str, str], None],
        kind: str,
        session_factory: Callable[[], Session] | None = None,
    ):
        self.table, self.limits, self.kind = table, limits, kind
        self._run, self._fail = run, fail
        self.session_factory = session_factory  # None: the process's database (tests bind their own)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def session(self) -> Session:
        factory = self.session_factory or get_sessionmaker()
        return factory()

    def start(self) -> None:
        """Start the worker threads (once); they take up queued and abandoned jobs at once."""
        with self._lock:
            if self._threads or self.limits().workers < 1:
                return
            self._stop.clear()
            for n in range(self.limits().workers):
                thread = threading.Thread(target=self._loop, name=f"medseg-{self.kind}-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)
        self._wake.set()

    def wake(self) -> None:
        """A job was queued: an idle worker takes it now rather than at its next poll."""
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self.claim()
            except Exception as exc:  # the database is down: wait and try again, never die
                logger.warning("%s worker could not claim work: %s", self.kind, exc)
                job_id = None
            if job_id is None:
                self._wake.wait(self.limits().poll_s)
                self._wake.clear()
                continue
            try:
                self._run(job_id)
            except Exception as exc:  # the database went away as the job ended: it stays running, and is
                # taken up again once its heartbeat is stale; this worker lives on for the next one
                logger.warning("%s %s: its end could not be recorded: %s", self.kind, job_id, exc)

    def claim(self) -> uuid.UUID | None:
        """Take the oldest queued job, or a running one whose worker stopped beating; None if none."""
        table = self.table
        now = datetime.now(UTC)
        stale = now - timedelta(seconds=self.limits().stale_after_s)
        claimable = or_(
            table.status == "queued",
            (table.status == "running") & ((table.heartbeat_at.is_(None)) | (table.heartbeat_at < stale)),
        )
        with self.session() as session:
            for row in session.scalars(select(table).where(claimable).order_by(table.created_at).limit(5)):
                if row.attempts >= self.limits().max_attempts:
                    self._fail(
                        session, row.id, "interrupted",
                        f"the {self.kind} was interrupted {row.attempts} times (gateway stopped while it "
                        "ran); submit it again",
                    )  # fmt: skip
                    continue
                taken = session.execute(
                    update(table)
                    .where(table.id == row.id, claimable)
                    .values(status="running", heartbeat_at=now, started_at=now, attempts=table.attempts + 1)
                )
                session.commit()
                if taken.rowcount == 1:  # another worker may have taken it first
                    if row.status == "running":
                        logger.info(
                            "%s %s resumed after its worker stopped (attempt %d)",
                            self.kind, row.id, row.attempts + 1,
                        )  # fmt: skip
                    return row.id
        return None

    def beat(self, job_id: uuid.UUID) -> Beat:
        return Beat(self, job_id)


class JobService:
    """A service that owns `workers` (JobWorkers): where its workers' sessions come from, start, close."""

    workers: JobWorkers

    @property
    def session_factory(self) -> Callable[[], Session] | None:
        return self.workers.session_factory

    @session_factory.setter
    def session_factory(self, factory: Callable[[], Session] | None) -> None:
        self.workers.session_factory = factory

    def start(self) -> None:
        """Start the worker threads (once); they take up queued and abandoned jobs at once."""
        self.workers.start()

    def close(self, timeout: float = 10.0) -> None:
        self.workers.close(timeout)


def finish_failed(session: Session, table, job_id, code: str, message: str) -> None:
    """Record a job's failure (its code and message, for the caller who polls it)."""
    session.execute(
        update(table)
        .where(table.id == job_id)
        .values(status="failed", error_code=code, error_message=message, finished_at=datetime.now(UTC))
    )
    session.commit()


class Beat:
    """While a job runs: its heartbeat every quarter of the stale limit (from a thread of its own, so a slow
    step never makes a live job look abandoned), its progress at most every half second, its cancel flag
    read at most every second."""

    def __init__(self, workers: JobWorkers, job_id: uuid.UUID):
        self.workers, self.job_id = workers, job_id
        self._last_write = 0.0
        self._last_read = 0.0
        self._cancelled = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"medseg-beat-{job_id}", daemon=True)

    def __enter__(self) -> Beat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(5)

    def _update(self, **values) -> None:
        table = self.workers.table
        with self.workers.session() as session:
            session.execute(
                update(table).where(table.id == self.job_id, table.status == "running").values(**values)
            )
            session.commit()

    def _beat(self) -> None:
        interval = max(self.workers.limits().stale_after_s / 4, 0.2)
        while not self._done.wait(interval):
            try:
                self._update(heartbeat_at=datetime.now(UTC))
            except Exception as exc:  # the database is away for a moment: the next beat tries again
                logger.warning("%s %s: heartbeat not written: %s", self.workers.kind, self.job_id, exc)

    def progress(self, done: int, total: int, **values) -> None:
        """`done` of `total` steps; `values`: more columns to write with it (e.g. a count of cases)."""
        now = time.monotonic()
        if now - self._last_write < 0.5 and done < total:
            return
        self._last_write = now
        # the last few percent are writing the result: keep them for that
        self._update(progress=round(0.95 * done / max(total, 1), 3), heartbeat_at=datetime.now(UTC), **values)

    def cancelled(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not self._cancelled and (force or now - self._last_read >= 1.0):
            self._last_read = now
            table = self.workers.table
            with self.workers.session() as session:
                self._cancelled = bool(
                    session.scalar(select(table.cancel_requested).where(table.id == self.job_id))
                )
        return self._cancelled
