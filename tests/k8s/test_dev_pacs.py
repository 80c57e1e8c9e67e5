"""dev's stand-in for the hospital's PACS (k8s/overlays/dev/orthanc.yaml, issue 21): Orthanc with DICOMweb
takes its one account from the Secret the gateway reads (`medseg-pacs`), so the URL the docs tell to put in
that Secret reaches it; only the gateway may connect; prod has no PACS of its own (the hospital's, from the
Secret). The rendered objects also pass the strict schema, security and checkov tests of this folder."""

from __future__ import annotations

import re

from tests.k8s.conftest import K8S, by_kind, pod_spec


def test_dev_runs_orthanc_with_dicomweb_on_the_gateways_account(rendered):
    orthanc = by_kind(rendered["dev"], "Deployment")["orthanc"]
    (container,) = pod_spec(orthanc)["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("PACS_USERNAME", "username"), ("PACS_PASSWORD", "password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "medseg-pacs", "key": key}
    names = list(env)  # $(VAR) expands only variables defined before it
    assert names.index("ORTHANC__REGISTERED_USERS") > names.index("PACS_PASSWORD")
    assert env["ORTHANC__REGISTERED_USERS"]["value"] == '{"$(PACS_USERNAME)": "$(PACS_PASSWORD)"}'
    assert env["ORTHANC__AUTHENTICATION_ENABLED"]["value"] == "true"
    assert env["DICOM_WEB_PLUGIN_ENABLED"]["value"] == "true"
    root = env["ORTHANC__DICOM_WEB__ROOT"]["value"]

    service = by_kind(rendered["dev"], "Service")["orthanc"]
    (port,) = service["spec"]["ports"]
    documented = (K8S.parent / "docs" / "operations.md").read_text()
    url = re.search(r"url=(http://orthanc[^ `]*)", documented).group(1)
    assert url == f"http://{service['metadata']['name']}:{port['port']}{root.rstrip('/')}"
    assert container["ports"][0]["containerPort"] == 8042 and port["targetPort"] == "http"


def test_only_the_gateway_reaches_the_dev_pacs_and_prod_has_none(rendered):
    policy = by_kind(rendered["dev"], "NetworkPolicy")["pacs-from-gateway"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "pacs"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}]
    pacs = [o for o in rendered["dev"] if o["metadata"]["name"] in ("orthanc", "pacs-from-gateway")]
    assert len(pacs) == 3 and {o["metadata"]["namespace"] for o in pacs} == {"medseg"}  # the base's
    assert "orthanc" not in by_kind(rendered["prod"], "Deployment")
    gateway = by_kind(rendered["prod"], "Deployment")["medseg-gateway"]
    env = {e["name"]: e for e in pod_spec(gateway)["containers"][0]["env"]}
    assert env["MEDSEG_PACS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "medseg-pacs"
