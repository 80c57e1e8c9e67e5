"""The architectures a training job may use come from the network registry (services.networks), through the
API and on the training page: a network added to the registry is offered with no other file touched."""

from __future__ import annotations

import re

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
