"""The organ servers' pods as an operator scales and rolls them: replicas spread over nodes, a PDB, a graceful
stop (SIGTERM reaches TorchServe; preStop + the longest inference fit in the grace period), and an
autoscaler whose target one pod's measured CPU can reach."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from common.settings import Settings
from gateway.service.dataplane import organ_deadline_s
from services.spec import load_organ_spec, organ_dirs
from tests.k8s.conftest import K8S, OVERLAYS, by_kind
from tools.k8s_organs import measurement

ORGANS = sorted(organ_dirs())
MEASURED = yaml.safe_load((K8S / "base" / "organs" / "measured.yaml").read_text())
JVM_STOP_S = 15  # the JVM's stop after its last answer: 7-16 s seen (tests/k8s/test_boot.py drains one)


def _pod(objects: list[dict], organ: str) -> dict:
    return by_kind(objects, "Deployment")[f"torchserve-{organ}"]["spec"]["template"]


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _mib(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


class _Organ:
    """Minimal stand-in for the dataplane's Organ: the name and spec organ_deadline_s reads."""

    def __init__(self, name: str):
        self.name, self.spec = name, load_organ_spec(name)


def longest_inference_s() -> float:
    """The longest deadline the gateway gives one call to any organ server (spec inference_deadline_s,
    else Settings.inference_timeout_s): no answer is awaited longer, a volume chunk's included."""
    return max(organ_deadline_s(Settings(), _Organ(organ)) for organ in ORGANS)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("organ", ORGANS)
def test_replicas_spread_over_nodes_and_zones(rendered, overlay, organ):
    pod = _pod(rendered[overlay], organ)
    labels = pod["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread.values():
        selector = constraint["labelSelector"]["matchLabels"]
        assert selector["medseg.io/organ"] == organ  # liver spreads against liver, not all organs
        assert all(labels[k] == v for k, v in selector.items())
        assert constraint["maxSkew"] == 1
    hard = spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert hard == (overlay == "prod"), "a rule in production, a preference on a dev cluster"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("organ", ORGANS)
def test_a_pdb_keeps_all_but_one_replica_through_a_drain(rendered, overlay, organ):
    objects = rendered[overlay]
    pdb = by_kind(objects, "PodDisruptionBudget")[f"torchserve-{organ}"]
    labels = _pod(objects, organ)["metadata"]["labels"]
    assert all(labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert pdb["spec"]["selector"]["matchLabels"]["medseg.io/organ"] == organ
    assert pdb["spec"]["maxUnavailable"] == 1
    deployment = by_kind(objects, "Deployment")[f"torchserve-{organ}"]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0  # a new pod serves before an old one goes


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("organ", ORGANS)
def test_the_grace_period_covers_pre_stop_the_longest_inference_and_the_jvms_stop(rendered, overlay, organ):
    pod = _pod(rendered[overlay], organ)
    (server,) = pod["spec"]["containers"]
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5  # endpoints and kube-proxy catch up before TorchServe stops taking calls
    need = pre_stop + longest_inference_s() + JVM_STOP_S
    assert pod["spec"]["terminationGracePeriodSeconds"] >= need, f"grace < {need} s"
    assert longest_inference_s() >= 30  # cells' tile deadline is counted, not the 10 s default


@pytest.mark.parametrize("organ", ORGANS)
def test_sigterm_reaches_torchserve_the_command_execs_java(rendered, organ):
    """The container's command is serve.py, which replaces itself with the Java frontend (so SIGTERM is
    Java's), and builds exactly the command line TorchServe's own wrapper would start."""
    (server,) = _pod(rendered["prod"], organ)["spec"]["containers"]
    assert server["command"][:2] == ["python", "/etc/medseg/scripts/serve.py"]
    script = K8S / "base" / "organ-server" / "serve.py"
    assert "os.execvp(" in script.read_text()


def test_serve_builds_the_java_command_torchserves_wrapper_runs(tmp_path, monkeypatch):
    import importlib.util

    import ts.model_server

    spec = importlib.util.spec_from_file_location("serve", K8S / "base" / "organ-server" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    config = Path(organ_dirs()["liver"]) / "config.properties"
    store = tmp_path / "store"
    store.mkdir()
    started = []

    class Captured(Exception):
        pass

    def popen(cmd, *args, **kwargs):
        started.append(cmd)
        raise Captured

    monkeypatch.setenv("TEMP", str(tmp_path))
    monkeypatch.delenv("TS_CONFIG_FILE", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(ts.model_server.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(ts.model_server.subprocess, "Popen", popen)
    argv = ["torchserve", "--start", "--foreground", "--ncs", "--ts-config", str(config)]
    argv += ["--model-store", str(store)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(Captured):
        ts.model_server.start()
    assert serve.java_command(config, store) == started[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("organ", ORGANS)
def test_the_autoscaler_can_fire_before_a_pod_saturates(rendered, overlay, organ):
    """HPA utilisation = usage / request. One pod at saturation uses worker_threads × (1 + the frontend's
    share) cores (k8s/base/organs/measured.yaml, python -m tools.organ_cpu). The target must be reachable
    (saturation / request above it, with a margin) and reached before the pod saturates, and the limit must
    let a pod use what it needs."""
    objects = rendered[overlay]
    (server,) = _pod(objects, organ)["spec"]["containers"]
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[f"torchserve-{organ}"]
    (metric,) = hpa["spec"]["metrics"]
    target = metric["resource"]["target"]["averageUtilization"] / 100
    measured = measurement(organ, organ_dirs()[organ], MEASURED)
    config = yaml.safe_load((organ_dirs()[organ] / "model-config.yaml").read_text())
    threads = config["handler"]["torch_threads"]
    assert measured["worker_threads"] == threads, "measured.yaml is stale: the organ's threads changed"
    saturated = measured["worker_threads"] * (1 + measured["frontend_per_worker_core"])
    request = _cores(server["resources"]["requests"]["cpu"])
    limit = _cores(server["resources"]["limits"]["cpu"])
    assert saturated / request >= target * 1.4, "the target is out of reach (the issue's 55 % of 2 cores)"
    fires_at = target * request / saturated  # share of one pod's capacity in use when it scales out
    assert 0.5 <= fires_at <= 0.8, f"scales out at {fires_at:.0%} of a pod's capacity"
    assert limit >= saturated


def test_the_issues_sizing_fails_this_arithmetic():
    # A 2-core request for a worker measured at 1.22 cores: 61 % at saturation, under the 70 % target.
    liver = MEASURED["liver"]
    saturated = liver["worker_threads"] * (1 + liver["frontend_per_worker_core"])
    assert saturated / 2.0 < 0.70


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("organ", ORGANS)
def test_memory_holds_every_version_a_pod_loads(rendered, overlay, organ):
    from gateway.service.model_registry import MAX_SERVED_CANDIDATES

    (server,) = _pod(rendered[overlay], organ)["spec"]["containers"]
    measured = measurement(organ, organ_dirs()[organ], MEASURED)
    versions = 2 + MAX_SERVED_CANDIDATES  # the default, the rollback target, the newest candidates
    needed = measured["frontend_mib"] + versions * measured["worker_mib"]
    assert _mib(server["resources"]["requests"]["memory"]) >= needed
    assert _mib(server["resources"]["limits"]["memory"]) > _mib(server["resources"]["requests"]["memory"])
