"""clinical loop: model versions (states, lineage, events), reference sets, evaluations and their cases,
feedback threads, training jobs; segmentations record stability, a thumbnail and the chosen threshold

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Tables before the tables whose foreign keys name them; the order is the one the schema was first
    # built in, so databases migrated before and after this split are the same.
    _create_model_versions()
    _create_evaluations()
    _create_model_events()
    _create_training_jobs()
    _create_evaluation_cases()
    _create_reference_sets()
    _create_feedback()
    _create_feedback_replies()
    _add_segmentation_columns()


def _create_model_versions() -> None:
    """Model versions per organ (candidate → default → retired) with their lineage."""
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organ", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("mar_key", sa.String(length=512), nullable=True),
        sa.Column("mar_sha256", sa.String(length=64), nullable=True),
        sa.Column("card", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=True),
        sa.Column("dataset_hash", sa.String(length=64), nullable=True),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("default_threshold", sa.Float(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("previous_default_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["model_versions.id"],
            name=op.f("fk_model_versions_parent_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["previous_default_id"],
            ["model_versions.id"],
            name=op.f("fk_model_versions_previous_default_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("organ", "version", name="uq_model_versions_organ_version"),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_organ"), ["organ"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_versions_state"), ["state"], unique=False)


def _create_evaluations() -> None:
    """Evaluations of a model version on labelled cases (upload or stored dataset)."""
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organ", sa.String(length=64), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=True),
        sa.Column("dataset_hash", sa.String(length=64), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("case_count", sa.Integer(), nullable=False),
        sa.Column("mean_dice", sa.Float(), nullable=False),
        sa.Column("std_dice", sa.Float(), nullable=False),
        sa.Column("mean_iou", sa.Float(), nullable=False),
        sa.Column("mean_hd95", sa.Float(), nullable=True),
        sa.Column("per_threshold", sa.JSON(), nullable=False),
        sa.Column("best_threshold", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_evaluations_api_key_id_api_keys"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_evaluations_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_evaluations_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluations_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_evaluations_model_version_id"), ["model_version_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_evaluations_organ"), ["organ"], unique=False)
        batch_op.create_index(batch_op.f("ix_evaluations_user_id"), ["user_id"], unique=False)


def _create_model_events() -> None:
    """What happened to a model version, by whom and why (recorded, promoted, refused, …)."""
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_events_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_events")),
    )
    with op.batch_alter_table("model_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_events_version_id"), ["version_id"], unique=False)


def _create_training_jobs() -> None:
    """Training jobs started from the API and the candidate each recorded."""
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organ", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("arch", sa.String(length=64), nullable=False),
        sa.Column("budget_minutes", sa.Float(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("candidate_version_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["candidate_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_jobs_candidate_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_training_jobs_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_jobs_organ"), ["organ"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_jobs_state"), ["state"], unique=False)


def _create_evaluation_cases() -> None:
    """Each case of an evaluation: its scores and the overlay's object key."""
    op.create_table(
        "evaluation_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("dice", sa.Float(), nullable=False),
        sa.Column("iou", sa.Float(), nullable=False),
        sa.Column("hd95", sa.Float(), nullable=True),
        sa.Column("dice_at", sa.JSON(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("predicted_px", sa.Integer(), nullable=False),
        sa.Column("label_px", sa.Integer(), nullable=False),
        sa.Column("overlay_key", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluations.id"],
            name=op.f("fk_evaluation_cases_evaluation_id_evaluations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_cases")),
    )
    with op.batch_alter_table("evaluation_cases", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_evaluation_cases_evaluation_id"), ["evaluation_id"], unique=False
        )


def _create_reference_sets() -> None:
    """Each organ's frozen reference set (dataset and hash) for promotions."""
    op.create_table(
        "reference_sets",
        sa.Column("organ", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("dataset_hash", sa.String(length=64), nullable=False),
        sa.Column("set_by", sa.String(length=128), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_reference_sets_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("organ", name=op.f("pk_reference_sets")),
    )


def _create_feedback() -> None:
    """Doctors' feedback threads on a model version."""
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("author_user_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("evaluation_case_id", sa.Integer(), nullable=True),
        sa.Column("segmentation_id", sa.Uuid(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("addressed_by_version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["addressed_by_version_id"],
            ["model_versions.id"],
            name=op.f("fk_feedback_addressed_by_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["author_user_id"],
            ["users.id"],
            name=op.f("fk_feedback_author_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["evaluation_case_id"],
            ["evaluation_cases.id"],
            name=op.f("fk_feedback_evaluation_case_id_evaluation_cases"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_feedback_model_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["segmentation_id"],
            ["segmentations.id"],
            name=op.f("fk_feedback_segmentation_id_segmentations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_model_version_id"), ["model_version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_status"), ["status"], unique=False)


def _create_feedback_replies() -> None:
    """Replies in a feedback thread."""
    op.create_table(
        "feedback_replies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feedback_id", sa.Integer(), nullable=False),
        sa.Column("author_user_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_user_id"],
            ["users.id"],
            name=op.f("fk_feedback_replies_author_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["feedback_id"],
            ["feedback.id"],
            name=op.f("fk_feedback_replies_feedback_id_feedback"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_replies")),
    )
    with op.batch_alter_table("feedback_replies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_replies_feedback_id"), ["feedback_id"], unique=False)


def _add_segmentation_columns() -> None:
    """Segmentations record stability, a thumbnail and the doctor's chosen threshold."""
    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stability", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("thumbnail_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("chosen_threshold", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("chosen_note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("chosen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.drop_column("chosen_at")
        batch_op.drop_column("chosen_note")
        batch_op.drop_column("chosen_threshold")
        batch_op.drop_column("thumbnail_key")
        batch_op.drop_column("stability")

    with op.batch_alter_table("feedback_replies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_replies_feedback_id"))

    op.drop_table("feedback_replies")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_status"))
        batch_op.drop_index(batch_op.f("ix_feedback_model_version_id"))

    op.drop_table("feedback")
    op.drop_table("reference_sets")
    with op.batch_alter_table("evaluation_cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_cases_evaluation_id"))

    op.drop_table("evaluation_cases")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_jobs_state"))
        batch_op.drop_index(batch_op.f("ix_training_jobs_organ"))
        batch_op.drop_index(batch_op.f("ix_training_jobs_created_at"))

    op.drop_table("training_jobs")
    with op.batch_alter_table("model_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_events_version_id"))

    op.drop_table("model_events")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_user_id"))
        batch_op.drop_index(batch_op.f("ix_evaluations_organ"))
        batch_op.drop_index(batch_op.f("ix_evaluations_model_version_id"))
        batch_op.drop_index(batch_op.f("ix_evaluations_created_at"))

    op.drop_table("evaluations")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_state"))
        batch_op.drop_index(batch_op.f("ix_model_versions_organ"))

    op.drop_table("model_versions")
