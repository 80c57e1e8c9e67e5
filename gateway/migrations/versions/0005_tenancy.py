"""tenancy: evaluations, segmentations and feedback threads record their owner's hospital; feedback records
the API key that wrote it and whether its author shares it with their hospital's doctors. Backfilled from
the owner (the person, else the key) where the owner has a hospital; datasets without one likewise.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, the column naming its person, the column naming its API key or None)
OWNED = (
    ("evaluations", "user_id", "api_key_id"),
    ("segmentations", "user_id", "api_key_id"),
    ("feedback", "author_user_id", None),
)


# Plain ALTER TABLE ADD/DROP COLUMN (as 0004): batch mode would copy and drop the tables, and with foreign
# keys on, dropping `feedback` or `evaluations` would cascade into their replies and cases.
def upgrade() -> None:
    for table, _, _ in OWNED:
        op.add_column(table, sa.Column("hospital", sa.String(length=200), nullable=True))
        op.create_index(op.f(f"ix_{table}_hospital"), table, ["hospital"], unique=False)
    op.add_column("feedback", sa.Column("author_api_key_id", sa.Integer(), nullable=True))
    op.add_column("feedback", sa.Column("shared", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Portable correlated UPDATEs (SQLite and PostgreSQL): the person's hospital, else the key's.
    for table, person, key in OWNED:
        op.execute(
            f"UPDATE {table} SET hospital = (SELECT users.hospital FROM users "
            f"WHERE users.id = {table}.{person}) WHERE hospital IS NULL AND {person} IS NOT NULL"
        )
        if key:
            op.execute(
                f"UPDATE {table} SET hospital = (SELECT api_keys.hospital FROM api_keys "
                f"WHERE api_keys.id = {table}.{key}) WHERE hospital IS NULL AND {key} IS NOT NULL"
            )
    op.execute(
        "UPDATE datasets SET hospital = (SELECT users.hospital FROM users "
        "WHERE users.id = datasets.uploaded_by_user_id) "
        "WHERE hospital IS NULL AND uploaded_by_user_id IS NOT NULL"
    )
    op.execute(
        "UPDATE datasets SET hospital = (SELECT api_keys.hospital FROM api_keys "
        "WHERE api_keys.id = datasets.uploaded_by_api_key_id) "
        "WHERE hospital IS NULL AND uploaded_by_api_key_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("feedback", "shared")
    op.drop_column("feedback", "author_api_key_id")
    for table, _, _ in reversed(OWNED):
        op.drop_index(op.f(f"ix_{table}_hospital"), table_name=table)
        op.drop_column(table, "hospital")
