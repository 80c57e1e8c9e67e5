"""TorchServe's management API locally (issue 8: reachable only from the trainer's side): every organ server
`make up` starts binds its management ports to the loopback address with token authorization on, and nothing
in the environment it inherits can override that (TorchServe reads TS_* variables: enable_envvars_config is on
for the Kubernetes pods). The cluster side (NetworkPolicies admit only trainer pods) is tests/k8s."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from common.launcher import OrganServer, read_properties
from services.spec import organ_dirs

ORGANS = sorted(organ_dirs())
LOOPBACK = "127.0.0.1"


@pytest.mark.parametrize("organ", ORGANS)
def test_the_management_api_listens_on_loopback_with_token_auth(organ, tmp_path):
    server = OrganServer(organ, tmp_path / "state", tmp_path / "model-store")
    for config in (server.base_config, server.write_config()):
        props = read_properties(config)
        assert urlsplit(props["management_address"]).hostname == LOOPBACK, config
        assert props["grpc_management_address"] == LOOPBACK, config
        assert props.get("disable_token_authorization", "false").strip().lower() == "false", config


@pytest.mark.parametrize(
    "variable, value",
    [
        ("TS_MANAGEMENT_ADDRESS", "http://0.0.0.0:8081"),
        ("TS_GRPC_MANAGEMENT_ADDRESS", "0.0.0.0"),
        ("TS_DISABLE_TOKEN_AUTHORIZATION", "true"),
        ("TS_CONFIG_FILE", "/tmp/elsewhere.properties"),
    ],
)
def test_inherited_ts_variables_cannot_override_the_written_config(variable, value, tmp_path, monkeypatch):
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("MEDSEG_UNRELATED", "kept")
    env = OrganServer(ORGANS[0], tmp_path / "state", tmp_path / "model-store").environment()
    assert [name for name in env if name.startswith("TS_")] == []
    assert env["MEDSEG_UNRELATED"] == "kept" and env["TMPDIR"].startswith(str(tmp_path))
