"""A real gateway process (`medseg serve`, started by tools.bench.start_gateway as `make bench` and `make
soak` start it) over the test stack's components, with its own SQLite database and an API key; it can be
killed (SIGKILL, no clean-up at all) and started again on the same database, as an operator would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import Engine

from common.settings import Settings
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.security import create_api_key
from tools.bench import gateway_http_url, start_gateway, stop_gateway, wait_gateway_ready

KEY_SCOPES = "segment,evaluate,datasets"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_store_for(servers: dict, directory: Path) -> Path:
    """A model store the gateway reads model names and versions from: the organ servers' own .mar files."""
    directory.mkdir(parents=True, exist_ok=True)
    for organ, (store, model_name) in servers.items():
        (directory / f"{organ}.mar").symlink_to(Path(store) / f"{model_name}.mar")
    return directory


@dataclass
class LiveGateway:
    settings: Settings
    log_path: Path
    engine: Engine
    api_key: str
    proc: subprocess.Popen | None = None

    @classmethod
    def create(cls, settings: Settings, work: Path) -> LiveGateway:
        """Migrate a fresh database under `work`, make a key, bind free ports; not started yet."""
        url = f"sqlite:///{work / 'medseg.db'}"
        run_migrations(url)
        engine = make_engine(url)
        with session_scope(engine) as session:
            api_key = create_api_key(session, "hardening", KEY_SCOPES, actor="test")[1]
        settings = settings.model_copy(
            update={"database_url": url, "http_port": free_port(), "grpc_port": free_port()}
        )
        return cls(settings, work / "gateway.log", engine, api_key)

    @property
    def http_url(self) -> str:
        return gateway_http_url(self.settings)

    @property
    def grpc_address(self) -> str:
        return f"{self.settings.grpc_host}:{self.settings.grpc_port}"

    def start(self, required: tuple[str, ...] | None = None) -> None:
        self.proc = start_gateway(self.settings, self.log_path)
        try:
            wait_gateway_ready(self.proc, self.settings, self.log_path, required=required)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL the whole gateway process group: no shutdown handler, no rollback, no flush."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_gateway(self.proc)

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.http_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=timeout
        )

    def close(self) -> None:
        self.stop()
        self.engine.dispose()
