"""Training jobs, for both edges: each edge parses its transport's input and calls these, which call the
Clinic's job runner (gateway/service/training_jobs.py) and answer the public shapes of schemas.py.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from gateway.principal import Principal
from gateway.resources.training.schemas import (
    ArchitecturesPublic,
    TrainingJobCreate,
    TrainingJobPublic,
    TrainingJobsPublic,
)
from gateway.service.clinic import Clinic
from gateway.service.training_jobs import JobRequest
from services.architectures import ARCHITECTURES


def architectures() -> ArchitecturesPublic:
    """The network architectures a job can train: the registry's names (services.architectures, the table
    services.networks.MODELS is built from)."""
    return ArchitecturesPublic(architectures=sorted(ARCHITECTURES))


def list_jobs(clinic: Clinic, session: Session) -> TrainingJobsPublic:
    jobs = clinic.jobs
    return TrainingJobsPublic(jobs=[TrainingJobPublic.of(j, jobs.progress(j)) for j in jobs.recent(session)])


def start_job(clinic: Clinic, session: Session, who: Principal, body: TrainingJobCreate) -> TrainingJobPublic:
    clinic.dataplane.registry.get(body.organ)
    request = JobRequest(**{**body.model_dump(), "widths": tuple(body.widths) if body.widths else None})
    job = clinic.jobs.start(session, who, request)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))


def show_job(clinic: Clinic, session: Session, job_id: uuid.UUID) -> TrainingJobPublic:
    job = clinic.jobs.get(session, job_id)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))


def cancel_job(clinic: Clinic, session: Session, who: Principal, job_id: uuid.UUID) -> TrainingJobPublic:
    job = clinic.jobs.cancel(session, who, job_id)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))
