"""Promotion in the cluster (gateway/service/model_rollout.py) against the rendered overlays: the gateway is
set to pin versions in the organ Deployments, may get/patch exactly those Deployments and nothing else new,
every right it holds names an object the overlay has, the patch it sends lands on the init container that
chooses the version, and TorchServe's management ports still admit only the trainer."""

from __future__ import annotations

import json
import subprocess

import pytest

from common.settings import Settings
from gateway.service.model_rollout import (
    ALSO_SERVE_ENV,
    PULL_CONTAINER,
    VERSION_ENV,
    deployment_name,
    pin_patch,
)
from services.spec import organ_dirs
from tests.k8s.conftest import K8S, OVERLAYS, by_kind, venv_tool
from tests.k8s.test_manifests import _policies_for

ORGANS = sorted(organ_dirs())
ROLLOUT_ROLE = "medseg-gateway-model-rollout"
MANAGEMENT_PORTS = {"grpc-management", "http-management"}
KINDS = {("apps", "deployments"): "Deployment", ("batch", "cronjobs"): "CronJob", ("batch", "jobs"): "Job"}


def _gateway_config(objects: list[dict]) -> dict:
    return next(c for n, c in by_kind(objects, "ConfigMap").items() if n.startswith("medseg-gateway-"))[
        "data"
    ]


def _gateway_roles(objects: list[dict]) -> dict[str, dict]:
    """The Roles bound to the gateway's service account, by name."""
    roles = by_kind(objects, "Role")
    bound = [
        b["roleRef"]["name"]
        for b in by_kind(objects, "RoleBinding").values()
        if {"kind": "ServiceAccount", "name": "medseg-gateway", "namespace": "medseg"} in b["subjects"]
    ]
    return {name: roles[name] for name in bound}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_is_set_to_pin_versions_in_the_deployments(rendered, overlay):
    config = _gateway_config(rendered[overlay])
    assert config["MEDSEG_MODEL_ROLLOUT"] == "kubernetes"
    assert Settings(model_rollout=config["MEDSEG_MODEL_ROLLOUT"]).model_rollout == "kubernetes"
    assert "MEDSEG_ORGAN_MANAGEMENT_ADDRESSES" not in config  # the gateway never calls the management API


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rollout_role_is_get_and_patch_on_the_organ_deployments_only(rendered, overlay):
    objects = rendered[overlay]
    roles = _gateway_roles(objects)
    assert set(roles) == {ROLLOUT_ROLE, "medseg-gateway-trainer-launcher"}
    assert roles[ROLLOUT_ROLE]["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": sorted(deployment_name(organ) for organ in ORGANS),
            "verbs": ["get", "patch"],
        }
    ]
    # no other right of the gateway touches Deployments (or anything in apps)
    others = [r for name, role in roles.items() if name != ROLLOUT_ROLE for r in role["rules"]]
    assert not [r for r in others if "apps" in r["apiGroups"] or "deployments" in r["resources"]]
    binding = by_kind(objects, "RoleBinding")[ROLLOUT_ROLE]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "medseg-gateway", "namespace": "medseg"}
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_named_right_of_the_gateway_names_an_object_the_overlay_has(rendered, overlay):
    # kustomize rewrites resourceNames that match a generated ConfigMap's name (it once turned
    # cronjobs/medseg-trainer into the ConfigMap's hashed name): the rendered names must still exist.
    objects = rendered[overlay]
    for role in _gateway_roles(objects).values():
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for name in rule.get("resourceNames", []):
                        kind = KINDS[(group, resource)]
                        assert name in by_kind(objects, kind), f"{role['metadata']['name']}: no {kind} {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pin_patch_lands_on_the_init_container_that_chooses_the_version(rendered, overlay, tmp_path):
    for organ in ORGANS:
        deployment = by_kind(rendered[overlay], "Deployment")[deployment_name(organ)]
        before = deployment["spec"]["template"]["spec"]
        # The manifests leave these env entries to the gateway: `kubectl apply` then keeps what it pinned.
        pinned = {VERSION_ENV, ALSO_SERVE_ENV}
        assert all(e["name"] not in pinned for c in before["initContainers"] for e in c.get("env", []))
        path = tmp_path / f"{organ}.json"
        path.write_text(json.dumps(deployment))
        patched = subprocess.run(
            [venv_tool("kubectl"), "patch", "--local", "-f", str(path), "--type", "strategic",
             "-p", json.dumps(pin_patch("20261124.0930", ["20261101.0800"])), "-o", "json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert patched.returncode == 0, patched.stderr
        after = json.loads(patched.stdout)["spec"]["template"]["spec"]
        (pull,) = [c for c in after["initContainers"] if c["name"] == PULL_CONTAINER]
        assert {"name": VERSION_ENV, "value": "20261124.0930"} in pull["env"]
        assert {"name": ALSO_SERVE_ENV, "value": "20261101.0800"} in pull["env"]
        assert len(after["initContainers"]) == len(before["initContainers"])
        assert [e for e in pull["env"] if e["name"] not in pinned] == next(
            c for c in before["initContainers"] if c["name"] == PULL_CONTAINER
        )["env"]
        assert after["containers"] == before["containers"]
        # pull_model.py reads exactly these variables
        script = (K8S / "base" / "organ-server" / "pull_model.py").read_text()
        assert all(f'os.environ.get("{name}"' in script for name in pinned)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_management_ports_still_admit_only_the_trainer(rendered, overlay):
    sources = set()
    for policy in _policies_for(rendered[overlay], "organ-server"):
        for rule in policy["spec"].get("ingress", []):
            if MANAGEMENT_PORTS & {p["port"] for p in rule.get("ports", [])}:
                assert rule.get("from"), f"{policy['metadata']['name']}: management ports open to all"
                sources |= {json.dumps(peer, sort_keys=True) for peer in rule["from"]}
    assert sources == {
        json.dumps({"podSelector": {"matchLabels": {"app.kubernetes.io/component": "trainer"}}})
    }
