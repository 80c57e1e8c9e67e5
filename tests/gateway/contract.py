"""The public segment answer's shape (ARCHITECTURE.md), checked the same way on every path."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

THRESHOLDS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def assert_contract(body: dict, width: int, height: int) -> None:
    assert set(body) == {
        "id",
        "organ",
        "model",
        "width",
        "height",
        "default_threshold",
        "probability_png",
        "masks",
        # the clinical record's additions (issue 5), as tests/gateway/test_http.py checks them
        "stability",
        "doubtful",
        "suggested_threshold",
    }
    assert 0.0 <= body["stability"] <= 1.0
    assert body["suggested_threshold"] in THRESHOLDS
    assert (body["width"], body["height"]) == (width, height)
    assert [m["threshold"] for m in body["masks"]] == THRESHOLDS
    prob = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["probability_png"]))))
    assert prob.shape == (height, width) and prob.dtype == np.uint8
    for m in body["masks"]:
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(m["mask_png"]))))
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        assert m["area_px"] == int((mask == 255).sum()) == int((prob / 255.0 >= m["threshold"]).sum())
