"""ORM tables (SQLAlchemy 2, typed). Tables are never the API schema: see gateway/resources/*/schemas.py
for those.

Portable across SQLite and PostgreSQL: JSON, Uuid and timezone-aware datetimes (stored as UTC) only.
The schema is created by Alembic migrations (gateway/migrations), never by create_all outside tests.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    event,
    false,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# Stable constraint names: Alembic batch mode on SQLite and later migrations refer to them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; we put it back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments INTEGER PRIMARY KEY, not BIGINT.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON, list: JSON}


class ApiKey(Base):
    """An API key for hospital systems; only the SHA-256 of the raw key is stored (gateway/security.py)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    hashed_secret: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # The hospital system using the key; a key sees that hospital's datasets (none: only its own uploads).
    hospital: Mapped[str | None] = mapped_column(String(200))

    def __repr__(self) -> str:
        return f"ApiKey(prefix={self.prefix!r}, name={self.name!r}, scopes={self.scopes!r})"


class Segmentation(Base):
    """One segmentation request (history per doctor and per patient); pixels live in the results bucket."""

    __tablename__ = "segmentations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(128), index=True)
    width: Mapped[int]
    height: Mapped[int]
    pixel_spacing_row_mm: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_col_mm: Mapped[float | None] = mapped_column(Float)
    probability_key: Mapped[str] = mapped_column(String(512))  # object key in the results bucket
    # {} since masks are made from the probability map (gateway.service.masks). Rows written before:
    # {"0.5": "<key>", ...}, a masks.zip holding mask_0.5.png (or, before masks were packed, the PNG itself);
    # read through masks.unpack_mask
    mask_keys: Mapped[dict] = mapped_column(JSON, default=dict)
    areas_px: Mapped[dict] = mapped_column(JSON, default=dict)  # {"0.5": 1234, ...}
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    # The owner's hospital (the doctor's or the key's), fixed when the row is made (gateway/tenancy.py).
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)
    # The clinical loop (gateway/service/history.py): agreement of the 0.2 and 0.8 masks, a small preview,
    # and the one threshold the doctor chose (with a note).
    stability: Mapped[float | None] = mapped_column(Float)
    # None since the preview is made from the probability map; rows written before name a stored preview.
    thumbnail_key: Mapped[str | None] = mapped_column(String(512))
    # The image as the viewer shows it (gateway/service/views.py); None for rows made before it was kept.
    view_key: Mapped[str | None] = mapped_column(String(512))
    chosen_threshold: Mapped[float | None] = mapped_column(Float)
    chosen_note: Mapped[str | None] = mapped_column(Text)
    chosen_at: Mapped[datetime | None]


class JobState:
    """The columns of a row that is a background job (gateway/service/jobs.py): queued | running | done |
    failed; a running row whose heartbeat is older than the stale limit is taken up again by any gateway's
    worker (a restart loses nothing); `error_*` say why a failed one failed."""

    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    heartbeat_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)


class Study(JobState, Base):
    """One study (a DICOM series or a NIfTI volume) segmented as a background job
    (gateway/service/studies.py).
    Voxels live in the results bucket under `studies/<id>/`: the input as NIfTI, the DICOM files (for the
    DICOM SEG) and the 8-bit probability volume on the input grid; masks are derived from it on request."""

    __tablename__ = "studies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(128), index=True)
    study_date: Mapped[date | None] = mapped_column(Date)
    source: Mapped[str] = mapped_column(String(16))  # nifti | dicom
    modality: Mapped[str | None] = mapped_column(String(16))
    study_uid: Mapped[str | None] = mapped_column(String(128))
    series_uid: Mapped[str | None] = mapped_column(String(128))
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    shape: Mapped[list] = mapped_column(JSON, default=list)  # [z, y, x] of the canonical (axial) volume
    spacing_mm: Mapped[list] = mapped_column(JSON, default=list)  # [z, y, x]
    labels: Mapped[list] = mapped_column(JSON, default=list)
    volumes_ml: Mapped[dict] = mapped_column(JSON, default=dict)  # {"0.5": {"liver": 1523.4}, ...}
    input_key: Mapped[str] = mapped_column(String(512))  # results bucket: the input volume (.nii.gz)
    source_key: Mapped[str | None] = mapped_column(String(512))  # the DICOM files (zip), for the DICOM SEG
    probability_key: Mapped[str | None] = mapped_column(String(512))  # 8-bit probabilities (.nii.gz)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)
    chosen_threshold: Mapped[float | None] = mapped_column(Float)
    chosen_note: Mapped[str | None] = mapped_column(Text)
    chosen_at: Mapped[datetime | None]
    # Fetched from the hospital's PACS (gateway/service/pacs.py): the series' UIDs there; with
    # `pacs_store_result` its DICOM SEG is stored back into that study when done and for every threshold saved
    # later, each a new series:
    # [{"series_uid", "sop_instance_uid", "series_number", "threshold", "stored_at"}].
    pacs_study_uid: Mapped[str | None] = mapped_column(String(128))
    pacs_series_uid: Mapped[str | None] = mapped_column(String(128))
    pacs_store_result: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pacs_segs: Mapped[list | None] = mapped_column(JSON)


