"""Every overlay renders, every object is valid Kubernetes, and the manifests keep the promises of
docs/operations.md: one server per organ, probes and limits, non-root, NetworkPolicies, no Secrets."""

from __future__ import annotations

import json
import subprocess

import kubernetes_validate
import pytest
import yaml

from services.spec import organ_dirs
from tests.k8s.conftest import K8S, OVERLAYS, by_kind, pod_spec, render, venv_tool

ORGANS = sorted(organ_dirs())
WORKLOADS = ("Deployment", "StatefulSet")  # long-running: must be probed
# created by the operator (docs/operations.md), never committed
SECRETS = {"medseg-postgres", "medseg-s3", "medseg-pacs"}
# dev's Orthanc standing in for the hospital's PACS (overlays/dev/orthanc.yaml, tests/k8s/test_dev_pacs.py)
DEV_PACS = "orthanc.yaml"
DEV_PACS_OBJECTS = {("Deployment", "orthanc"), ("Service", "orthanc"), ("NetworkPolicy", "pacs-from-gateway")}


def test_there_are_organs_to_deploy():
    assert {"liver", "cells"} <= set(ORGANS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate_strictly_against_kubernetes_schemas(rendered, overlay):
    errors = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # kinds from CRDs (Gateway API, CloudNativePG, cert-manager): checked by test_platform.py
            assert obj["apiVersion"].split("/")[0].endswith((".io", ".k8s.io")), obj["apiVersion"]
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)
    assert len(rendered[overlay]) > 30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cli_validator_accepts_the_rendered_overlay(rendered, overlay, tmp_path):
    # The same check an operator runs: kubernetes-validate --strict on the rendered file.
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(rendered[overlay]))
    result = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "--quiet", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_an_unknown_field():
    # Guards the two tests above against a validator that accepts anything.
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("organ", ORGANS)
def test_each_organ_has_its_own_deployment_service_and_hpa(rendered, overlay, organ):
    objects = rendered[overlay]
    name = f"torchserve-{organ}"
    deployment = by_kind(objects, "Deployment").get(name)
    service = by_kind(objects, "Service").get(name)
    hpa = by_kind(objects, "HorizontalPodAutoscaler").get(name)
    assert deployment and service and hpa, f"{organ}: missing Deployment/Service/HPA {name}"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"]["medseg.io/organ"] == organ
    assert service["spec"]["selector"]["medseg.io/organ"] == organ
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    pdb = by_kind(objects, "PodDisruptionBudget")[name]
    assert pdb["spec"]["selector"]["matchLabels"]["medseg.io/organ"] == organ


