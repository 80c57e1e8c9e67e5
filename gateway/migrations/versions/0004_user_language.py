"""users remember their language for the web pages (en | zh; NULL: not chosen yet)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE (SQLite ≥ 3.35 adds and drops a plain column natively): batch mode would copy and drop
# `users`, and with foreign keys on, dropping it would cascade into the sessions that reference it.
def upgrade() -> None:
    op.add_column("users", sa.Column("language", sa.String(length=8), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "language")
