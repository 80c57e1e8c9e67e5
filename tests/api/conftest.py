"""Fixtures for the people/data API: one migrated database per module and backend (SQLite, PostgreSQL),
people of every role, API keys, and HTTP clients signed in as any of them.

`world` is the entry point:
    world.client("doctor")          a TestClient with a fresh session cookie for the doctor (CSRF header set)
    world.client("key:datasets")    a TestClient sending an API key with that scope
    world.client("anonymous")       no credentials
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import sessionmaker

from common.errors import NotFound
from common.objectstore import Buckets, ObjectInfo
from common.settings import Settings, get_settings
from gateway.core.db import get_db, make_engine, request_session, run_migrations, session_scope
from gateway.grpc_server import create_server
from gateway.models import User
from gateway.resources.accounts import service as accounts
from gateway.security import create_api_key
from gateway.service.dataplane import DataPlane
from gateway.service.organs import OrganRegistry
from services.spec import SERVICES_DIR
from tests.fixtures.pacs import pacs_settings_for
from tests.gateway.fakes import FakeClient, FakeVolumeClient

PASSWORD = "correct horse battery"
HOSPITAL_A, HOSPITAL_B = "St. Anna", "Bellevue"
# name → (role, hospital, status)
PEOPLE = {
    "doctor": ("doctor", HOSPITAL_A, "active"),
    "doctor_b": ("doctor", HOSPITAL_B, "active"),
    "researcher": ("researcher", None, "active"),
    "admin": ("admin", None, "active"),
    "pending": ("doctor", HOSPITAL_A, "pending"),
}
KEY_SCOPES = ("segment", "evaluate", "datasets", "models", "train", "feedback", "admin")


class MemoryStore:
    """The ObjectStore methods the data plane and push_dataset use, in memory (`fail`: the store is down)."""

    def __init__(self):
        self.buckets = Buckets()
        self.objects: dict[tuple[str, str], bytes] = {}
        self.fail = False

    def _check(self):
        if self.fail:
            from common.errors import ServiceUnavailable

            raise ServiceUnavailable("object store unavailable: connection refused")

    def ping(self):
        self._check()

    def ensure_buckets(self):
        self._check()

    def put_bytes(self, bucket, key, data, content_type=None):
        self._check()
        self.objects[(bucket, key)] = data
        return ObjectInfo(key, len(data), None, None, content_type)

    def get_bytes(self, bucket, key):
        self._check()
        if (bucket, key) not in self.objects:
            raise NotFound(f"{bucket}/{key}")
        return self.objects[(bucket, key)]

    def delete(self, bucket, key):
        self._check()
        self.objects.pop((bucket, key), None)

    def list(self, bucket, prefix="", recursive=True):
        self._check()
        return [ObjectInfo(k, len(v), None, None) for (b, k), v in sorted(self.objects.items())
                if b == bucket and k.startswith(prefix)]  # fmt: skip

    def delete_prefix(self, bucket, prefix):
        self._check()
        keys = [k for (b, k) in self.objects if b == bucket and k.startswith(prefix)]
        for k in keys:
            del self.objects[(bucket, k)]
        return len(keys)


def make_dataplane(store) -> DataPlane:
    registry = OrganRegistry(SERVICES_DIR, SERVICES_DIR)
    return DataPlane(
        registry,
        {
            organ.name: FakeVolumeClient(len(organ.spec.labels) + 1)
            if organ.spec.volumetric
            else FakeClient()
            for organ in registry.all()
        },
        store,
        results_bucket="medseg-results",
        record_segmentation=lambda session, record: None,
        max_upload_bytes=2_000_000,
        max_image_pixels=4_000_000,
    )


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def small_dataset_zip(pairs: int = 2) -> bytes:
    """A valid paired-layout zip: 32×32 images with binary masks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(pairs):
            zf.writestr(f"{i:03d}.png", png(np.full((32, 32), 40 + i, np.uint8)))
            zf.writestr(f"{i:03d}_mask.png", png(np.pad(np.full((8, 8), 255, np.uint8), 12)))
    return buf.getvalue()


