"""What every trainer launcher shares, the local worker (training_jobs.LocalProcessLauncher) and the
Kubernetes Job (kubernetes_jobs.KubernetesLauncher): a job's request, the `medseg train` arguments it runs,
its run id, how its trainer ended. It sits below both modules, so training_jobs builds either launcher
with plain module-level imports and kubernetes_jobs never imports training_jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.models import TrainingJob

LOG_TAIL_CHARS = 1500  # the tail of a trainer's log a failed job keeps as its reason


@dataclass(frozen=True)
class JobRequest:
    organ: str
    dataset_id: str
    arch: str
    minutes: float
    epochs: int
    widths: tuple[int, ...] | None = None
    limit: int | None = None  # only the first N pairs (small runs)


@dataclass(frozen=True)
class TrainerExit:
    """How a job's trainer ended: `ok`, or `reason` says why not (without the log tail, added later)."""

    ok: bool
    reason: str | None = None


def trainer_args(job: TrainingJob, request: JobRequest, *, run_dir: str, out: str) -> list[str]:
    """The `medseg train` arguments of a job, wherever it runs."""
    args = [
        "train", "--organ", job.organ, "--dataset", job.dataset_id, "--arch", job.arch,
        "--run-dir", run_dir, "--run-id", run_id(job), "--out", out,
        "--version", job.version, "--minutes", str(job.budget_minutes), "--epochs", str(job.epochs),
    ]  # fmt: skip
    if request.widths:
        args += ["--widths", ",".join(str(w) for w in request.widths)]
    if request.limit:
        # a handful of pairs cannot fill 5 folds: validate on a third of them
        args += ["--limit", str(request.limit), "--folds", str(min(5, max(2, request.limit // 3)))]
    return args


def run_id(job: TrainingJob) -> str:
    return f"job-{job.id}"
