"""Files the web tests put into the pages' file inputs."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image

PASSWORD = "correct horse battery"
# Every page an admin can open (all of them): the layout checks (tablet, laptop) go through each.
ADMIN_PAGES = [
    "/segment", "/history", "/datasets", "/model-test", "/feedback", "/profile", "/training", "/models",
    "/admin/users", "/admin/api-keys", "/admin/audit",
]  # fmt: skip


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def disc_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A grey image with a bright disc (something for an untrained model to produce masks from)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2.5) ** 2 < (size / 4) ** 2
    return np.clip(60 + 120 * disc + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)


def disc_label(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size / 2) ** 2 + (xx - size / 2.5) ** 2 < (size / 4) ** 2) * 255).astype(np.uint8)


def dataset_zip(pairs: int = 2) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(pairs):
            zf.writestr(f"{i:03d}.png", png_bytes(disc_image(32, seed=i)))
            zf.writestr(f"{i:03d}_mask.png", png_bytes(disc_label(32)))
    return buf.getvalue()