@dataclass
class World:
    engine: object
    store: MemoryStore
    settings: Settings
    users: dict[str, User] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # scope → raw key
    key_rows: dict[str, object] = field(default_factory=dict)
    _apps: dict = field(default_factory=dict)
    _built: list = field(default_factory=list)  # every app built, whose study workers close() stops

    def app(self, settings: Settings | None = None):
        if settings is None:
            if "app" not in self._apps:
                self._apps["app"] = self._build_app(self.settings)
            return self._apps["app"]
        return self._build_app(settings)

    def _build_app(self, settings: Settings, engine=None):
        from gateway.main import create_app

        app = create_app(settings, make_dataplane(self.store))
        engine = engine or self.engine

        factory = sessionmaker(bind=engine, expire_on_commit=False)

        def test_db() -> Iterator:
            yield from request_session(factory)

        app.dependency_overrides[get_db] = test_db
        app.dependency_overrides[get_settings] = lambda: settings
        # the study workers (started by a submitted study) claim and write studies in this database
        app.state.clinic.studies.session_factory = factory
        app.state.clinic.evaluation_jobs.session_factory = factory
        self._built.append(app)
        return app

    def close(self) -> None:
        """Stop the study and evaluation workers of every app built here (before the database goes)."""
        for app in self._built:
            app.state.clinic.studies.close()
            app.state.clinic.evaluation_jobs.close()

    def session(self):
        return session_scope(self.engine)

    def client(
        self, who: str, *, csrf: bool = True, settings: Settings | None = None, engine=None, **kwargs
    ) -> TestClient:
        """`who`: anonymous, a PEOPLE name, or key:<scope>. People get a new session each time.
        `engine`: serve from another engine on the same database (e.g. a read-only one)."""
        app = self._build_app(settings or self.settings, engine) if engine else self.app(settings)
        client = TestClient(app, raise_server_exceptions=False, **kwargs)
        if who.startswith("key:"):
            client.headers["Authorization"] = f"Bearer {self.keys[who[4:]]}"
        elif who != "anonymous":
            with self.session() as session:
                user_session, raw = accounts.start_session(
                    session, session.get(User, self.users[who].id), ttl=timedelta(hours=1)
                )
                user_session.last_seen_at = user_session.created_at  # no write on its first use
            client.cookies.set(self.settings.session_cookie_name, raw)
            if csrf:
                client.headers["X-CSRF-Token"] = user_session.csrf_token
        return client


def sqlite_database(tmp_path_factory, name: str = "people-db") -> str:
    """The URL of a new, migrated SQLite database in a temporary folder named after `name`."""
    url = f"sqlite:///{tmp_path_factory.mktemp(name) / 'medseg.db'}"
    run_migrations(url)
    return url


def _database(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_database(tmp_path_factory)
        return
    server = request.getfixturevalue("postgres_server")
    name = f"people_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name, template="medseg_template")
    yield url
    server.drop_database(name)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def people_db(request, tmp_path_factory) -> Iterator[str]:
    """A migrated database for this module, on each backend in turn."""
    yield from _database(request, tmp_path_factory)


@pytest.fixture(scope="module")
def world(people_db, request) -> Iterator[World]:
    engine = make_engine(people_db)
    settings = Settings(sign_in_max_failures=3, sign_in_window_s=600, **pacs_settings_for(request))
    world = World(engine, MemoryStore(), settings)
    with world.session() as session:
        for name, (role, hospital, status) in PEOPLE.items():
            world.users[name] = accounts.create_user(
                session, email=f"{name}@example.org", password=PASSWORD, full_name=name.title(),
                role=role, status=status, hospital=hospital, actor="test",
            )  # fmt: skip
        for scope in KEY_SCOPES:
            row, raw = create_api_key(
                session, f"system-{scope}", [scope], hospital=HOSPITAL_A if scope == "datasets" else None
            )
            world.keys[scope], world.key_rows[scope] = raw, row
    yield world
    world.close()
    engine.dispose()


def grpc_channel(world: World, app) -> Iterator[grpc.Channel]:
    """A medseg.v1 gRPC server on a free port over `app`'s data plane and clinic and `world`'s database, and
    a channel to it, for a module's `channel` fixture (`yield from grpc_channel(world, app)`)."""
    server, port = create_server("127.0.0.1:0", app.state.dataplane, world.session, clinic=app.state.clinic)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    channel.close()
    server.stop(0)
