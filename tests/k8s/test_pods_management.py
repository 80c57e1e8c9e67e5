"""A new version reaches every replica of an organ server without restarting any (issue 23, finding 5): the
trainer's registration through the headless Service (common.model_store.PodsManagement) registers it with
each replica's management API; two real TorchServes stand for two pods."""

from __future__ import annotations

import pytest

from common.errors import Conflict, NotFound
from common.launcher import OrganServer, free_ports
from common.model_store import PodsManagement, management_client, register_version
from common.settings import Settings
from common.torchserve_client import ManagementClient
from tests.fixtures.torchserve import _require_runtime, build_test_mar

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _versions(server: OrganServer) -> set[str]:
    with ManagementClient(server.grpc_management_address, server.keys.management) as mgmt:
        try:
            return {m["modelVersion"] for m in mgmt.describe("liver", "all")}
        except NotFound:
            return set()


def test_a_version_is_registered_with_every_replica_and_a_partial_registration_completes(
    clean_buckets, tmp_path
):
    _require_runtime()
    servers = [
        OrganServer(
            "liver",
            state_dir=tmp_path / f"pod{i}",
            model_store=tmp_path / f"store{i}",  # each pod its own emptyDir
            models={},
            ports=free_ports(),
        )  # fmt: skip
        for i in (1, 2)
    ]
    for i in (1, 2):
        (tmp_path / f"store{i}").mkdir()
    for version in ("7", "8"):
        (tmp_path / f"mar{version}").mkdir()
    mars = {v: build_test_mar("liver", tmp_path / f"mar{v}", "liver", v) for v in ("7", "8")}
    try:
        for server in servers:
            server.start(timeout=300)
        pids = [server.pid for server in servers]

        def pods() -> PodsManagement:
            return PodsManagement(
                [ManagementClient(s.grpc_management_address, s.keys.management, timeout=300) for s in servers]
            )

        with pods() as mgmt:
            done = register_version(clean_buckets, mgmt, mars["7"], "liver", "7")
        assert done["mar_key"] == "liver/liver-7.mar"
        assert [_versions(s) for s in servers] == [{"7"}, {"7"}]
        with pods() as mgmt, pytest.raises(Conflict) as again:  # versions are immutable
            register_version(clean_buckets, mgmt, mars["7"], "liver", "7")
        assert again.value.code == "version_exists"

        # cut short after the first replica: running it again completes the second, the first is left
        first = ManagementClient(servers[0].grpc_management_address, servers[0].keys.management, timeout=300)
        with first:
            register_version(clean_buckets, first, mars["8"], "liver", "8")
        assert [_versions(s) for s in servers] == [{"7", "8"}, {"7"}]
        with pods() as mgmt:
            register_version(clean_buckets, mgmt, mars["8"], "liver", "8")
        assert [_versions(s) for s in servers] == [{"7", "8"}, {"7", "8"}]
        assert [server.pid for server in servers] == pids  # no replica restarted
    finally:
        for server in servers:
            server.stop()


def test_a_dns_address_means_every_replica_it_resolves_to():
    settings = Settings(organ_management_addresses={"liver": "dns:///localhost:7071"})
    with management_client("liver", settings) as mgmt:
        assert isinstance(mgmt, PodsManagement) and mgmt.address == "dns:///localhost:7071"
        assert {c.address for c in mgmt.clients} <= {"127.0.0.1:7071", "[::1]:7071"}
