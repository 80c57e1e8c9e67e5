"""Fixtures of the trainer's integration tests (the shared real components are in tests/fixtures/)."""

from __future__ import annotations

import pytest

from common.torchserve_client import ManagementClient


@pytest.fixture
def liver_management(torchserve_liver):
    """A management client of the shared liver TorchServe (registering a .mar can take a while: 60 s)."""
    with ManagementClient(
        torchserve_liver.grpc_management_address, torchserve_liver.management_key, timeout=60
    ) as client:
        yield client
