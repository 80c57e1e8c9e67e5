"""Static security scan (checkov) of the rendered overlays and of the images' Dockerfile.

No failed check is accepted. checkov without a Prisma Cloud key reports no severities, so rather than
filter on "high" we allow none at all: an exception is a `checkov.io/skipN: CHECK=reason` annotation on
the object, and each one must give its reason.

checkov pins packaging<24 while our pytest needs packaging>=24, so it runs from its own venv,
build/venv-checkov, created from tests/k8s/requirements-checkov.txt in the background from the first
Kubernetes test on (tests/k8s/conftest.py, `checkov_install`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import K8S, OVERLAYS


@pytest.fixture(scope="module")
def checkov(checkov_install) -> list[str]:
    """The command that runs checkov: its venv's interpreter with `-m checkov.main`, not the `checkov`
    script, whose shebang names the path the venv was created at (build/ is shared by worktrees, which come
    and go)."""
    python = checkov_install.wait()
    return [str(python), "-W", "ignore::SyntaxWarning", "-m", "checkov.main"]


def run_checkov(checkov: list[str], path: Path, framework: str) -> dict:
    result = subprocess.run(
        [
            *checkov,
            "--file",
            str(path),
            "--framework",
            framework,
            "--output",
            "json",
            "--compact",
            "--quiet",
            "--skip-download",
        ],  # offline: no Prisma Cloud guidelines
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout.strip(), (
        f"checkov printed nothing (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    return report


def _failures(report: dict) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']} — {c['resource']}"
        for c in report.get("results", {}).get("failed_checks", [])
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_has_no_unjustified_finding(checkov, rendered, overlay, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(rendered[overlay]))
    report = run_checkov(checkov, path, "kubernetes")
    assert report["summary"]["passed"] > 300, report["summary"]  # it really scanned the objects
    assert report["summary"]["parsing_errors"] == 0
    assert not _failures(report), "\n".join(_failures(report))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_skipped_check_is_justified_in_the_manifest(rendered, overlay):
    skips = [
        (o["metadata"]["name"], key, value)
        for o in rendered[overlay]
        for key, value in (o["metadata"].get("annotations") or {}).items()
        if key.startswith("checkov.io/skip")
    ]
    assert skips  # the scan above is only honest together with this one
    for name, key, value in skips:
        check, _, reason = value.partition("=")
        assert check.startswith("CKV") and len(reason.split()) >= 4, f"{name} {key}: give a reason: {value!r}"


def test_dockerfile_has_no_finding(checkov):
    report = run_checkov(checkov, K8S / "images" / "Dockerfile", "dockerfile")
    assert report["summary"]["passed"] > 50, report["summary"]
    assert not _failures(report), "\n".join(_failures(report))


def test_scanner_reports_a_planted_finding(checkov, tmp_path):
    # A privileged, root, unlimited pod must fail: proves the scan above can fail.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "medseg"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(pod))
    failed = {c.split()[0] for c in _failures(run_checkov(checkov, path, "kubernetes"))}
    assert {"CKV_K8S_16", "CKV_K8S_11"} <= failed, failed
