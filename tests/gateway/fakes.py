"""Fakes for the DataPlane's collaborators (organ clients, object store), for edge and service tests."""

from __future__ import annotations

import io
import threading

import numpy as np
from PIL import Image

from common.errors import InvalidInput, ServiceUnavailable
from services.imaging import ImageDecodeError, decode_image, decode_npy, encode_npy, is_npy


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def ramp(height: int, width: int) -> np.ndarray:
    """Probability bytes 0..255 across the columns."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


class FakeClient:
    """Answers like common.torchserve_client.InferenceClient on an organ server: a probability PNG at
    the input's size, computed by `answer(h, w)`. It decodes the image as the organ handler does
    (services.imaging.decode_image), so an image it cannot decode is refused like the server's 400
    (INVALID_ARGUMENT → InvalidInput with the decoder's message). A volume chunk (an .npy (n, h, w), as
    common.volume_inference sends it) is answered with an .npy uint8 (n, h, w) of `answer(h, w)` on every
    slice, as services/handler_base.py answers one."""

    label = "fake organ server"

    def __init__(self, answer=ramp, error: Exception | None = None):
        self.answer, self.error, self.calls = answer, error, 0
        self.versions: list[str | None] = []
        self.lock = threading.Lock()

    def predict(
        self,
        model_name: str,
        data: bytes,
        version: str | None = None,
        timeout: float | None = None,
        answer_magic: bytes | None = None,
    ) -> bytes:
        with self.lock:
            self.calls += 1
            self.versions.append(version)
        if self.error:
            raise self.error
        if is_npy(data):
            n, height, width = decode_npy(data).shape
            return encode_npy(np.broadcast_to(self.answer(height, width), (n, height, width)))
        try:
            height, width = decode_image(data).array.shape[:2]
        except ImageDecodeError as exc:
            raise InvalidInput(str(exc)) from None
        return png(self.answer(height, width))

    def health(self, timeout: float = 1.0) -> tuple[bool, str]:
        return (self.error is None, "Healthy" if self.error is None else "unavailable")

    def close(self):
        pass


def voxel_probabilities(volume: np.ndarray, classes: int) -> np.ndarray:
    """What FakeVolumeClient answers for a volume (z, y, x): uint8 (classes, z, y, x) softmax, background
    first, read off each voxel's value v: label i = round(v / 100) (1 … classes − 1) with P(labelled) =
    (v − 100·i + 50) / 100 — 100·i is labelled at 0.5, 100·i + 30 up to 0.8, 100·i − 30 only at 0.2 — and
    background (P = 1) below 50 or above the last label."""
    label = np.rint(volume / 100.0)
    inside = (label >= 1) & (label <= classes - 1)
    foreground = np.where(inside, np.clip((volume - 100.0 * label + 50.0) / 100.0, 0.0, 1.0), 0.0)
    probs = np.zeros((classes, *volume.shape), np.float64)
    probs[0] = 1.0 - foreground
    for i in range(1, classes):
        probs[i] = np.where(label == i, foreground, 0.0)
    return np.rint(probs * 255).astype(np.uint8)


class FakeVolumeClient(FakeClient):
    """A 3-D organ's server (services.handler_base.VolumeSegmentationHandler) answering a whole volume, the
    .npy (z, y, x) common.volume_inference.segment_whole_volume sends, with `voxel_probabilities` of its
    `classes` (background and the organ's labels)."""

    def __init__(self, classes: int, error: Exception | None = None):
        super().__init__(error=error)
        self.classes = classes

    def predict(self, model_name, data, version=None, timeout=None, answer_magic=None) -> bytes:
        with self.lock:
            self.calls += 1
            self.versions.append(version)
        if self.error:
            raise self.error
        if not is_npy(data):
            raise InvalidInput("a 3-D organ server takes a whole volume as .npy (z, y, x)")
        return encode_npy(voxel_probabilities(decode_npy(data).astype(np.float64), self.classes))


class FakeStore:
    def __init__(self, fail_after: int | None = None):
        self.objects: dict[tuple[str, str], bytes] = {}
        self.fail_after = fail_after

    def ensure_buckets(self):
        if self.fail_after == 0:
            raise ServiceUnavailable("object store unavailable: connection refused")

    def put_bytes(self, bucket, key, data, content_type=None):
        if self.fail_after is not None and len(self.objects) >= self.fail_after:
            raise ServiceUnavailable("object store unavailable: connection refused")
        self.objects[(bucket, key)] = data

    def delete(self, bucket, key):
        self.objects.pop((bucket, key), None)

    def ping(self):
        if self.fail_after is not None:
            raise ServiceUnavailable("object store unavailable: connection refused")
