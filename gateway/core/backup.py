"""`medseg backup DIR` / `medseg restore DIR`: the database and every bucket's objects, with a manifest.

A backup folder:
    manifest.json       format name and version, when, the database's Alembic revision, and every file with
                        its size and sha256; written last, so a backup without it is partial
    database.sqlite3    SQLite: a consistent copy through SQLite's online backup API (the gateway may run)
    database.pgdump     PostgreSQL: `pg_dump --format=custom` (one transaction snapshot)
    objects/<sha256>    each object's bytes, named by their checksum (an object stored under two keys is
                        kept once); the manifest maps bucket/key (and content type) to it

Order: the database first, then the objects. The gateway stores a result's objects before the row that names
them, so every row in the copy has its objects in the backup (objects written later are extra, harmless).

Restore checks the whole backup before touching anything (format version, every file present with its size
and checksum, a database revision this code knows), then refuses a stack that already holds work (rows in the
tables below, or objects in a bucket) unless `force`; it replaces the database with the backup's and puts
every object back through the same S3 client, reading each back to compare its checksum.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from common.errors import InvalidInput, MedSegError
from common.objectstore import Buckets, ObjectStore, sha256_file, sha256_of
from common.settings import Settings
from gateway.core.db import alembic_config, make_engine

logger = logging.getLogger(__name__)

FORMAT = "medseg-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_FILE = "database.sqlite3"
PGDUMP_FILE = "database.pgdump"
OBJECTS_DIR = "objects"
# Tables holding people's work: a stack with rows in any of them is not empty. The gateway fills others by
# itself at its first start (the shipped models' registry rows and their audit entries): those are replaced.
WORK_TABLES = (
    "users",
    "api_keys",
    "segmentations",
    "studies",
    "datasets",
    "evaluations",
    "feedback",
    "training_jobs",
)


class BackupError(MedSegError):
    """A backup could not be taken or restored; nothing was changed by a refused restore."""

    code, http_status, grpc_code = "backup_invalid", 400, "FAILED_PRECONDITION"


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    database: str  # "sqlite" | "postgresql"
    revision: str | None
    objects: int
    object_bytes: int


# --- the database ---------------------------------------------------------------------------------
def _backend(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise BackupError(f"cannot back up a {name} database (SQLite and PostgreSQL only)")
    return name


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database has nothing to back up")
    return Path(database)


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL as pg_dump/pg_restore take it (no `+driver`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[4]))
    if not candidates:
        raise BackupError(f"{name} not found (install the PostgreSQL client of the server's version)")
    return str(candidates[-1])


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{Path(cmd[0]).name} failed: {result.stderr.strip()[-2000:]}")


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if "alembic_version" not in inspect(conn).get_table_names():
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def _dump_database(url: str, folder: Path) -> Path:
    if _backend(url) == "sqlite":
        target = folder / SQLITE_FILE
        source = sqlite3.connect(f"file:{_sqlite_path(url)}?mode=ro", uri=True)
        copy = sqlite3.connect(target)
        try:
            with copy:
                source.backup(copy)  # the online backup API: a consistent copy while writers go on
        finally:
            copy.close()
            source.close()
        return target
    target = folder / PGDUMP_FILE
    _run(
        [
            _pg_tool("pg_dump"),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "-f",
            str(target),
            _libpq_url(url),
        ]
    )
    return target


def _load_database(url: str, dump: Path) -> None:
    if _backend(url) == "sqlite":
        path = _sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{dump}?mode=ro", uri=True)
        target = sqlite3.connect(path)
        try:
            source.backup(target)  # replaces the target's pages; WAL readers see the new database
        finally:
            target.close()
            source.close()
        return
    _run(
        [
            _pg_tool("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "-d",
            _libpq_url(url),
            str(dump),
        ]
    )


def _work_rows(url: str) -> dict[str, int]:
    """Rows in each work table that exists (an empty or missing database: {})."""
    if _backend(url) == "sqlite" and not _sqlite_path(url).exists():
        return {}
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            counts = {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in WORK_TABLES
                if t in tables
            }
    finally:
        engine.dispose()
    return {table: n for table, n in counts.items() if n}


def _known_revisions(url: str) -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}


# --- backup ---------------------------------------------------------------------------------------
def backup(settings: Settings, folder: Path, store: ObjectStore | None = None) -> BackupSummary:
    """Write a backup of the database and every bucket into `folder` (new, or an empty folder)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: back up into a new folder")
    store = store or ObjectStore.from_settings(settings)
    store.ping()  # the object store down: a clear 503-style error before anything is written
    url = settings.sqlalchemy_url
    objects_dir = folder / OBJECTS_DIR
    objects_dir.mkdir(parents=True, exist_ok=True)
    revision = current_revision(url)
    dump = _dump_database(url, folder)
    entries, total = [], 0
    for bucket in Buckets.from_settings(settings).all():
        for info in store.list(bucket):
            stat = store.stat(bucket, info.key)
            fd, tmp_name = tempfile.mkstemp(dir=objects_dir, prefix=".part-")
            os.close(fd)
            tmp = Path(tmp_name)
            store.download(bucket, info.key, tmp)
            digest, size = sha256_file(tmp), tmp.stat().st_size
            final = objects_dir / digest
            if final.exists():
                tmp.unlink()
            else:
                tmp.replace(final)
            entries.append(
                {
                    "bucket": bucket,
                    "key": info.key,
                    "sha256": digest,
                    "bytes": size,
                    "content_type": stat.content_type,
                }
            )
            total += size
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "database": {
            "backend": _backend(url),
            "file": dump.name,
            "sha256": sha256_file(dump),
            "bytes": dump.stat().st_size,
            "alembic_revision": revision,
        },
        "buckets": asdict(Buckets.from_settings(settings)),  # role → name
        "objects": entries,
    }
    part = folder / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=1))
    part.replace(folder / MANIFEST)  # last: a folder without manifest.json is a partial backup
    logger.info(
        "backup in %s: database (%s) and %d objects, %d bytes",
        folder,
        manifest["database"]["backend"],
        len(entries),
        total,
    )
    return BackupSummary(folder, manifest["database"]["backend"], revision, len(entries), total)


