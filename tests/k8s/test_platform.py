"""The cluster-wide promises of the manifests (issue #23), checked on the rendered overlays:

* strict schema validation for every Kubernetes version we support (1.30-1.33), and our own check of the
  objects whose kinds come from CRDs (Gateway API, CloudNativePG, Barman Cloud plugin, cert-manager), which
  kubernetes-validate has no schema for;
* every Deployment spreads over nodes, has a preStop hook and a PodDisruptionBudget (parametrised per
  Deployment: the organ servers' fail until their template (branch k8sboot) adds spread and preStop);
* prod pins every image by digest, nothing is `latest`, our images come from the registry the project sets;
* the body limits of the app, the route timeouts and the gateway's spool volume agree;
* TLS inside (S3 and the organ servers' gRPC verified against the internal CA, PostgreSQL with
  sslmode=verify-full);
* egress is denied by default and each hole is one a component needs;
* PostgreSQL is archived and backed up into a bucket the bucket-policy Job creates, results are versioned.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml

from common.bucket_policy import BACKUP_BUCKET
from common.settings import Settings
from gateway.api.uploads import FORM_OVERHEAD_BYTES
from services.spec import load_organ_spec, organ_dirs
from tests.k8s.conftest import K8S, OVERLAYS, by_kind, pod_spec, render, venv_tool

KUBERNETES_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0")
# Kinds from CRDs: kubernetes-validate has no schema for them; test_crd_objects_have_their_required_fields
# checks them against the CRDs' required fields (Gateway API v1.6, CloudNativePG 1.30, plugin-barman-cloud
# 0.14, cert-manager v1).
CRD_KINDS = {
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("postgresql.cnpg.io/v1", "ScheduledBackup"),
    ("barmancloud.cnpg.io/v1", "ObjectStore"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
OUR_REGISTRY = "registry.example.org/medseg/"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
GIB = 1024**3
# Gateway API Duration (GEP-2257), as in the HTTPRoute CRD's pattern.
DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")


def _rendered_prod_deployments() -> list[str]:
    return sorted(by_kind(render(K8S / "overlays" / "prod"), "Deployment"))


def _seconds(duration: str) -> float:
    assert DURATION.match(duration), duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(h|ms|m|s)", duration))


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9]+)([KMGT]i)?", quantity).groups()
    return int(number) * {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4}[unit]


def _containers(obj: dict):
    spec = pod_spec(obj)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def _gateway_settings(objects: list[dict], monkeypatch) -> Settings:
    """The gateway's Settings as its pods read them: the ConfigMap's MEDSEG_* in the environment."""
    config = next(c for n, c in by_kind(objects, "ConfigMap").items() if n.startswith("medseg-gateway-"))
    with monkeypatch.context() as env:
        for name, value in config["data"].items():
            env.setenv(name, value)
        return Settings()


# --- schemas ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_strictly_for_each_supported_kubernetes_version(rendered, overlay, version):
    errors, unknown = [], set()
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add((obj["apiVersion"], obj["kind"]))
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)
    # Only the CRD kinds our own check covers are left unvalidated.
    assert unknown == CRD_KINDS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_cli_validator_accepts_prod_for_each_supported_version(rendered, version, tmp_path):
    import subprocess

    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump_all(rendered["prod"]))
    result = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "--no-warn", "-k", version, str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "ERROR" not in result.stdout, result.stdout + result.stderr


def crd_problems(objects: list[dict]) -> list[str]:
    """What the CRDs require and what the objects refer to, for the kinds kubernetes-validate cannot check."""
    problems = []
    gateways = by_kind(objects, "Gateway")
    services = by_kind(objects, "Service")
    issuers = by_kind(objects, "Issuer")
    certificates = by_kind(objects, "Certificate")
    clusters = by_kind(objects, "Cluster")
    stores = by_kind(objects, "ObjectStore")

    def need(obj, *path):
        node = obj
        for key in path:
            if not isinstance(node, dict) or node.get(key) in (None, "", [], {}):
                problems.append(f"{obj['kind']}/{obj['metadata']['name']}: no {'.'.join(path)}")
                return None
            node = node[key]
        return node

    for gateway in gateways.values():
        need(gateway, "spec", "gatewayClassName")
        names = []
        for listener in need(gateway, "spec", "listeners") or []:
            for field in ("name", "port", "protocol"):
                if field not in listener:
                    problems.append(f"Gateway/{gateway['metadata']['name']}: a listener without {field}")
            names.append(listener.get("name"))
            if listener.get("protocol") == "HTTPS" and not listener.get("tls", {}).get("certificateRefs"):
                problems.append(f"Gateway listener {listener.get('name')}: HTTPS without a certificate")
        if len(names) != len(set(names)):
            problems.append(f"Gateway/{gateway['metadata']['name']}: listener names repeat")

    for kind in ("HTTPRoute", "GRPCRoute"):
        for route in by_kind(objects, kind).values():
            where = f"{kind}/{route['metadata']['name']}"
            for parent in need(route, "spec", "parentRefs") or []:
                gateway = gateways.get(parent["name"])
                listeners = {li["name"]: li for li in (gateway or {}).get("spec", {}).get("listeners", [])}
                listener = listeners.get(parent.get("sectionName"))
                if listener is None:
                    problems.append(
                        f"{where}: no listener {parent.get('sectionName')} on Gateway {parent['name']}"
                    )
                elif listener.get("hostname") not in route["spec"].get("hostnames", []):
                    problems.append(f"{where}: its hostnames miss its listener's {listener.get('hostname')}")
            for rule in need(route, "spec", "rules") or []:
                for backend in rule.get("backendRefs") or [
                    problems.append(f"{where}: a rule without backends")
                ]:
                    if backend is None:
                        continue
                    ports = [
                        p["port"] for p in services.get(backend["name"], {}).get("spec", {}).get("ports", [])
                    ]
                    if backend.get("port") not in ports:
                        problems.append(
                            f"{where}: backend {backend['name']}:{backend.get('port')} is no Service port"
                        )
                for value in (rule.get("timeouts") or {}).values():
                    if not DURATION.match(value):
                        problems.append(f"{where}: timeout {value!r} is no Gateway API duration")

    for cluster in clusters.values():
        if not isinstance(cluster["spec"].get("instances"), int) or cluster["spec"]["instances"] < 1:
            problems.append(f"Cluster/{cluster['metadata']['name']}: spec.instances is required (>= 1)")
        need(cluster, "spec", "bootstrap", "initdb", "secret", "name")
        for plugin in cluster["spec"].get("plugins", []):
            if "name" not in plugin:
                problems.append(f"Cluster/{cluster['metadata']['name']}: a plugin without name")
            store = plugin.get("parameters", {}).get("barmanObjectName")
            if store not in stores:
                problems.append(f"Cluster/{cluster['metadata']['name']}: no ObjectStore {store}")
    for backup in by_kind(objects, "ScheduledBackup").values():
        schedule = need(backup, "spec", "schedule")
        if schedule and len(schedule.split()) != 6:
            problems.append(f"ScheduledBackup/{backup['metadata']['name']}: the schedule has six fields")
        if need(backup, "spec", "cluster", "name") not in clusters:
            problems.append(f"ScheduledBackup/{backup['metadata']['name']}: no such Cluster")
        if backup["spec"].get("method") == "plugin":
            need(backup, "spec", "pluginConfiguration", "name")
    for store in stores.values():
        need(store, "spec", "configuration", "destinationPath")
    for certificate in certificates.values():
        need(certificate, "spec", "secretName")
        if need(certificate, "spec", "issuerRef", "name") not in issuers:
            problems.append(f"Certificate/{certificate['metadata']['name']}: no such Issuer")
    for issuer in issuers.values():
        kinds = {"selfSigned", "ca", "acme", "vault", "venafi"} & set(issuer.get("spec", {}))
        if len(kinds) != 1:
            problems.append(f"Issuer/{issuer['metadata']['name']}: exactly one issuer type, not {kinds}")
        if "ca" in kinds and need(issuer, "spec", "ca", "secretName") not in {
            c["spec"]["secretName"] for c in certificates.values() if c["spec"].get("isCA")
        }:
            problems.append(f"Issuer/{issuer['metadata']['name']}: its CA Secret is no CA Certificate's")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crd_objects_have_their_required_fields(rendered, overlay):
    objects = rendered[overlay]
    assert {(o["apiVersion"], o["kind"]) for o in objects} >= CRD_KINDS
    assert not crd_problems(objects), "\n".join(crd_problems(objects))


def test_the_crd_check_finds_what_is_missing(rendered):
    # Guards the test above against a check that accepts anything.
    objects = yaml.safe_load(yaml.safe_dump(rendered["prod"]))
    gateway = by_kind(objects, "Gateway")["medseg"]
    del gateway["spec"]["listeners"][0]["tls"]
    by_kind(objects, "HTTPRoute")["medseg-gateway"]["spec"]["rules"][0]["backendRefs"][0]["port"] = 9102
    del by_kind(objects, "Cluster")["medseg-db"]["spec"]["instances"]
    by_kind(objects, "ScheduledBackup")["medseg-db-nightly"]["spec"]["cluster"]["name"] = "nope"
    problems = "\n".join(crd_problems(objects))
    for expected in (
        "HTTPS without a certificate",
        "9102 is no Service port",
        "spec.instances",
        "no such Cluster",
    ):
        assert expected in problems


# --- availability: spread, graceful stop, disruption budget ------------------------------------------------
@pytest.mark.parametrize("deployment", _rendered_prod_deployments())
def test_every_deployment_spreads_stops_gracefully_and_has_a_pdb(rendered, deployment):
    """Fails for the organ servers until branch k8sboot's organ-server template (spread, preStop) lands."""
    for overlay in OVERLAYS:
        obj = by_kind(rendered[overlay], "Deployment")[deployment]
        template = obj["spec"]["template"]
        labels = template["metadata"]["labels"]
        spec = template["spec"]
        spread = [
            c
            for c in spec.get("topologySpreadConstraints", [])
            if c["topologyKey"] == "kubernetes.io/hostname"
        ]
        assert spread, f"{overlay} {deployment}: no topology spread over nodes"
        for constraint in spread:
            selector = constraint["labelSelector"]["matchLabels"]
            assert selector.items() <= labels.items(), f"{deployment}: the spread counts other pods"
            assert constraint["maxSkew"] == 1
        for container in spec["containers"]:
            pre_stop = container.get("lifecycle", {}).get("preStop")
            assert pre_stop, f"{overlay} {deployment}/{container['name']}: no preStop hook"
            if "sleep" in pre_stop:
                assert spec.get("terminationGracePeriodSeconds", 30) > pre_stop["sleep"]["seconds"]
        budgets = [
            p
            for p in by_kind(rendered[overlay], "PodDisruptionBudget").values()
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(budgets) == 1, (
            f"{overlay} {deployment}: {len(budgets)} PodDisruptionBudgets select its pods"
        )
        [budget] = budgets
        assert budget["spec"].get("maxUnavailable") == 1 or "minAvailable" in budget["spec"]


def test_the_database_is_spread_and_budgeted_by_its_operator(rendered):
    cluster = by_kind(rendered["prod"], "Cluster")["medseg-db"]["spec"]
    assert cluster["instances"] >= 3 and cluster["enablePDB"] is True
    assert cluster["affinity"]["podAntiAffinityType"] == "required"
    assert cluster["affinity"]["topologyKey"] == "kubernetes.io/hostname"


# --- images -------------------------------------------------------------------------------------------------
def _images(objects: list[dict]) -> list[tuple[str, str]]:
    found = []
    for obj in objects:
        if pod_spec(obj) is not None:
            found += [
                (f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}", c["image"]) for c in _containers(obj)
            ]
        if obj["kind"] == "Cluster":
            found.append((f"Cluster/{obj['metadata']['name']}", obj["spec"]["imageName"]))
    return found


def test_prod_pins_every_image_by_digest_and_nothing_is_latest(rendered):
    images = _images(rendered["prod"])
    assert len(images) >= 10
    unpinned = [f"{where}: {image}" for where, image in images if not DIGEST.search(image)]
    assert not unpinned, "tag-only images in prod:\n" + "\n".join(unpinned)
    for overlay in OVERLAYS:
        for where, image in _images(rendered[overlay]):
            name = image.split("@")[0]
            assert ":" in name.rsplit("/", 1)[-1] and not name.endswith(":latest"), (
                f"{overlay} {where}: {image}"
            )


def test_our_images_come_from_the_registry_the_project_sets(rendered):
    ours = {
        image.split("@")[0]
        for _, image in _images(rendered["prod"])
        if "/medseg/" in image or "medseg/" in image
    }
    assert ours and all(image.startswith(OUR_REGISTRY) for image in ours), ours
    assert {image.split(":")[0].removeprefix(OUR_REGISTRY) for image in ours} == {
        "gateway",
        "organ-server",
        "trainer",
    }
    assert not [
        image for _, image in _images(rendered["prod"]) if image.startswith(("docker.io/", "medseg/"))
    ]


# --- limits -------------------------------------------------------------------------------------------------
def test_upload_limits_timeouts_and_the_spool_agree(rendered, monkeypatch):
    """One set of numbers: the app's body limits (the gateway's ConfigMap), the HTTPRoute's timeouts and the
    gateway's /tmp spool. The arithmetic is the one docs/operations.md ("Limits") states."""
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        settings = _gateway_settings(objects, monkeypatch)
        dataset = (
            settings.max_dataset_upload_bytes + FORM_OVERHEAD_BYTES
        )  # the app's limits (gateway/main.py)
        study = settings.study_max_bytes + FORM_OVERHEAD_BYTES * 16
        assert settings.max_dataset_upload_bytes == 2 * GIB and settings.study_max_bytes == 1 * GIB

        # the spool: the gateway admits uploads declaring up to upload_spool_bytes at once (then 507), which
        # takes two of the largest at once; the volume holds that budget with a margin, reserved on the node
        pod = by_kind(objects, "Deployment")["medseg-gateway"]["spec"]["template"]["spec"]
        [gateway] = pod["containers"]
        tmp_mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == str(settings.upload_tmp_dir))
        volume = next(v for v in pod["volumes"] if v["name"] == tmp_mount["name"])
        spool = _bytes(volume["emptyDir"]["sizeLimit"])
        budget = settings.upload_spool_bytes
        assert budget >= 2 * max(dataset, study, settings.max_request_bytes), budget
        assert spool >= budget + 512 * 1024**2, (spool, budget)
        assert _bytes(gateway["resources"]["requests"]["ephemeral-storage"]) >= spool

        # the proxy: streams bodies (no cap of its own); its time limits carry the largest upload at
        # 10 Mbit/s, and every other request outlasts a segmentation's worst case (the longest organ
        # deadline, each try)
        route = by_kind(objects, "HTTPRoute")["medseg-gateway"]
        rules = {r["name"]: r for r in route["spec"]["rules"]}
        paths = {m["path"]["value"] for m in rules["uploads"]["matches"]}
        assert {"/api/v1/datasets", "/api/v1/studies"} <= paths
        upload_s = _seconds(rules["uploads"]["timeouts"]["request"])
        assert dataset * 8 / upload_s <= 10_000_000, "uploads need more than 10 Mbit/s to finish in time"
        deadlines = [
            load_organ_spec(o).inference_deadline_s or settings.inference_timeout_s for o in organ_dirs()
        ]
        worst_segment_s = max(deadlines) * (1 + settings.inference_retries)
        assert _seconds(rules["api-and-pages"]["timeouts"]["request"]) > worst_segment_s
        assert _seconds(rules["evaluations"]["timeouts"]["request"]) >= 600
        assert all("timeouts" in r for r in route["spec"]["rules"]), (
            "Envoy's default would cut requests at 15 s"
        )