@pytest.mark.parametrize("organ", ORGANS)
def test_organ_config_maps_carry_the_organs_own_files(rendered, organ):
    objects = rendered["dev"]
    spec = by_kind(objects, "Deployment")[f"torchserve-{organ}"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    config = by_kind(objects, "ConfigMap")[volumes["organ-config"]["configMap"]["name"]]
    organ_dir = organ_dirs()[organ]
    for filename in ("config.properties", "model-config.yaml", "spec.yaml"):
        assert config["data"][filename] == (organ_dir / filename).read_text(), f"{organ}/{filename}"
    model = by_kind(objects, "ConfigMap")[spec["initContainers"][0]["envFrom"][1]["configMapRef"]["name"]]
    assert model["data"]["MEDSEG_ORGAN"] == organ
    assert model["data"]["TS_LOAD_MODELS"] == "all"  # the default and the versions served beside it


def test_gateway_and_trainer_know_every_organ_server(rendered):
    config_maps = by_kind(rendered["dev"], "ConfigMap")
    gateway = next(c for n, c in config_maps.items() if n.startswith("medseg-gateway-"))
    trainer = next(c for n, c in config_maps.items() if n.startswith("medseg-trainer-"))
    services = by_kind(rendered["dev"], "Service")
    inference = json.loads(gateway["data"]["MEDSEG_ORGAN_ADDRESSES"])
    management = json.loads(trainer["data"]["MEDSEG_ORGAN_MANAGEMENT_ADDRESSES"])
    assert sorted(inference) == ORGANS and sorted(management) == ORGANS
    for organ in ORGANS:
        # management through the headless Service too: a new version is registered with every replica
        pod_ports = {p["name"]: p["port"] for p in services[f"torchserve-pods-{organ}"]["spec"]["ports"]}
        assert management[organ] == f"dns:///torchserve-pods-{organ}:{pod_ports['grpc-management']}"
        # inference goes to the headless Service: DNS lists every replica and the gateway's channel
        # balances over them (a ClusterIP would pin each gateway replica to one organ pod)
        pods = services[f"torchserve-pods-{organ}"]
        assert pods["spec"]["clusterIP"] == "None"
        assert pods["spec"]["selector"] == services[f"torchserve-{organ}"]["spec"]["selector"]
        assert inference[organ] == f"dns:///torchserve-pods-{organ}:{pod_ports['grpc-inference']}"


def _containers(obj: dict):
    spec = pod_spec(obj)
    for container in spec.get("initContainers", []):
        yield "init", container
    for container in spec["containers"]:
        yield "main", container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_limits_and_every_server_container_has_probes(rendered, overlay):
    problems, checked = [], 0
    for obj in rendered[overlay]:
        if pod_spec(obj) is None:
            continue
        for role, container in _containers(obj):
            checked += 1
            where = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                    problems.append(f"{where}: no cpu and memory {kind}")
            # Init containers may not have probes; Jobs run to completion with a deadline instead.
            if role == "main" and obj["kind"] in WORKLOADS:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in container:
                        problems.append(f"{where}: no {probe}")
    assert checked >= 10
    assert not problems, "\n".join(problems)


def test_probes_ask_the_right_endpoints(rendered):
    deployments = by_kind(rendered["dev"], "Deployment")
    gateway = deployments["medseg-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["grpc"]["port"] == 50051  # gRPC health service
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for organ in ORGANS:
        server = deployments[f"torchserve-{organ}"]["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["httpGet"] == {"path": "/ping", "port": "http-inference"}
        env = {e["name"]: e.get("value") for e in server["env"]}
        # /ping answers 400 without a token while token authorization is on (TorchServe 0.12).
        assert env["TS_DISABLE_TOKEN_AUTHORIZATION"] == "true"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_read_only_root_filesystems(rendered, overlay):
    problems = []
    for obj in rendered[overlay]:
        spec = pod_spec(obj)
        if spec is None:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        pod_security = spec.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True or pod_security.get("runAsUser", 0) == 0:
            problems.append(f"{name}: not runAsNonRoot with a non-zero runAsUser")
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        mounts_needed = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for _, container in _containers(obj):
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{container['name']}: allowPrivilegeEscalation not false")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{container['name']}: root filesystem writable")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/{container['name']}: capabilities not dropped")
            if not any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", [])):
                problems.append(f"{name}/{container['name']}: no writable /tmp")
        assert mounts_needed, f"{name}: read-only root but no emptyDir volume"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_committed(rendered, overlay):
    objects = rendered[overlay]
    assert not [o for o in objects if o["kind"] == "Secret"]
    referenced = set()
    for obj in objects:
        if pod_spec(obj) is None:
            continue
        for _, container in _containers(obj):
            for env in container.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    referenced.add(ref["name"])
                assert "password" not in env["name"].lower() or "valueFrom" in env, env["name"]
    assert referenced == SECRETS
    operations = (K8S.parent / "docs" / "operations.md").read_text()
    for secret in SECRETS | {"medseg-tls"}:
        assert "create secret" in operations and secret in operations, (
            f"docs do not say how to create {secret}"
        )


def _policies_for(objects, component):
    for policy in by_kind(objects, "NetworkPolicy").values():
        selector = policy["spec"]["podSelector"]
        labels = selector.get("matchLabels", {})
        if not labels or labels.get("app.kubernetes.io/component") == component:
            yield policy


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_inference_and_only_the_trainer_management(rendered, overlay):
    objects = rendered[overlay]
    policies = list(_policies_for(objects, "organ-server"))
    default_deny = [p for p in policies if not p["spec"]["podSelector"]]
    assert default_deny and all("ingress" not in p["spec"] for p in default_deny)
    allowed: dict[str, set[str]] = {}
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("ports") and rule.get("from"), f"{policy['metadata']['name']}: rule open to all"
            sources = set()
            for peer in rule["from"]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    sources.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"])
                else:
                    sources.add(json.dumps(peer, sort_keys=True))
            for port in rule["ports"]:
                allowed.setdefault(port["port"], set()).update(sources)
    assert allowed["grpc-inference"] == {"gateway"}
    assert allowed["grpc-management"] == {"trainer"}
    # the plaintext HTTP APIs (images in clear) admit no pod: the gateway and the trainer speak gRPC over TLS
    assert "http-inference" not in allowed and "http-management" not in allowed
    # The named ports the policies rely on exist on every organ server's container.
    for organ in ORGANS:
        container = by_kind(objects, "Deployment")[f"torchserve-{organ}"]["spec"]["template"]["spec"]
        names = {p["name"] for p in container["containers"][0]["ports"]}
        assert set(allowed) <= names


def test_gateway_may_launch_trainer_jobs_and_nothing_more(rendered):
    objects = rendered["prod"]
    roles = by_kind(objects, "Role")
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = by_kind(objects, "RoleBinding")["medseg-gateway-trainer-launcher"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "medseg-gateway", "namespace": "medseg"}
    ]
    rules = roles[binding["roleRef"]["name"]]["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("batch", "jobs", "create") in granted
    assert not any("*" in item for item in granted)
    assert not any(r in ("secrets", "roles", "rolebindings", "pods/exec") for _, r, _ in granted)
    assert not any(v in ("update", "patch") and r == "cronjobs" for _, r, v in granted)
    # The trainer template the gateway copies runs under its own token-less account.
    trainer = pod_spec(by_kind(objects, "CronJob")["medseg-trainer"])
    assert (
        trainer["serviceAccountName"] == "medseg-trainer" and trainer["automountServiceAccountToken"] is False
    )
    assert by_kind(objects, "CronJob")["medseg-trainer"]["spec"]["suspend"] is True
    mounted = [
        o["metadata"]["name"] for o in objects if (s := pod_spec(o)) and s.get("automountServiceAccountToken")
    ]
    assert mounted == ["medseg-gateway"]


def test_prod_differs_from_dev_only_by_patches_and_digests(rendered):
    dev, prod = (yaml.safe_load((K8S / "overlays" / o / "kustomization.yaml").read_text()) for o in OVERLAYS)
    assert prod.get("patches"), "prod has no patches"
    # prod's `images` only pin digests (tests/k8s/test_platform.py checks every image is pinned)
    assert prod.get("images") and all(set(i) == {"name", "newTag", "digest"} for i in prod["images"])
    assert {k: v for k, v in dev.items() if k not in ("patches", "resources")} == {
        k: v for k, v in prod.items() if k not in ("patches", "resources", "images")
    }
    assert not dev.get("patches")
    assert dev["resources"] == [*prod["resources"], DEV_PACS] and prod["resources"] == ["../../base"]
    # Same objects (patches change fields, never add or remove objects), but dev's stand-in PACS ...
    names = {o: {(x["kind"], x["metadata"]["name"]) for x in rendered[o]} for o in OVERLAYS}
    strip = lambda ids: {(k, n.rsplit("-", 1)[0] if k == "ConfigMap" else n) for k, n in ids}  # noqa: E731
    assert strip(names["dev"]) == strip(names["prod"]) | DEV_PACS_OBJECTS
    # ... and the dev overlay is the base as it is, plus that.
    pacs = [o for o in rendered["dev"] if (o["kind"], o["metadata"]["name"]) in DEV_PACS_OBJECTS]
    assert [o for o in rendered["dev"] if o not in pacs] == render(K8S / "base")


def _cpu_limit(objects: list[dict], deployment: str) -> str:
    return by_kind(objects, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ]["limits"]["cpu"]


def test_prod_patches_scale_resources_storage_and_tls(rendered):
    dev, prod = rendered["dev"], rendered["prod"]
    for organ in ORGANS:
        name = f"torchserve-{organ}"
        assert by_kind(prod, "HorizontalPodAutoscaler")[name]["spec"]["minReplicas"] >= 2
        # the organ's measured resources in both: the autoscaler's arithmetic holds in each (test_organ_pods)
        assert _cpu_limit(prod, name) == _cpu_limit(dev, name)
    for deployment in by_kind(prod, "Deployment").values():
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    claim = by_kind(prod, "StatefulSet")["minio"]["spec"]["volumeClaimTemplates"][0]["spec"]
    assert (
        claim.get("storageClassName")
        and "storageClassName"
        not in (by_kind(dev, "StatefulSet")["minio"]["spec"]["volumeClaimTemplates"][0]["spec"])
    )
    database = by_kind(prod, "Cluster")["medseg-db"]["spec"]
    assert (
        database["storage"].get("storageClass")
        and "storageClass" not in (by_kind(dev, "Cluster")["medseg-db"]["spec"]["storage"])
    )
    # TLS at the Gateway in prod, and no clear-text listener at all
    listeners = by_kind(prod, "Gateway")["medseg"]["spec"]["listeners"]
    assert {li["protocol"] for li in listeners} == {"HTTPS"}
    assert all(li["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "medseg-tls"}] for li in listeners)
    assert {li["protocol"] for li in by_kind(dev, "Gateway")["medseg"]["spec"]["listeners"]} == {"HTTP"}


def test_every_organ_folder_has_an_overlay_entry():
    listed = yaml.safe_load((K8S / "base" / "organs" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == ORGANS, "run `make k8s-organs` (python -m tools.k8s_organs)"


def test_checked_in_organ_manifests_are_the_generators_output():
    """Adding an organ folder and running the generator is all k8s/ needs: nothing organ-specific is
    written by hand."""
    from tools.k8s_organs import differences, generated_files

    assert not differences(), "stale organ manifests: run `make k8s-organs` (python -m tools.k8s_organs)"
    written = {p.relative_to(K8S).as_posix() for p in generated_files()}
    assert {f"base/organs/{organ}/kustomization.yaml" for organ in ORGANS} <= written