class Dataset(Base):
    """A labelled dataset uploaded to the datasets bucket under `<id>/`; the manifest is written last."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    pair_count: Mapped[int]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    dataset_hash: Mapped[str] = mapped_column(String(64), index=True)
    manifest_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="ready")  # uploading | ready | failed | deleted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    notes: Mapped[str | None] = mapped_column(Text)
    # Who uploaded it (a person or a hospital system's key) and for which hospital: doctors see their
    # hospital's datasets, researchers all of them.
    uploaded_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    uploaded_by_api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)
    deleted_at: Mapped[datetime | None]  # soft delete: the row and the objects stay, the dataset is hidden

    @classmethod
    def from_manifest(cls, manifest: dict, manifest_name: str, **who) -> Dataset:
        """The row for a dataset whose manifest (`common.datasets`) was just written; `who`: notes,
        uploaded_by_user_id, uploaded_by_api_key_id, hospital."""
        return cls(
            id=manifest["id"],
            organ=manifest["organ"],
            name=manifest["name"],
            pair_count=manifest["pair_count"],
            size_bytes=manifest["size_bytes"],
            dataset_hash=manifest["dataset_hash"],
            manifest_key=f"{manifest['id']}/{manifest_name}",
            status="ready",
            **who,
        )


ROLES = ("doctor", "researcher", "admin")
USER_STATUSES = ("pending", "active", "disabled")
LANGUAGES = ("en", "zh")  # the web pages' languages (gateway/web/i18n.py has their messages)


class User(Base):
    """A person. Registers as `pending`; an admin approves (`active`) and assigns the role."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)  # stored lower-case
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id (resources/accounts/service.py)
    full_name: Mapped[str] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(200))  # title / position
    department: Mapped[str | None] = mapped_column(String(200))
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)
    role: Mapped[str] = mapped_column(String(16))  # doctor | researcher | admin
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_at: Mapped[datetime | None]
    last_sign_in_at: Mapped[datetime | None]
    language: Mapped[str | None] = mapped_column(String(8))  # the web pages' language; None: not chosen

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, email={self.email!r}, role={self.role!r}, status={self.status!r})"


class UserSession(Base):
    """A signed-in browser: only the SHA-256 of the cookie token is stored; one CSRF token per session."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_seen_at: Mapped[datetime | None]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))


class AuditLog(Base):
    """Append-only record of who did what; rows are never updated or deleted (enforced below)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[dict | None] = mapped_column(JSON)
    # The hospital the entry belongs to (its admins read it): the account's or key's it is about, else the
    # actor's; None: the platform's (its admins only). Set by `audit`.
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)


MODEL_STATES = ("candidate", "default", "retired")


class ModelVersion(Base):
    """A trained model version of an organ (gateway/service/model_registry.py): candidate → default → retired.

    `parent_id` is its lineage (the default it was trained to replace); `previous_default_id` is the default
    it replaced when promoted, which a rollback restores.
    """

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("organ", "version", name="uq_model_versions_organ_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    mar_key: Mapped[str | None] = mapped_column(String(512))  # object key in the models bucket
    mar_sha256: Mapped[str | None] = mapped_column(String(64))
    card: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    commit: Mapped[str | None] = mapped_column(String(64))
    default_threshold: Mapped[float | None] = mapped_column(Float)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    previous_default_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]


