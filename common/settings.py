"""One Settings object, read once from the environment (prefix MEDSEG_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]  # common/settings.py → the repository


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSEG_", extra="ignore")

    environment: str = "development"  # development | production
    state_dir: Path = REPO_ROOT / ".medseg"
    services_dir: Path = REPO_ROOT / "services"
    model_store_dir: Path = REPO_ROOT / "model-store"

    database_url: str = ""  # empty: SQLite file under state_dir

    # Object store (S3 API through the minio SDK). Empty credentials: read the ones generated under state_dir.
    s3_endpoint: str = "127.0.0.1:8333"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = False
    # With s3_secure: the PEM file of the CA that signs the store's certificate (in Kubernetes the namespace's
    # private CA, k8s/base/internal-tls.yaml); None: the public CAs (certifi).
    s3_ca_file: Path | None = None
    bucket_datasets: str = "medseg-datasets"
    bucket_results: str = "medseg-results"
    bucket_models: str = "medseg-models"
    bucket_runs: str = "medseg-runs"

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # Both directions of the public gRPC API; a 512x512 request is ~0.5 MB, an evaluate batch far more.
    grpc_max_message_bytes: int = 64 * 1024 * 1024

    # Organ servers (TorchServe gRPC inference API). Locally every organ listens on organ_host at the
    # inference port of its services/<organ>/config.properties; in Kubernetes override per organ,
    # e.g. MEDSEG_ORGAN_ADDRESSES='{"liver": "torchserve-liver:7070"}'.
    organ_host: str = "127.0.0.1"
    organ_addresses: dict[str, str] = {}
    # Inference keys per organ (TorchServe token auth), e.g. from a Kubernetes Secret. Empty: read the
    # key_file.json the local launcher's TorchServe wrote under state_dir.
    organ_inference_keys: dict[str, str] = {}
    # Where the trainer reaches each organ's gRPC management API in Kubernetes (k8s/base/trainer), e.g.
    # '{"liver": "torchserve-liver:7071"}'. Empty: organ_host at the port in config.properties.
    organ_management_addresses: dict[str, str] = {}
    # TLS to the organ servers' gRPC ports (inference and management): the PEM file of the CA that signs their
    # certificates (in Kubernetes the namespace's private CA, k8s/base/internal-tls.yaml); None: plaintext
    # (the local stack, whose organ servers listen on the loopback address only).
    organ_tls_ca_file: Path | None = None
    # The name an organ server's certificate must carry, by organ, where its address does not say it (an
    # `ipv4:` list of replicas, a port-forward to 127.0.0.1); by default the address's host is checked.
    organ_tls_server_names: dict[str, str] = {}
    inference_timeout_s: float = 10.0  # deadline of one call to an organ server
    # Per-organ deadlines by name (JSON in the environment), overriding the `inference_deadline_s` an organ's
    # services/<organ>/spec.yaml sets for its slower calls (gateway.service.dataplane.organ_deadline_s).
    organ_inference_timeouts_s: dict[str, float] = {}
    inference_retries: int = 2  # extra attempts when an organ server answers UNAVAILABLE
    # Dial each organ server afresh this often (seconds; 0: never), so the replicas a scale-out added get
    # calls: a new channel resolves the organ's headless Service again (see common.torchserve_client).
    organ_channel_renew_s: float = 60.0
    readiness_timeout_s: float = 1.0  # /readyz probes must answer fast even when a dependency hangs

    # Uploads: refused before the body is read when Content-Length says too much, and capped while streaming.
    max_upload_bytes: int = 32 * 1024 * 1024  # one image
    max_request_bytes: int = 256 * 1024 * 1024  # a whole request (evaluate sends many)
    max_image_pixels: int = 40_000_000  # decompression-bomb guard: width x height of one decoded image
    max_evaluate_images: int = 64

    # Datasets (zip upload): refused from Content-Length before the body is read, capped while streaming.
    max_dataset_upload_bytes: int = 2 * 1024 * 1024 * 1024
    upload_tmp_dir: Path | None = None  # where uploads are spooled; None: the system temp dir
    # Uploads are refused (507 insufficient_storage) and /readyz reports `disk` while the file system holding
    # state_dir (database, object store data, logs locally) has less free space than this; 0: never.
    min_free_disk_bytes: int = 2 * 1024 * 1024 * 1024
    # The most bytes of multipart uploads (by Content-Length; a body without one counts as the largest upload
    # allowed) one gateway process spools at once; an upload beyond it is refused with 507 and Retry-After
    # until others end. 0: no cap. In Kubernetes the /tmp volume is sized for it (docs/operations.md,
    # "Limits").
    upload_spool_bytes: int = 0
    # `medseg prune` deletes segmentations nobody saved (no chosen threshold, no feedback thread) after this
    # many days, with their objects; 0 keeps them forever (gateway/service/retention.py).
    unsaved_result_retention_days: float = 0
    # Scheduled backups (gateway/core/backup_schedule.py): "" off, `daily@HH:MM` (local time) or
    # `every:N<s|m|h|d>`; the local stack then runs them as a supervised program into backup_dir (default
    # state_dir/backups), keeping the newest `backup_keep` complete backups.
    backup_schedule: str = ""
    backup_keep: int = Field(default=7, ge=1)
    backup_dir: Path | None = None

    # Studies (gateway/service/studies.py): one DICOM series or NIfTI volume per study, refused with 413
    # before any work when larger; segmented by `study_workers` threads per gateway. A running study whose
    # heartbeat is older than `study_stale_after_s` (its gateway stopped) is taken up again, at most
    # `study_max_attempts` times in all.
    study_max_bytes: int = 1024 * 1024 * 1024
    study_max_voxels: int = 600 * 512 * 512
    study_workers: int = 1
    study_poll_s: float = 2.0
    study_stale_after_s: float = 60.0
    study_max_attempts: int = 3
    # Evaluations submitted with `Prefer: respond-async` (gateway/service/evaluation_jobs.py) run on this many
    # threads per gateway, with the studies' poll, stale limit and attempts.
    evaluation_workers: int = 1

    # The hospital's PACS over DICOMweb (common/pacs.py: QIDO-RS search, WADO-RS fetch, STOW-RS store).
    # Locally `make up` runs Orthanc at this URL and writes its generated credentials to
    # state_dir/pacs-credentials.json; for a hospital's PACS set the URL and MEDSEG_PACS_USERNAME /
    # MEDSEG_PACS_PASSWORD (a Kubernetes Secret), or point MEDSEG_PACS_CREDENTIALS_FILE at a
    # {"username", "password"} file. A series fetched from it obeys the study limits above (study_max_bytes),
    # refused before its pixels are fetched when its metadata says it is larger.
    pacs_url: str = "http://127.0.0.1:8042/dicom-web"
    pacs_username: str = ""
    pacs_password: SecretStr = SecretStr("")
    pacs_credentials_file: Path | None = None  # None: state_dir/pacs-credentials.json
    pacs_connect_timeout_s: float = 3.0
    pacs_timeout_s: float = 30.0  # read timeout: the longest the PACS may stay silent within one answer
    # The hospitals whose people and keys may use the PACS (it is their archive); empty: every caller of this
    # deployment (a deployment for one hospital). Others are refused with 403.
    pacs_hospitals: list[str] = []
    # Key of the keyed hash that turns a PACS PatientID which is not a pseudonymous ID into PACS-<hash>
    # (gateway/service/pacs.py); empty: a key generated once into state_dir/pacs-patient-key (0600). Keep it
    # stable: a new key gives the same patient a new ID (their trend starts again).
    pacs_patient_key: SecretStr = SecretStr("")

    # People: cookie sessions, sign-in throttling, the first admin (created at start when no admin exists).
    session_ttl_hours: float = 12.0
    session_cookie_name: str = "medseg_session"
    csrf_cookie_name: str = "medseg_csrf"
    # None: Secure cookies when the request came over https (behind a TLS proxy: run uvicorn with
    # --proxy-headers); always Secure in production.
    session_cookie_secure: bool | None = None
    # Sign-in throttling (docs/operations.md): failures from one client address for one account, and from
    # one client address for any accounts, within the window; never the account as such (no lock-out).
    sign_in_max_failures: int = 5  # per (address, account) within the window before that pair waits
    sign_in_max_failures_per_address: int = 10  # per address, any accounts (password spraying)
    sign_in_window_s: int = 15 * 60
    admin_email: str = ""
    admin_password: SecretStr = SecretStr("")

    # The clinical loop (gateway/service/model_registry.py, history.py, training_jobs.py).
    promotion_max_dice_drop: float = 0.02  # refuse a candidate whose reference mean Dice is lower by more
    stability_doubtful_below: float = 0.8  # Dice between the 0.2 and 0.8 masks under this: flagged doubtful
    max_running_training_jobs: int = 1  # worker processes at once (CPU training is heavy)
    # Where training jobs run: "local" (a worker process beside the gateway) or "kubernetes" (a batch/v1 Job
    # copied from the CronJob template `trainer_job_template` in `namespace`, through the in-cluster API).
    training_launcher: Literal["local", "kubernetes"] = "local"
    namespace: str = ""  # empty: the pod's own (the service account's namespace file)
    trainer_job_template: str = "medseg-trainer"
    # How a promotion or rollback moves the organ servers' default (gateway/service/model_rollout.py):
    # "torchserve" (the organ's TorchServe management API, local) or "kubernetes" (the version pinned in the
    # Deployment torchserve-<organ>, so every replica rolls to it; through the in-cluster API).
    model_rollout: Literal["torchserve", "kubernetes"] = "torchserve"
    kubernetes_api_url: str = "https://kubernetes.default.svc"
    service_account_dir: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount")

    # Prometheus: None serves /metrics on the HTTP port (local); a port serves it there instead, so the
    # public ingress (which routes the HTTP port) never exposes it (k8s: MEDSEG_METRICS_PORT=9102).
    metrics_port: int | None = None

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'medseg.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
