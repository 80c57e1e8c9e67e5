"""`medseg api-key create|list|revoke`: manage API keys for hospital systems (admin CLI).

Each command migrates the database first, so it works on a fresh install before the gateway ever ran.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime, timedelta

from common.errors import MedSegError
from common.settings import get_settings
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.security import KNOWN_SCOPES, create_api_key, list_api_keys, revoke_api_key

logger = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    """Register `api-key` and its sub-commands on the top-level `medseg` parser."""
    parser = subparsers.add_parser("api-key", help="create, list and revoke API keys")
    sub = parser.add_subparsers(dest="api_key_command", required=True)

    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--scopes", required=True, help=f"comma-separated: {','.join(KNOWN_SCOPES)}")
    create.add_argument("--expires-days", type=int, default=None, help="expire after N days (default: never)")
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="list keys (prefix and metadata only; secrets are never stored)")
    listing.add_argument("--active", action="store_true", help="hide revoked keys")
    listing.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix", help="the key prefix shown by `medseg api-key list` (or the whole key)")
    revoke.set_defaults(func=_revoke)


def _session():
    url = get_settings().sqlalchemy_url
    run_migrations(url)
    return session_scope(make_engine(url))


def _fail(exc: MedSegError) -> int:
    print(f"error: {exc.message}", file=sys.stderr)
    return 2


def _create(args: argparse.Namespace) -> int:
    if args.expires_days is not None and args.expires_days <= 0:
        print("error: --expires-days must be a positive number of days", file=sys.stderr)
        return 2
    expires = datetime.now(UTC) + timedelta(days=args.expires_days) if args.expires_days else None
    try:
        with _session() as session:
            row, raw_key = create_api_key(session, args.name, args.scopes, expires, actor="cli")
    except MedSegError as exc:
        return _fail(exc)
    print(
        f"created API key {row.prefix} ({row.name}; scopes: {', '.join(row.scopes)}; "
        f"expires: {row.expires_at.isoformat() if row.expires_at else 'never'})",
        file=sys.stderr,
    )
    print("store it now, it is not shown again:", file=sys.stderr)
    print(raw_key)  # alone on stdout, so scripts can capture it
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        with _session() as session:
            rows = list_api_keys(session, include_revoked=not args.active)
    except MedSegError as exc:
        return _fail(exc)
    if not rows:
        print("no API keys")
        return 0
    print(f"{'PREFIX':10} {'NAME':24} {'SCOPES':28} {'CREATED':20} {'EXPIRES':20} {'LAST USED':20} STATUS")
    now = datetime.now(UTC)
    for row in rows:
        status = (
            "revoked"
            if row.revoked_at
            else "expired"
            if row.expires_at and row.expires_at <= now
            else "active"
        )
        print(
            f"{row.prefix:10} {row.name[:24]:24} {','.join(row.scopes)[:28]:28} {_fmt(row.created_at):20} "
            f"{_fmt(row.expires_at):20} {_fmt(row.last_used_at):20} {status}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        with _session() as session:
            row = revoke_api_key(session, args.prefix, actor="cli")
    except MedSegError as exc:
        return _fail(exc)
    print(f"revoked API key {row.prefix} ({row.name})")
    return 0


def _fmt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"