# --- TLS inside ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_s3_runs_over_https_verified_against_the_internal_ca(rendered, overlay):
    objects = rendered[overlay]
    s3 = next(c for n, c in by_kind(objects, "ConfigMap").items() if n.startswith("medseg-s3-"))["data"]
    assert s3["MEDSEG_S3_SECURE"] == "true"
    ca_dir = str(PurePosixPath(s3["MEDSEG_S3_CA_FILE"]).parent)
    host = s3["MEDSEG_S3_ENDPOINT"].split(":")[0]
    minio_cert = by_kind(objects, "Certificate")["minio-tls"]["spec"]
    assert host in minio_cert["dnsNames"] and minio_cert["issuerRef"]["name"] == "medseg-internal-ca"
    minio = by_kind(objects, "StatefulSet")["minio"]["spec"]["template"]["spec"]
    certs = next(
        v for v in minio["volumes"] if v.get("secret", {}).get("secretName") == minio_cert["secretName"]
    )
    assert {i["path"] for i in certs["secret"]["items"]} == {"public.crt", "private.key"}
    assert minio["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"

    readers = 0
    for obj in objects:
        if pod_spec(obj) is None:
            continue
        volumes = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
        for container in _containers(obj):
            sources = [e.get("configMapRef", {}).get("name", "") for e in container.get("envFrom", [])]
            if not any(s.startswith("medseg-s3") for s in sources):
                continue
            readers += 1
            where = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
            mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == ca_dir), None)
            assert mount, f"{where} reads medseg-s3 but does not mount the internal CA at {ca_dir}"
            secret = volumes[mount["name"]]["secret"]
            # the CA's certificate only, never its key
            assert secret["secretName"] == "medseg-internal-ca" and secret["items"] == [
                {"key": "ca.crt", "path": "ca.crt"}
            ]
    assert readers >= 6


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_and_the_trainer_verify_the_organ_servers_against_the_internal_ca(rendered, overlay):
    objects = rendered[overlay]
    config_maps = by_kind(objects, "ConfigMap")
    certificates = by_kind(objects, "Certificate")
    clients = {  # settings ConfigMap: (its workload, the organ servers' addresses it dials)
        "medseg-gateway": (by_kind(objects, "Deployment")["medseg-gateway"], "MEDSEG_ORGAN_ADDRESSES"),
        "medseg-trainer-settings": (
            by_kind(objects, "CronJob")["medseg-trainer"],
            "MEDSEG_ORGAN_MANAGEMENT_ADDRESSES",
        ),
    }
    for config_name, (workload, addresses) in clients.items():
        config = next(c for n, c in config_maps.items() if n.startswith(f"{config_name}-"))["data"]
        ca = PurePosixPath(config["MEDSEG_ORGAN_TLS_CA_FILE"])
        spec = pod_spec(workload)
        [container] = spec["containers"]
        assert any(
            e.get("configMapRef", {}).get("name", "").startswith(config_name) for e in container["envFrom"]
        )
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(ca.parent))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        # the CA's certificate only, never its key
        assert volume["secret"] == {
            "secretName": "medseg-internal-ca",
            "items": [{"key": "ca.crt", "path": ca.name}],
        }
        # each organ server's certificate is the CA's, for the name its client dials (and checks)
        for organ, target in json.loads(config[addresses]).items():
            host = target.removeprefix("dns:///").rsplit(":", 1)[0]
            certificate = certificates[f"torchserve-grpc-{organ}"]["spec"]
            assert host in certificate["dnsNames"]
            assert certificate["issuerRef"]["name"] == "medseg-internal-ca"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("organ", sorted(organ_dirs()))
