"""Database engine, sessions and migrations (SQLite by default, PostgreSQL through the same code)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import ServiceUnavailable
from common.settings import get_settings

logger = logging.getLogger(__name__)
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one INFO line per plugin: noise

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
BUSY_TIMEOUT_S = 5.0  # a writer waits this long for SQLite's lock, then gets a clear error (not a hang)


def make_engine(url: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S, echo: bool = False) -> Engine:
    """Engine for `url`. SQLite: WAL, foreign keys on, busy timeout. PostgreSQL: pre-ping, connect timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # A URI filename (file:…?uri=true) is SQLite's to parse, not a path: creating its "parent" made a
        # `file:` folder tree in the working directory.
        if parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cursor = dbapi_conn.cursor()
            # WAL: readers never block the writer (the gateway reads while the trainer records results).
            if parsed.database and parsed.database != ":memory:":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.close()

        return engine
    connect_args = {}
    if parsed.get_backend_name() == "postgresql":
        # lock_timeout: a statement waiting for a lock fails after the same time as SQLite's busy timeout
        connect_args = {"connect_timeout": 5, "options": f"-c lock_timeout={int(busy_timeout_s * 1000)}"}
    return create_engine(url, echo=echo, pool_pre_ping=True, connect_args=connect_args)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for Settings.sqlalchemy_url."""
    return make_engine(get_settings().sqlalchemy_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


READ_ONLY_SQLSTATE = "25006"  # PostgreSQL: read_only_sql_transaction (an InternalError, not Operational)


def is_unavailable(exc: DBAPIError) -> bool:
    """True for failures of the database itself (down, locked, read-only), not of the statement."""
    return isinstance(exc, OperationalError) or getattr(exc.orig, "sqlstate", None) == READ_ONLY_SQLSTATE


def database_unavailable(exc: DBAPIError) -> ServiceUnavailable:
    """Map a driver-level failure (locked, read-only, PostgreSQL down) to a transport-neutral error."""
    text = (str(exc.orig) if exc.orig is not None else str(exc)).strip()
    if "locked" in text or "busy" in text or "lock timeout" in text:
        return ServiceUnavailable(
            f"database unavailable: it stayed locked by another writer for more than "
            f"{BUSY_TIMEOUT_S:.0f}s ({text}); retry shortly",
            code="database_unavailable",
        )
    if "readonly" in text or "read-only" in text:
        return ServiceUnavailable(
            f"database unavailable: it is read-only ({text}); check the database file's permissions, "
            "the disk, or the PostgreSQL server's read-only setting",
            code="database_unavailable",
        )
    return ServiceUnavailable(f"database unavailable: {text}", code="database_unavailable")


def commit(session: Session) -> None:
    """Commit; a failure of the database itself (is_unavailable) is rolled back and raised as 503."""
    try:
        session.commit()
    except DBAPIError as exc:
        session.rollback()
        if is_unavailable(exc):
            raise database_unavailable(exc) from exc
        raise


def get_db() -> Iterator[Session]:
    """FastAPI dependency: one session per request; driver failures become ServiceUnavailable."""
    yield from request_session(get_sessionmaker())


def request_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """The body of get_db for any session factory (tests bind it to their own engine)."""
    with factory() as session:
        try:
            yield session
        except DBAPIError as exc:
            session.rollback()
            if not is_unavailable(exc):
                raise
            raise database_unavailable(exc) from exc


@contextlib.contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for CLIs, the trainer, scripts)."""
    factory = sessionmaker(bind=engine, expire_on_commit=False) if engine is not None else get_sessionmaker()
    with factory() as session:
        try:
            yield session
            session.commit()
        except DBAPIError as exc:
            session.rollback()
            if not is_unavailable(exc):
                raise
            raise database_unavailable(exc) from exc
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str):
    """Programmatic Alembic config (no alembic.ini needed at run time)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return cfg


def run_migrations(url: str | None = None) -> None:
    """`alembic upgrade head` for `url` (default: Settings.sqlalchemy_url). The app runs it at start."""
    from alembic import command

    url = url or get_settings().sqlalchemy_url
    logger.info("migrating database %s to head", make_url(url).render_as_string(hide_password=True))
    try:
        command.upgrade(alembic_config(url), "head")
    except OperationalError as exc:
        raise database_unavailable(exc) from exc
