import uuid

from fastapi import APIRouter, status

from gateway.api.clinic_deps import ClinicDep, TrainingRunner
from gateway.api.deps import SessionDep
from gateway.schemas_clinic import TrainingJobCreate, TrainingJobPublic, TrainingJobsPublic
from gateway.service.training_jobs import JobRequest

router = APIRouter(prefix="/training", tags=["training"])


@router.get("/jobs", response_model=TrainingJobsPublic)
def list_jobs(clinic: ClinicDep, _who: TrainingRunner, session: SessionDep) -> TrainingJobsPublic:
    """Recent training jobs, newest first, with their progress."""
    jobs = clinic.jobs
    return TrainingJobsPublic(jobs=[TrainingJobPublic.of(j, jobs.progress(j)) for j in jobs.recent(session)])


@router.post("/jobs", response_model=TrainingJobPublic, status_code=status.HTTP_201_CREATED)
def start_job(
    body: TrainingJobCreate, clinic: ClinicDep, who: TrainingRunner, session: SessionDep
) -> TrainingJobPublic:
    """Start training on a dataset in a separate worker process (429 when enough jobs run already)."""
    clinic.dataplane.registry.get(body.organ)
    request = JobRequest(**{**body.model_dump(), "widths": tuple(body.widths) if body.widths else None})
    job = clinic.jobs.start(session, who, request)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))


@router.get("/jobs/{job_id}", response_model=TrainingJobPublic)
def show_job(
    job_id: uuid.UUID, clinic: ClinicDep, _who: TrainingRunner, session: SessionDep
) -> TrainingJobPublic:
    """One job: status, progress per epoch, the reason it failed, the candidate version it recorded."""
    job = clinic.jobs.get(session, job_id)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))


@router.post("/jobs/{job_id}/cancel", response_model=TrainingJobPublic)
def cancel_job(
    job_id: uuid.UUID, clinic: ClinicDep, who: TrainingRunner, session: SessionDep
) -> TrainingJobPublic:
    """Stop a queued or running job's worker (409 when it has already finished)."""
    job = clinic.jobs.cancel(session, who, job_id)
    return TrainingJobPublic.of(job, clinic.jobs.progress(job))