def test_each_organ_server_serves_grpc_over_tls_with_its_own_certificate(rendered, overlay, organ):
    objects = rendered[overlay]
    certificate = by_kind(objects, "Certificate")[f"torchserve-grpc-{organ}"]["spec"]
    assert certificate["secretName"] == f"torchserve-grpc-{organ}"  # not another organ's
    assert {f"torchserve-pods-{organ}", f"torchserve-{organ}"} <= set(certificate["dnsNames"])
    assert "server auth" in certificate["usages"]
    assert certificate["privateKey"]["encoding"] == "PKCS8"  # TorchServe's gRPC server reads no other
    spec = by_kind(objects, "Deployment")[f"torchserve-{organ}"]["spec"]["template"]["spec"]
    [server] = spec["containers"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["TS_ENABLE_GRPC_SSL"] == "true"
    volume = next(
        v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == certificate["secretName"]
    )
    directory = next(m for m in server["volumeMounts"] if m["name"] == volume["name"])["mountPath"]
    files = {item["key"]: f"{directory}/{item['path']}" for item in volume["secret"]["items"]}
    assert (env["TS_CERTIFICATE_FILE"], env["TS_PRIVATE_KEY_FILE"]) == (files["tls.crt"], files["tls.key"])
    assert volume["secret"]["defaultMode"] == 0o440  # the key: readable by the pod's group only


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgresql_is_reached_over_verified_tls(rendered, overlay):
    objects = rendered[overlay]
    cluster = by_kind(objects, "Cluster")["medseg-db"]
    assert cluster["spec"]["postgresql"]["pg_hba"] == ["hostssl all all all scram-sha-256"]
    pod = by_kind(objects, "Deployment")["medseg-gateway"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["initContainers"] + pod["containers"]:
        env = {e["name"]: e.get("value") for e in container["env"]}
        url = urlsplit(env["MEDSEG_DATABASE_URL"].replace("$(POSTGRES_PASSWORD)", "pw"))
        assert url.hostname == "medseg-db-rw"  # CloudNativePG's Service of the primary
        query = parse_qs(url.query)
        assert query["sslmode"] == ["verify-full"]
        ca = PurePosixPath(query["sslrootcert"][0])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(ca.parent))
        assert volumes[mount["name"]]["secret"] == {
            "secretName": "medseg-db-ca",  # the Cluster's CA (CloudNativePG: <cluster>-ca)
            "items": [{"key": "ca.crt", "path": ca.name}],
        }
        password = next(e for e in container["env"] if e["name"] == "POSTGRES_PASSWORD")
        assert (
            password["valueFrom"]["secretKeyRef"]["name"]
            == cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"]
        )


# --- egress -------------------------------------------------------------------------------------------------
NEEDS = {  # component: (destination component or "dns"/"outside", port)
    "gateway": {
        ("database", 5432),
        ("organ-server", 7070),
        ("objectstore", 9000),
        ("outside", 443),
        ("dns", 53),
    },
    "trainer": {("organ-server", 7071), ("objectstore", 9000), ("dns", 53)},
    "organ-server": {("objectstore", 9000), ("dns", 53)},
    "objectstore-init": {("objectstore", 9000), ("dns", 53)},
    "database": {("database", 5432), ("objectstore", 9000), ("outside", 443), ("dns", 53)},
    "objectstore": {("dns", 53)},
}


def _egress(objects: list[dict], component: str) -> set[tuple[str, int]]:
    allowed = set()
    for policy in by_kind(objects, "NetworkPolicy").values():
        selector = policy["spec"]["podSelector"]
        labels = selector.get("matchLabels", {})
        expressions = selector.get("matchExpressions", [])
        selects = (
            (not labels and not expressions)
            or labels.get("app.kubernetes.io/component") == component
            or any(
                e["key"] == "app.kubernetes.io/component" and component in e["values"] for e in expressions
            )
        )
        if not selects or "Egress" not in policy["spec"]["policyTypes"]:
            continue
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to") and rule.get("ports"), f"{policy['metadata']['name']}: egress open to all"
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    target = "outside"
                elif (
                    peer.get("namespaceSelector", {})
                    .get("matchLabels", {})
                    .get("kubernetes.io/metadata.name")
                    == "kube-system"
                ):
                    target = "dns"
                else:
                    target = peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                allowed |= {(target, p["port"]) for p in rule["ports"]}
    return allowed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_is_denied_by_default_with_only_the_holes_each_component_needs(rendered, overlay):
    objects = rendered[overlay]
    deny = by_kind(objects, "NetworkPolicy")["default-deny-egress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Egress"]}
    for component, needed in NEEDS.items():
        allowed = _egress(objects, component)
        assert needed <= allowed, f"{component} lacks {needed - allowed}"
        extra = {(t, p) for t, p in allowed - needed if not (t == "outside" and p == 6443) and p != 8000}
        assert not extra, f"{component} may reach more than it needs: {extra}"
    # the ports the holes name are the ones the destinations listen on
    minio = by_kind(objects, "StatefulSet")["minio"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in minio["ports"]} == {9000}
    for organ in organ_dirs():
        server = by_kind(objects, "Deployment")[f"torchserve-{organ}"]["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert {7070, 7071} <= {p["containerPort"] for p in server["ports"]}


# --- backups ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_database_is_archived_and_backed_up_into_the_bucket_the_policy_job_creates(rendered, overlay):
    objects = rendered[overlay]
    cluster = by_kind(objects, "Cluster")["medseg-db"]["spec"]
    [plugin] = cluster["plugins"]
    assert plugin["name"] == "barman-cloud.cloudnative-pg.io" and plugin["isWALArchiver"] is True
    store = by_kind(objects, "ObjectStore")[plugin["parameters"]["barmanObjectName"]]["spec"]
    assert store["configuration"]["destinationPath"] == f"s3://{BACKUP_BUCKET}/"
    assert store["configuration"]["endpointURL"].startswith("https://")
    assert store["configuration"]["endpointCA"] == {"name": "medseg-internal-ca", "key": "ca.crt"}
    [backup] = by_kind(objects, "ScheduledBackup").values()
    assert (
        backup["spec"]["method"] == "plugin"
        and backup["spec"]["pluginConfiguration"]["name"] == plugin["name"]
    )
    job = by_kind(objects, "Job")["medseg-bucket-policy"]
    [container] = pod_spec(job)["containers"]
    assert container["command"][:3] == ["python", "-m", "common.bucket_policy"]
    assert container["image"].startswith(OUR_REGISTRY + "gateway:")
