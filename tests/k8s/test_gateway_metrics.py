"""The gateway's Prometheus metrics in the cluster: on a port of their own (MEDSEG_METRICS_PORT), announced
to Prometheus by the pod's scrape annotations, admitted only from the monitoring namespace, and carried by
neither the Service nor the HTTPRoute/GRPCRoute, so /metrics is never public."""

from __future__ import annotations

import pytest

from tests.k8s.conftest import OVERLAYS, by_kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_metrics_are_scraped_inside_the_cluster_only(rendered, overlay):
    objects = rendered[overlay]
    config = next(c for n, c in by_kind(objects, "ConfigMap").items() if n.startswith("medseg-gateway-"))
    port = int(config["data"]["MEDSEG_METRICS_PORT"])
    pod = by_kind(objects, "Deployment")["medseg-gateway"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port and port not in (ports["http"], ports["grpc"])

    service = by_kind(objects, "Service")["medseg-gateway"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "grpc"}
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    routes = [by_kind(objects, kind)["medseg-gateway"] for kind in ("HTTPRoute", "GRPCRoute")]
    backends = [b for route in routes for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    assert backends and {b["port"] for b in backends} == {service_ports["http"], service_ports["grpc"]}

    gateway_policies = [
        p for p in by_kind(objects, "NetworkPolicy").values()
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == "gateway"
    ]  # fmt: skip
    admitting_metrics = [
        rule for p in gateway_policies for rule in p["spec"].get("ingress", [])
        if any(entry.get("port") in ("metrics", port) for entry in rule.get("ports", []))
    ]  # fmt: skip
    assert admitting_metrics == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"port": "metrics"}],
        }
    ]
