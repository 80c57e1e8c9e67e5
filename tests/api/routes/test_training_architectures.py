"""The architectures a training job may use come from the network registry (services.networks), through the
API and on the training page: a network added to the registry's table (services.architectures) is offered
with no other file touched, and the gateway reads that table without importing torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from services.networks import MODELS


def test_the_api_lists_the_registry_s_architectures(world):
    response = world.client("researcher").get("/api/v1/training/architectures")
    assert response.status_code == 200
    assert response.json() == {"architectures": sorted(MODELS)}
    assert len(MODELS) >= 5  # the ERU-Net family and the U-Net baselines, not a trimmed copy


def test_the_training_page_offers_exactly_the_registry_s_architectures(world):
    page = world.client("researcher").get("/training")
    assert page.status_code == 200
    select = re.search(r'<select[^>]*id="arch"[^>]*>(.*?)</select>', page.text, re.S)
    assert select is not None
    assert re.findall(r'<option value="([^"]+)"', select.group(1)) == sorted(MODELS)


def test_the_gateway_starts_without_torch():
    """torch (0.85 s and ~220 MB a process) loads with MONAI at the first evaluation, not at start."""
    repo = Path(__file__).resolve().parents[3]
    probe = "import sys, gateway.main; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
