"""studies remember the PACS series they were fetched from and the DICOM SEGs stored back into it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("pacs_study_uid", "pacs_series_uid", "pacs_store_result", "pacs_segs")


# Plain ALTER TABLE, as 0004: SQLite ≥ 3.35 adds and drops plain columns natively.
def upgrade() -> None:
    op.add_column("studies", sa.Column("pacs_study_uid", sa.String(length=128), nullable=True))
    op.add_column("studies", sa.Column("pacs_series_uid", sa.String(length=128), nullable=True))
    op.add_column(
        "studies", sa.Column("pacs_store_result", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("studies", sa.Column("pacs_segs", sa.JSON(), nullable=True))


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column("studies", column)
