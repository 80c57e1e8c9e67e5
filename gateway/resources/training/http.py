"""Training over HTTP: the architectures a job can use (/api/v1/training/architectures) and the jobs
(/api/v1/training/jobs): list, start, show, cancel."""

import uuid

from fastapi import APIRouter, status

from gateway.api.deps import ClinicDep, SessionDep, caller
from gateway.resources.training import service
from gateway.resources.training.schemas import (
    ArchitecturesPublic,
    TrainingJobCreate,
    TrainingJobPublic,
    TrainingJobsPublic,
)

router = APIRouter(prefix="/training", tags=["training"])

ArchitecturesCaller = caller("training.architectures")
ListJobsCaller = caller("training.jobs.list")
StartJobCaller = caller("training.jobs.start")
ShowJobCaller = caller("training.jobs.show")
CancelJobCaller = caller("training.jobs.cancel")


@router.get("/architectures", response_model=ArchitecturesPublic)
def list_architectures(_who: ArchitecturesCaller) -> ArchitecturesPublic:
    """The network architectures a training job can use."""
    return service.architectures()


@router.get("/jobs", response_model=TrainingJobsPublic)
def list_jobs(clinic: ClinicDep, _who: ListJobsCaller, session: SessionDep) -> TrainingJobsPublic:
    """Recent training jobs, newest first, with their progress."""
    return service.list_jobs(clinic, session)


@router.post("/jobs", response_model=TrainingJobPublic, status_code=status.HTTP_201_CREATED)
def start_job(
    body: TrainingJobCreate, clinic: ClinicDep, who: StartJobCaller, session: SessionDep
) -> TrainingJobPublic:
    """Start training on a dataset in a separate worker process (429 when enough jobs run already)."""
    return service.start_job(clinic, session, who, body)


@router.get("/jobs/{job_id}", response_model=TrainingJobPublic)
def show_job(
    job_id: uuid.UUID, clinic: ClinicDep, _who: ShowJobCaller, session: SessionDep
) -> TrainingJobPublic:
    """One job: status, progress per epoch, the reason it failed, the candidate version it recorded."""
    return service.show_job(clinic, session, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=TrainingJobPublic)
def cancel_job(
    job_id: uuid.UUID, clinic: ClinicDep, who: CancelJobCaller, session: SessionDep
) -> TrainingJobPublic:
    """Stop a queued or running job's worker (409 when it has already finished)."""
    return service.cancel_job(clinic, session, who, job_id)
