"""Fixtures of the trainer's integration tests (the shared real components are in tests/fixtures/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.torchserve_client import ManagementClient
from tests.data import SHARED_DATA
from trainer.train import default_config, run_training

CELLS = SHARED_DATA / "monuseg" / "train"


@pytest.fixture(scope="session")
def cells_smoke_run(tmp_path_factory) -> Path:
    """A one-epoch cells run on three tiles, one held out, tiny widths: trained once for the tests that read
    it (test_training, test_rescore). Never written to: a test that changes a run changes a copy."""
    if not CELLS.is_dir():
        pytest.skip("needs ../shared/data (the MoNuSeg tiles)")
    run = tmp_path_factory.mktemp("runs") / "cells-smoke"
    cfg = default_config("cells", epochs=1, batch_size=2, widths=(6, 12, 24), samples_per_epoch=2, threads=1)
    run_training("cells", CELLS, run, cfg, limit=3, folds=3)
    return run


@pytest.fixture
def liver_management(torchserve_liver):
    """A management client of the shared liver TorchServe (registering a .mar can take a while: 60 s)."""
    with ManagementClient(
        torchserve_liver.grpc_management_address, torchserve_liver.management_key, timeout=60
    ) as client:
        yield client