# --- restore --------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BackupError(
            f"{path} not found: not a backup, or a partial one (the manifest is written last)"
        ) from exc
    except ValueError as exc:
        raise BackupError(f"{path} is not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"this MedSeg restores {FORMAT!r} version {FORMAT_VERSION}"
        )
    return manifest


def verify(folder: Path, manifest: dict) -> None:
    """Every file the manifest names is there with its size and checksum; raise BackupError otherwise."""
    folder = Path(folder)
    database = manifest["database"]
    files = {database["file"]: (database["sha256"], database["bytes"])}
    files.update({f"{OBJECTS_DIR}/{o['sha256']}": (o["sha256"], o["bytes"]) for o in manifest["objects"]})
    problems = []
    for name, (digest, size) in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {size}")
        elif sha256_file(path) != digest:
            problems.append(f"{name} checksum mismatch")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BackupError(f"backup {folder} is damaged or partial: {shown}")


def restore(
    settings: Settings, folder: Path, *, force: bool = False, store: ObjectStore | None = None
) -> BackupSummary:
    """Restore the backup in `folder` into this stack (see the module's doc). Stop the gateway first."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    url = settings.sqlalchemy_url
    database = manifest["database"]
    if database["backend"] != _backend(url):
        raise BackupError(
            f"the backup holds a {database['backend']} database; this stack uses {_backend(url)}"
        )
    revision = database.get("alembic_revision")
    if revision is not None and revision not in _known_revisions(url):
        raise BackupError(
            f"the backup's database is at revision {revision}, newer than this MedSeg: upgrade first"
        )
    verify(folder, manifest)
    store = store or ObjectStore.from_settings(settings)
    store.ping()
    buckets = Buckets.from_settings(settings)
    names = {manifest["buckets"][role]: name for role, name in asdict(buckets).items()}  # role → this stack's
    if not force:
        rows = _work_rows(url)
        held = {b: n for b in buckets.all() if (n := len(store.list(b)))}
        if rows or held:
            what = [f"{n} {t}" for t, n in rows.items()] + [f"{n} objects in {b}" for b, n in held.items()]
            raise InvalidInput(
                f"this stack is not empty ({', '.join(what)}): restore into an empty stack, or pass --force "
                "to replace its database and add the backup's objects",
                code="not_empty",
            )
    store.ensure_buckets()
    _load_database(url, folder / database["file"])
    total = 0
    for entry in manifest["objects"]:
        bucket = names.get(entry["bucket"], entry["bucket"])
        path = folder / OBJECTS_DIR / entry["sha256"]
        store.put_file(
            bucket, entry["key"], path, content_type=entry.get("content_type") or "application/octet-stream"
        )
        if sha256_of(store.stream(bucket, entry["key"])) != entry["sha256"]:
            raise BackupError(f"{bucket}/{entry['key']} reads back with another checksum after restore")
        total += entry["bytes"]
    logger.info(
        "restored %s: database (%s) and %d objects, %d bytes",
        folder,
        database["backend"],
        len(manifest["objects"]),
        total,
    )
    return BackupSummary(folder, database["backend"], revision, len(manifest["objects"]), total)
