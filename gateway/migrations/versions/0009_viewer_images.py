"""the viewer: a 2-D segmentation keeps the image it was made from (as shown: gateway.service.views), and an
evaluated case its pixel spacing and HD95 in millimetres (NULL: the image carried no spacing, or a row made
before)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CASE_COLUMNS = ("pixel_spacing_row_mm", "pixel_spacing_col_mm", "hd95_mm")


# Plain ALTER TABLE, as 0004: SQLite ≥ 3.35 adds and drops plain columns natively.
def upgrade() -> None:
    op.add_column("segmentations", sa.Column("view_key", sa.String(length=512), nullable=True))
    for name in CASE_COLUMNS:
        op.add_column("evaluation_cases", sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    for name in reversed(CASE_COLUMNS):
        op.drop_column("evaluation_cases", name)
    op.drop_column("segmentations", "view_key")
