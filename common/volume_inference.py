"""Segment a volume on its organ server: the slices in chunks, a few requests in flight.

    probs = segment_volume(client, "liver", volume.canonical(), version="1.1",
                           chunk=spec.inference.volume_chunk, progress=job.report, cancelled=job.cancelled)

`volume_zyx` is a canonical volume (services.volumes: float32 (z, y, x), Hounsfield units for CT, in the
network's orientation). Each chunk of `chunk` slices goes to the organ server as one .npy (n, y, x)
through InferenceClient.predict; the server windows, runs and restores every slice as it does a 2-D image
and answers uint8 probabilities (n, y, x) (services.handler_base). The answer is the uint8 (z, y, x)
probability volume, round(255 · P(organ)).

Throughput: `in_flight` chunks are outstanding at once (one thread each), so while the server computes one
chunk the next is already on the wire and queued behind it; TorchServe answers them in order with its one
worker (batchSize 1: a chunk is already a batch, see services/liver/model-config.yaml).

Message size: TorchServe and our gRPC channel take at most 64 MiB a message (MAX_MESSAGE_BYTES, the
organ's config.properties max_request_size). Whole numbers within int16 (Hounsfield units from DICOM)
travel as int16, exactly (a 512² slice is 0.5 MiB: 64 slices take 32 MiB); anything else as float32
(1 MiB a 512² slice). A chunk is cut to what fits a message, whatever `chunk` asks.

A 3-D organ (spec `dimensions: 3`) takes the whole volume in one request instead (`segment_whole_volume`):
an .npy (z, y, x) at the network's voxel size, answered by uint8 (N + 1, z, y, x) softmax probabilities of
background and its N labels (services.handler_base.VolumeSegmentationHandler).

Errors: a volume that is not (z, y, x) finite numbers → InvalidInput before anything is sent; the server's
InvalidInput / NotFound / ServiceUnavailable pass through (common.torchserve_client); an answer that is not
a uint8 .npy of the chunk's shape → ServiceUnavailable "organ_error"; `cancelled()` turning true →
SegmentationCancelled (checked before each chunk is sent and after each answer; the chunks already in
flight are awaited, so no call outlives the function).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np

from common.errors import InvalidInput, MedSegError, ServiceUnavailable
from common.torchserve_client import MAX_MESSAGE_BYTES, InferenceClient
from services.imaging import NPY_MAGIC, decode_npy, encode_npy

logger = logging.getLogger(__name__)

# Room in a message for the .npy header and the gRPC request's own fields (model name, version, input key).
MESSAGE_HEADROOM_BYTES = 1024 * 1024
INT16 = np.iinfo(np.int16)


class SegmentationCancelled(MedSegError):
    """The caller cancelled the volume's segmentation (`cancelled()` returned true) before it was done."""

    code, http_status, grpc_code = "cancelled", 409, "CANCELLED"


def wire_dtype(volume: np.ndarray) -> np.dtype:
    """int16 when every value is a whole number within int16's range (it then travels exactly in half
    the bytes), else float32."""
    if volume.size == 0:
        return np.dtype(np.float32)
    lo, hi = volume.min(), volume.max()
    if lo < INT16.min or hi > INT16.max:
        return np.dtype(np.float32)
    if volume.dtype.kind in "iub" or all(np.array_equal(np.round(plane), plane) for plane in volume):
        return np.dtype(np.int16)  # (checked a slice at a time: no copy of a whole volume)
    return np.dtype(np.float32)


def slices_per_message(height: int, width: int, dtype: np.dtype) -> int:
    """How many (height, width) slices of `dtype` one request can carry within MAX_MESSAGE_BYTES."""
    return (MAX_MESSAGE_BYTES - MESSAGE_HEADROOM_BYTES) // (height * width * np.dtype(dtype).itemsize)


