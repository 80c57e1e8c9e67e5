"""studies: a DICOM series or a NIfTI volume segmented as a background job, with its organ volumes in mL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organ", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=True),
        sa.Column("study_date", sa.Date(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("study_uid", sa.String(length=128), nullable=True),
        sa.Column("series_uid", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("heartbeat_at", TIME, nullable=True),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("model_name", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("spacing_mm", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("volumes_ml", sa.JSON(), nullable=False),
        sa.Column("input_key", sa.String(length=512), nullable=False),
        sa.Column("source_key", sa.String(length=512), nullable=True),
        sa.Column("probability_key", sa.String(length=512), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("hospital", sa.String(length=200), nullable=True),
        sa.Column("chosen_threshold", sa.Float(), nullable=True),
        sa.Column("chosen_note", sa.Text(), nullable=True),
        sa.Column("chosen_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_studies_api_key_id_api_keys"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_studies_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    for column in ("organ", "patient_id", "status", "created_at", "api_key_id", "user_id", "hospital"):
        op.create_index(op.f(f"ix_studies_{column}"), "studies", [column], unique=False)


def downgrade() -> None:
    op.drop_table("studies")
