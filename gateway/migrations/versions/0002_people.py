"""people: users, sessions; datasets record uploader, hospital, soft delete; audit log append-only in SQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The ORM refuses to update or delete audit rows; these triggers refuse it for any SQL client too.
SQLITE_TRIGGERS = [
    f"CREATE TRIGGER audit_log_no_{op_name} BEFORE {op_name.upper()} ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
    for op_name in ("update", "delete")
]
POSTGRES_TRIGGER = [
    """CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
    """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
]


def _append_only_audit_log() -> None:
    dialect = op.get_context().dialect.name
    for statement in (
        SQLITE_TRIGGERS if dialect == "sqlite" else POSTGRES_TRIGGER if dialect == "postgresql" else []
    ):
        op.execute(statement)


def _drop_append_only_audit_log() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")


def upgrade() -> None:
    _append_only_audit_log()
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("department", sa.String(length=200), nullable=True),
        sa.Column("hospital", sa.String(length=200), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_email"), ["email"], unique=True)
        batch_op.create_index(batch_op.f("ix_users_hospital"), ["hospital"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_status"), ["status"], unique=False)

    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
    )
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_sessions_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_user_sessions_token_hash"), ["token_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_user_sessions_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hospital", sa.String(length=200), nullable=True))

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uploaded_by_user_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("uploaded_by_api_key_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("hospital", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_datasets_hospital"), ["hospital"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_datasets_uploaded_by_api_key_id"), ["uploaded_by_api_key_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_datasets_uploaded_by_user_id"), ["uploaded_by_user_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_datasets_uploaded_by_api_key_id_api_keys"),
            "api_keys",
            ["uploaded_by_api_key_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_datasets_uploaded_by_user_id_users"),
            "users",
            ["uploaded_by_user_id"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_segmentations_user_id_users"), "users", ["user_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    _drop_append_only_audit_log()
    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_segmentations_user_id_users"), type_="foreignkey")

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_datasets_uploaded_by_user_id_users"), type_="foreignkey")
        batch_op.drop_constraint(
            batch_op.f("fk_datasets_uploaded_by_api_key_id_api_keys"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_datasets_uploaded_by_user_id"))
        batch_op.drop_index(batch_op.f("ix_datasets_uploaded_by_api_key_id"))
        batch_op.drop_index(batch_op.f("ix_datasets_hospital"))
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("hospital")
        batch_op.drop_column("uploaded_by_api_key_id")
        batch_op.drop_column("uploaded_by_user_id")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("hospital")

    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_sessions_user_id"))
        batch_op.drop_index(batch_op.f("ix_user_sessions_token_hash"))
        batch_op.drop_index(batch_op.f("ix_user_sessions_expires_at"))

    op.drop_table("user_sessions")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_status"))
        batch_op.drop_index(batch_op.f("ix_users_hospital"))
        batch_op.drop_index(batch_op.f("ix_users_email"))

    op.drop_table("users")
