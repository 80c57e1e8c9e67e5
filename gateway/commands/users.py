"""`medseg user create|list|set`: manage people from the command line (the first admin, approvals).

The password is read from MEDSEG_USER_PASSWORD or prompted for (never a command-line argument, which other
users of the machine can see in the process list). Each command migrates the database first.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys

from common.errors import MedSegError
from common.settings import Settings, get_settings
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.models import ROLES, USER_STATUSES
from gateway.resources.accounts import service as accounts

logger = logging.getLogger(__name__)
PASSWORD_ENV = "MEDSEG_USER_PASSWORD"


def add_commands(subparsers) -> None:
    """Register `user` and its sub-commands on the top-level `medseg` parser."""
    parser = subparsers.add_parser("user", help="create, list and administer user accounts")
    sub = parser.add_subparsers(dest="user_command", required=True)

    create = sub.add_parser(
        "create", help=f"create an active account (password from ${PASSWORD_ENV} or a prompt)"
    )
    create.add_argument("--email", required=True)
    create.add_argument("--name", default=None, help="full name (default: the e-mail's local part)")
    create.add_argument("--admin", action="store_true", help="make it an admin")
    create.add_argument("--role", choices=ROLES, default=None, help="doctor, researcher or admin")
    create.add_argument("--hospital", default=None)
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="list accounts")
    listing.add_argument("--status", choices=USER_STATUSES, default=None)
    listing.set_defaults(func=_list)

    update = sub.add_parser("set", help="approve/disable an account or change its role or hospital")
    update.add_argument("user_id", type=int)
    update.add_argument("--role", choices=ROLES)
    update.add_argument("--status", choices=USER_STATUSES)
    update.add_argument("--hospital")
    update.set_defaults(func=_set)


def _session():
    url = get_settings().sqlalchemy_url
    run_migrations(url)
    return session_scope(make_engine(url))


def _password() -> str:
    if password := os.environ.get(PASSWORD_ENV):
        return password
    if not sys.stdin.isatty():
        raise SystemExit(f"error: set {PASSWORD_ENV} or run in a terminal to be prompted for the password")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("error: the passwords differ")
    return first


def _create(args: argparse.Namespace) -> int:
    role = "admin" if args.admin else args.role
    if role is None:
        print("error: give --admin or --role", file=sys.stderr)
        return 2
    try:
        with _session() as session:
            user = accounts.create_user(
                session,
                email=args.email,
                password=_password(),
                full_name=args.name or args.email.split("@")[0],
                role=role,
                status="active",
                hospital=args.hospital,
                actor="cli",
            )
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"created {user.role} {user.email} (id {user.id}, active)")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _session() as session:
        users = accounts.list_users(session, args.status)
        print(f"{'ID':>5} {'EMAIL':32} {'ROLE':10} {'STATUS':9} HOSPITAL")
        for u in users:
            print(f"{u.id:>5} {u.email[:32]:32} {u.role:10} {u.status:9} {u.hospital or '-'}")
    return 0


def _set(args: argparse.Namespace) -> int:
    try:
        with _session() as session:
            user = accounts.administer_user(
                session, None, args.user_id, role=args.role, status=args.status, hospital=args.hospital
            )
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"{user.email}: {user.role}, {user.status}, hospital {user.hospital or '-'}")
    return 0


def bootstrap_admin(settings: Settings) -> None:
    """At first start: create the admin from MEDSEG_ADMIN_EMAIL / MEDSEG_ADMIN_PASSWORD if there is none."""
    if not settings.admin_email:
        return
    password = settings.admin_password.get_secret_value()
    if not password:
        raise SystemExit("MEDSEG_ADMIN_EMAIL is set but MEDSEG_ADMIN_PASSWORD is empty")
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            accounts.ensure_admin(session, settings.admin_email, password)
    finally:
        engine.dispose()
