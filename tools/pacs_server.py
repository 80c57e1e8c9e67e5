"""Local PACS for development and tests: Orthanc (Debian packages `orthanc` and `orthanc-dicomweb`, which
`make system-deps` installs) with its DICOMweb plugin, REST and DICOMweb on one HTTP port (default 8042,
DICOMweb root /dicom-web).

Security: Orthanc 1.10 has no option for the address it binds, so it listens on every interface, but
`RemoteAccessAllowed: false` makes it refuse any client that is not on this machine, and
`AuthenticationEnabled: true` with one generated user (`RegisteredUsers`) refuses every request without
that user's password. The credentials are generated at the first start into `<state>/pacs-credentials.json`
(0600, `{"username", "password"}`, what common.pacs reads); the configuration that repeats them is 0600 too.
Orthanc's DICOM (DIMSE) port is off: MedSeg speaks DICOMweb only. Lua scripting over REST is off; WebDAV is
off. Data (Orthanc's SQLite index and its files) lives under `<state>/pacs/db` and survives restarts.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from common.errors import ServiceUnavailable
from common.pacs import CREDENTIALS_FILE, PacsCredentials, read_credentials_file
from common.settings import Settings
from tools.managed_process import HOST, ManagedProcess, create_private, port_is_free, write_private

logger = logging.getLogger(__name__)

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
# `dpkg -L orthanc-dicomweb`: the package links its versioned library here, where Orthanc's own plugins live
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"
INSTALL_HINT = "install it with `make system-deps` (Debian: apt-get install orthanc orthanc-dicomweb)"


def orthanc_binary() -> Path:
    for candidate in (shutil.which("Orthanc"), *ORTHANC_CANDIDATES):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise ServiceUnavailable(f"the local PACS cannot start: no Orthanc binary; {INSTALL_HINT}")


def installed() -> bool:
    """Orthanc and its DICOMweb plugin are both installed."""
    try:
        orthanc_binary()
    except ServiceUnavailable:
        return False
    return DICOMWEB_PLUGIN.exists()


def load_or_create_credentials(path: Path) -> PacsCredentials:
    """The local PACS's one user, generated at the first start (0600)."""
    existing = read_credentials_file(path)
    if existing:
        return existing
    creds = PacsCredentials("medseg", secrets.token_urlsafe(24))
    text = json.dumps({"username": creds.username, "password": creds.password}, indent=2)
    create_private(path, text)  # another program's, if it won
    logger.info("the local PACS credentials in %s", path)
    return read_credentials_file(path)


def local_port(settings: Settings) -> int | None:
    """The port of `settings.pacs_url` when it names this machine (then `make up` runs Orthanc there);
    None when the PACS is elsewhere (a hospital's)."""
    parts = urlsplit(settings.pacs_url)
    if parts.hostname not in (HOST, "localhost"):
        return None
    return parts.port or 80


class PacsServer(ManagedProcess):
    """Start and stop one local Orthanc whose configuration and data live under `state_dir/pacs`."""

    name = "PACS"

    def __init__(
        self,
        state_dir: Path,
        port: int = 8042,
        *,
        pid_path: Path | None = None,
        lua_scripts: Sequence[Path] = (),
    ):
        """`lua_scripts`: Orthanc Lua scripts loaded at start (a test's PACS refuses objects with one)."""
        self.state_dir = Path(state_dir)
        self.port = port
        self.home = self.state_dir / "pacs"
        self.config_path = self.home / "orthanc.json"
        self.credentials_path = self.state_dir / CREDENTIALS_FILE
        self.pid_path = pid_path or self.home / "orthanc.pid"
        self.log_path = self.state_dir / "logs" / "pacs.log"
        self.lua_scripts = [Path(p) for p in lua_scripts]
        self._proc: subprocess.Popen | None = None

    @classmethod
    def from_settings(cls, settings: Settings, pid_path: Path | None = None) -> PacsServer | None:
        """The local Orthanc `settings.pacs_url` names, or None when the configured PACS is not local."""
        port = local_port(settings)
        return None if port is None else cls(settings.state_dir, port, pid_path=pid_path)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The DICOMweb root (what MEDSEG_PACS_URL names)."""
        return self.base_url + DICOMWEB_ROOT

    @property
    def credentials(self) -> PacsCredentials:
        return load_or_create_credentials(self.credentials_path)

    # --- process control ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> PacsCredentials:
        """Start Orthanc (no-op when it already runs), wait until its DICOMweb answers our user."""
        if self.running_pid():
            logger.info("PACS already running (pid %s) at %s", self.running_pid(), self.url)
            self.wait_ready(timeout)
            return self.credentials
        if not DICOMWEB_PLUGIN.exists():
            raise ServiceUnavailable(
                f"the local PACS cannot start: no DICOMweb plugin at {DICOMWEB_PLUGIN}; {INSTALL_HINT}"
            )
        if not port_is_free(self.port):
            raise ServiceUnavailable(
                f"the local PACS cannot start: port {self.port} is already in use on {HOST} (a system "
                "Orthanc service? `systemctl disable --now orthanc`, or set MEDSEG_PACS_URL to another port)"
            )
        creds = self.prepare()
        self.launch(
            self.command(),
            cwd=self.home,
            timeout=timeout,
            where=f"{self.url}, data in {self.home / 'db'}",
            url=self.url,
        )
        return creds

    def command(self) -> list[str]:
        """The foreground Orthanc command line (run in `home`, after `prepare()`)."""
        return [str(orthanc_binary()), "--no-jobs", str(self.config_path)]

    def prepare(self) -> PacsCredentials:
        """Write the configuration (and the credentials at the first start) a start needs (a supervisor runs
        `command()` then)."""
        return self._write_config()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll until QIDO-RS answers our user (Orthanc up, the plugin loaded, the credentials right)."""
        auth = (self.credentials.username, self.credentials.password)
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServiceUnavailable(
                    f"the local PACS exited with code {self._proc.returncode}; log tail:\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.url}/studies", params={"limit": 1}, auth=auth, timeout=5.0)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServiceUnavailable(
            f"the local PACS is not ready after {timeout:.0f}s ({last}); log tail:\n{self.log_tail()}"
        )

    # --- configuration ------------------------------------------------------------------------------
    def _write_config(self) -> PacsCredentials:
        (self.home / "db").mkdir(parents=True, exist_ok=True)
        creds = self.credentials
        config = {
            "Name": "MedSeg local PACS",
            "StorageDirectory": str(self.home / "db"),
            "IndexDirectory": str(self.home / "db"),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {creds.username: creds.password},
            "DicomServerEnabled": False,
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "LuaScripts": [str(p) for p in self.lua_scripts],
            "HttpDescribeErrors": True,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StorageCompression": False,
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": False, "Ssl": False},
        }
        write_private(self.config_path, json.dumps(config, indent=2))
        return creds