def segment_volume(
    client: InferenceClient,
    organ: str,
    volume_zyx: np.ndarray,
    *,
    version: str | None,
    chunk: int,
    in_flight: int = 2,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    timeout: float | None = None,
) -> np.ndarray:
    """uint8 (z, y, x) probabilities of `organ` for a canonical volume (see the module docstring).

    `version`: the model version (None: the server's default); `chunk`: slices per request (the organ
    spec's inference.volume_chunk), cut to what fits a message; `in_flight`: requests outstanding at
    once; `progress(done_slices, total_slices)` is called in the caller's thread after each answer;
    `timeout`: the deadline of one chunk's call, its wait behind the other chunks in flight included
    (default: the client's).
    """
    volume = _checked_volume(volume_zyx)
    if chunk < 1 or in_flight < 1:
        raise ValueError(f"chunk and in_flight must be at least 1, not {chunk} and {in_flight}")
    total, height, width = volume.shape
    dtype = wire_dtype(volume)
    fits = slices_per_message(height, width, dtype)
    if fits < 1:
        raise InvalidInput(f"a {height}×{width} slice does not fit one {MAX_MESSAGE_BYTES >> 20} MiB message")
    step = min(chunk, fits)
    starts = iter(range(0, total, step))
    out = np.empty(volume.shape, np.uint8)
    pending: dict[Future, int] = {}
    done = 0

    def stop_if_cancelled() -> None:
        if cancelled is not None and cancelled():
            raise SegmentationCancelled(
                f"segmentation of the {organ} volume cancelled at {done}/{total} slices"
            )

    def send_more(pool: ThreadPoolExecutor) -> None:
        while len(pending) < in_flight:
            start = next(starts, None)
            if start is None:
                return
            stop_if_cancelled()
            part = volume[start : start + step].astype(dtype)
            pending[pool.submit(_segment_chunk, client, organ, part, version, timeout)] = start

    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"volume-{organ}")
    try:
        send_more(pool)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                start = pending.pop(future)
                probs = future.result()
                out[start : start + len(probs)] = probs
                done += len(probs)
                if progress is not None:
                    progress(done, total)
            stop_if_cancelled()
            send_more(pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _checked_volume(volume_zyx: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume_zyx)
    if volume.ndim != 3 or 0 in volume.shape:
        raise InvalidInput(f"expected a (z, y, x) volume, got an array of shape {volume.shape}")
    if volume.dtype.kind not in "iuf":
        raise InvalidInput(f"expected intensities (integers or floats), got dtype {volume.dtype}")
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise InvalidInput("the volume holds non-finite values (NaN or infinity)")
    return volume


def _segment_chunk(
    client: InferenceClient, organ: str, part: np.ndarray, version: str | None, timeout: float | None
) -> np.ndarray:
    """One chunk through the organ server: uint8 probabilities of the chunk's shape, or organ_error."""
    body = client.predict(organ, encode_npy(part), version=version, timeout=timeout, answer_magic=NPY_MAGIC)
    return _checked_answer(client, body, part.shape, "a volume chunk")


def segment_whole_volume(
    client: InferenceClient,
    organ: str,
    volume_zyx: np.ndarray,
    *,
    version: str | None,
    classes: int,
    timeout: float | None = None,
) -> np.ndarray:
    """uint8 (classes, z, y, x) probabilities (background first) of a 3-D organ for a canonical volume at
    its network's voxel size, in one request (see the module docstring)."""
    volume = _checked_volume(volume_zyx)
    dtype = wire_dtype(volume)
    if volume.nbytes and volume.size * dtype.itemsize > MAX_MESSAGE_BYTES - MESSAGE_HEADROOM_BYTES:
        raise InvalidInput(
            f"a volume of {volume.shape} does not fit one {MAX_MESSAGE_BYTES >> 20} MiB message"
        )
    body = client.predict(
        organ, encode_npy(volume.astype(dtype)), version=version, timeout=timeout, answer_magic=NPY_MAGIC
    )
    return _checked_answer(client, body, (classes, *volume.shape), "a volume")


def _checked_answer(client: InferenceClient, body: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The organ server's .npy answer as uint8 probabilities of `shape`, or organ_error."""
    try:
        probs = decode_npy(body)
    except ValueError as exc:
        logger.error("%s answered %s with an unreadable .npy: %s", client.label, what, exc)
        raise ServiceUnavailable(f"{client.label} returned an invalid answer", code="organ_error") from None
    if probs.dtype != np.uint8 or probs.shape != tuple(shape):
        logger.error(
            "%s answered %s %s for %s of shape %s", client.label, probs.dtype, probs.shape, what, shape
        )
        raise ServiceUnavailable(
            f"{client.label} returned probabilities of the wrong shape or type", code="organ_error"
        )
    return probs
