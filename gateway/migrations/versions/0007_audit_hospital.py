"""audit entries belong to a hospital: the account's or key's an entry is about, else the actor's (None: the
platform's), so that each hospital's admins read their own hospital's entries (gateway/access.py AUDIT_READ).

Backfilled from what the entries name: the account or key an administration entry is about (its target),
else the person or key that acted, else (failed sign-ins) the account whose address was tried; the hospital
is the account's or key's today. Filling the new column is the only write to existing rows: the append-only
triggers of 0002 are lifted for it and put back in the same transaction.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_people = importlib.import_module("gateway.migrations.versions.0002_people")  # the append-only triggers

USER_TARGETS = (
    "user.create",
    "user.role_change",
    "user.status_change",
    "user.approve",
    "user.hospital_change",
)
KEY_TARGETS = ("api_key.create", "api_key.revoke")
ADDRESS_TARGETS = ("sign_in.failed", "sign_in.throttled", "user.register_taken")

# Portable correlated UPDATEs (SQLite and PostgreSQL; `||` concatenates on both), most specific first.
BACKFILL = (
    ("SELECT users.hospital FROM users WHERE 'user:' || users.id || ':' || users.email = audit_log.target",
     f"action IN ({', '.join(repr(a) for a in USER_TARGETS)})"),
    ("SELECT api_keys.hospital FROM api_keys WHERE api_keys.prefix = audit_log.target",
     f"action IN ({', '.join(repr(a) for a in KEY_TARGETS)})"),
    ("SELECT users.hospital FROM users WHERE 'user:' || users.id || ':' || users.email = audit_log.actor",
     "actor LIKE 'user:%'"),
    ("SELECT api_keys.hospital FROM api_keys WHERE 'api-key:' || api_keys.prefix = audit_log.actor",
     "actor LIKE 'api-key:%'"),
    ("SELECT users.hospital FROM users WHERE users.email = audit_log.target",
     f"action IN ({', '.join(repr(a) for a in ADDRESS_TARGETS)})"),
)  # fmt: skip


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("hospital", sa.String(length=200), nullable=True))
    op.create_index(op.f("ix_audit_log_hospital"), "audit_log", ["hospital"], unique=False)
    _people._drop_append_only_audit_log()
    for hospital_of, which in BACKFILL:
        op.execute(f"UPDATE audit_log SET hospital = ({hospital_of}) WHERE hospital IS NULL AND {which}")
    _people._append_only_audit_log()


def downgrade() -> None:
    # Plain DROP COLUMN (no batch copy), which fires no UPDATE trigger: every entry stays.
    op.drop_index(op.f("ix_audit_log_hospital"), table_name="audit_log")
    op.drop_column("audit_log", "hospital")
