"""kept evaluations of a 3-D organ of several labels: each case's scores per label and the evaluation's means
per label (NULL: an organ of one label, or a row made before)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("evaluations", "evaluation_cases")


# Plain ALTER TABLE, as 0004: SQLite ≥ 3.35 adds and drops plain columns natively.
def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("per_label", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_column(table, "per_label")