class ModelEvent(Base):
    """What happened to a model version (recorded, promoted, promotion refused/forced, rolled back)."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ReferenceSet(Base):
    """The organ's frozen reference dataset for promotion: its hash is recorded and checked at every use."""

    __tablename__ = "reference_sets"

    organ: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    dataset_hash: Mapped[str] = mapped_column(String(64))
    set_by: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """A model version scored on labelled cases (uploaded, or a dataset); one EvaluationCase per image."""

    __tablename__ = "evaluations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16), default="test")  # test | promotion
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    case_count: Mapped[int]
    mean_dice: Mapped[float] = mapped_column(Float)
    std_dice: Mapped[float] = mapped_column(Float)
    mean_iou: Mapped[float] = mapped_column(Float)
    mean_hd95: Mapped[float | None] = mapped_column(Float)
    per_threshold: Mapped[list] = mapped_column(JSON, default=list)
    best_threshold: Mapped[float] = mapped_column(Float)
    # An organ of several labels (3-D): {label: {"mean_dice", "mean_iou", "mean_hd95_mm"}} over the cases.
    per_label: Mapped[dict | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)  # the owner's (gateway/tenancy.py)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class EvaluationJob(JobState, Base):
    """An evaluation run as a background job (gateway/service/evaluation_jobs.py): `POST /api/v1/evaluations`
    with `Prefer: respond-async` answers 202 at once and the caller polls `/api/v1/evaluation-jobs/<id>`,
    instead of holding the request open for as long as the cases take. Done, it names the Evaluation made.
    Uploaded cases wait in the results bucket (`input_key`, a zip) until the job ends."""

    __tablename__ = "evaluation_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[str] = mapped_column(String(64))  # resolved when submitted
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    input_key: Mapped[str | None] = mapped_column(String(512))  # uploaded cases (zip), removed when done
    case_count: Mapped[int] = mapped_column(Integer, default=0)
    cases_done: Mapped[int] = mapped_column(Integer, default=0)
    evaluation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("evaluations.id", ondelete="SET NULL"), index=True
    )
    created_by: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class EvaluationCase(Base):
    __tablename__ = "evaluation_cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(256))  # the pair's name (image file stem)
    dice: Mapped[float] = mapped_column(Float)
    iou: Mapped[float] = mapped_column(Float)
    hd95: Mapped[float | None] = mapped_column(Float)  # pixels; None when prediction or label is empty
    # The image's pixel spacing when it carried one (DICOM), and HD95 measured in millimetres with it.
    pixel_spacing_row_mm: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_col_mm: Mapped[float | None] = mapped_column(Float)
    hd95_mm: Mapped[float | None] = mapped_column(Float)
    dice_at: Mapped[dict] = mapped_column(JSON, default=dict)  # {"0.2": dice, ...}
    # An organ of several labels (3-D): {label: {"dice", "iou", "hd95_mm"}}; dice and iou above: their means.
    per_label: Mapped[dict | None] = mapped_column(JSON)
    width: Mapped[int]
    height: Mapped[int]
    predicted_px: Mapped[int]
    label_px: Mapped[int]
    overlay_key: Mapped[str | None] = mapped_column(String(512))  # results bucket


FEEDBACK_STATUSES = ("open", "in_progress", "resolved")


class Feedback(Base):
    """A doctor's feedback on a model version, optionally on one evaluated case or one segmentation."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    author_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # A hospital system's key that wrote it (API keys are revoked, never deleted; no foreign key, so that
    # migration 0005 adds it without rebuilding the table on SQLite).
    author_api_key_id: Mapped[int | None] = mapped_column(Integer)
    hospital: Mapped[str | None] = mapped_column(String(200), index=True)  # the author's (gateway/tenancy.py)
    # Shared by its author with their hospital's doctors (researchers see every thread: it is for them).
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    evaluation_case_id: Mapped[int | None] = mapped_column(
        ForeignKey("evaluation_cases.id", ondelete="SET NULL")
    )
    segmentation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("segmentations.id", ondelete="SET NULL")
    )
    threshold: Mapped[float | None] = mapped_column(Float)
    addressed_by_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeedbackReply(Base):
    __tablename__ = "feedback_replies"

    id: Mapped[int] = mapped_column(primary_key=True)
    feedback_id: Mapped[int] = mapped_column(ForeignKey("feedback.id", ondelete="CASCADE"), index=True)
    author_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelling", "cancelled")


class TrainingJob(Base):
    """A training run started from the API, run by a separate worker process (gateway/training_worker)."""

    __tablename__ = "training_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(64))
    budget_minutes: Mapped[float] = mapped_column(Float)
    epochs: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)  # epoch, loss, val_dice, best_val_dice
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None]
    version: Mapped[str] = mapped_column(String(64))  # the candidate version it will record
    candidate_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    created_by: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


@event.listens_for(AuditLog, "before_update")
@event.listens_for(AuditLog, "before_delete")
def _audit_log_is_append_only(mapper, connection, target: AuditLog) -> None:
    raise PermissionError("audit_log is append-only: rows cannot be updated or deleted")


_ACTOR_HOSPITAL = object()  # `audit`'s default: the hospital of whoever acted


def audit(
    session: Session,
    actor: str,
    action: str,
    target: str | None = None,
    detail: dict | None = None,
    *,
    hospital: str | None | object = _ACTOR_HOSPITAL,
) -> AuditLog:
    """Append an audit record to the session (committed with the caller's transaction).

    `hospital`: the hospital the entry belongs to: given for an entry about an account or a key (theirs),
    else the actor's (`actor_hospital`), so each hospital's admins read their hospital's entries."""
    if hospital is _ACTOR_HOSPITAL:
        hospital = actor_hospital(session, actor)
    row = AuditLog(actor=actor, action=action, target=target, detail=detail, hospital=hospital)
    session.add(row)
    return row


def actor_hospital(session: Session, actor: str) -> str | None:
    """The hospital of an audit actor: `user:<id>:<email>` (a person, gateway/principal.py) or
    `api-key:<prefix>`; None for the others (a platform admin, `self`, `ip:…`, `cli`, `seed:…`)."""
    kind, _, rest = actor.partition(":")
    if kind == "user":
        user_id = rest.partition(":")[0]
        user = session.get(User, int(user_id)) if user_id.isdigit() else None
        return user.hospital if user is not None else None
    if kind == "api-key":
        return session.scalar(select(ApiKey.hospital).where(ApiKey.prefix == rest))
    return None
