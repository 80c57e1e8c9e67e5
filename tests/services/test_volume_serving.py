"""Volumes through a real liver TorchServe running the shipped network (model-store/liver.mar repacked with
this checkout's handler): volume chunks, their refusals, and common.volume_inference.segment_volume
(chunking, progress, requests in flight, cancel, wrong answers)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import InvalidInput, ServiceUnavailable
from common.launcher import OrganServer, free_ports
from common.torchserve_client import InferenceClient
from common.volume_inference import (
    SegmentationCancelled,
    segment_volume,
    slices_per_message,
    wire_dtype,
)
from services.imaging import NPY_MAGIC, decode_npy, encode_npy, is_npy, read_npy_header
from tests.data import SHARED_DATA
from tests.fixtures.torchserve import _require_runtime
from tests.services.test_imaging import dicom_bytes
from tests.services.test_volume_chunk import BAD_CHUNKS, dicom_hu, npy
from tools.liver_volumes import PATIENTS, liver_volume, train_dir, volume_dice
from trainer.package import repackage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # s per call: a chunk on a shared 2-core machine


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, version) of the shipped liver network on a real TorchServe with this checkout's handler."""
    _require_runtime()
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data")
    root = tmp_path_factory.mktemp("volume-serving")
    mar = repackage(REPO / "model-store" / "liver.mar", root / "store", "liver", "1.1")
    server = OrganServer(
        "liver", root / "state", root / "store", models={"liver": mar.name}, ports=free_ports()
    )
    server.start(timeout=300)
    yield server
    server.stop()


class Recording(InferenceClient):
    """A real client that records each volume chunk it sends (shape, wire dtype) and the most calls at
    once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks: list[tuple[tuple[int, ...], str]] = []
        self.active = self.most_active = 0
        self._lock = threading.Lock()

    def predict(self, model_name, data, version=None, timeout=None, **kw):
        with self._lock:
            if is_npy(data):
                shape, dtype, _, _ = read_npy_header(data)
                self.chunks.append((shape, str(dtype)))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            return super().predict(model_name, data, version, timeout, **kw)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def client(served):
    with Recording(served.grpc_inference_address, served.keys.inference, timeout=TIMEOUT) as c:
        yield c


def liver_slices(first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    hu, labels = liver_volume(PATIENTS[2])
    return hu[first : first + count], labels[first : first + count]


def test_a_chunk_of_training_slices_is_segmented(client):
    hu, labels = liver_slices(0, 8)
    body = client.predict("liver", encode_npy(hu), answer_magic=NPY_MAGIC)
    probs = decode_npy(body)
    assert probs.dtype == np.uint8 and probs.shape == hu.shape
    dices = [volume_dice(p >= 128, g) for p, g in zip(probs, labels, strict=True)]
    assert min(dices) >= 0.9, dices  # trained-on slices: this checks the plumbing, not the model


def test_a_chunk_slice_is_the_2d_answer_for_the_same_slice(client):
    with Image.open(train_dir() / "380.png") as im:
        grey = np.asarray(im.convert("L")).astype(np.int16)
    dicom = dicom_bytes(grey, slope=400 / 255, intercept=-140)  # the slice as a DICOM in Hounsfield units
    png = client.predict("liver", dicom)
    chunk = liver_slices(8, 3)[0].copy()  # slices 379-381, the middle one as the DICOM decodes
    chunk[1] = dicom_hu(dicom)
    probs = decode_npy(client.predict("liver", encode_npy(chunk), answer_magic=NPY_MAGIC))
    np.testing.assert_array_equal(probs[1], np.asarray(Image.open(io.BytesIO(png))))


@pytest.mark.parametrize(("array", "message"), BAD_CHUNKS)
def test_bad_chunks_are_invalid_input_and_the_server_keeps_answering(client, array, message):
    with pytest.raises(InvalidInput, match=message):
        client.predict("liver", npy(array), answer_magic=NPY_MAGIC)
    good = client.predict("liver", encode_npy(liver_slices(0, 1)[0]), answer_magic=NPY_MAGIC)
    assert decode_npy(good).shape == (1, 512, 512)


def test_2d_images_are_answered_as_before(client):
    png = client.predict("liver", (train_dir() / "380.png").read_bytes())
    assert Image.open(io.BytesIO(png)).size == (512, 512)


def test_segment_volume_sends_chunks_in_flight_and_reports_progress(client):
    hu, labels = liver_volume(PATIENTS[2])  # 29 slices, fractional Hounsfield units: float32 on the wire
    seen = []
    probs = segment_volume(
        client, "liver", hu, version="1.1", chunk=8, in_flight=2, progress=lambda d, t: seen.append((d, t))
    )
    assert probs.dtype == np.uint8 and probs.shape == hu.shape
    assert volume_dice(probs >= 128, labels) >= 0.95
    assert sorted(shape[0] for shape, _ in client.chunks) == [5, 8, 8, 8]
    assert {dtype for _, dtype in client.chunks} == {"float32"}
    assert client.most_active == 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (29, 29)
    assert {t for _, t in seen} == {29} and len(seen) == 4


def test_whole_hounsfield_units_travel_as_int16_with_the_same_answer(client):
    hu = np.round(liver_slices(0, 6)[0])
    as_float = segment_volume(client, "liver", hu, version=None, chunk=6)
    as_int = segment_volume(client, "liver", hu.astype(np.int16), version=None, chunk=3, in_flight=1)
    assert [c[1] for c in client.chunks] == ["int16"] * 3  # whole numbers: int16 whatever came in
    assert client.most_active == 1
    np.testing.assert_array_equal(as_float, as_int)


def test_a_float32_chunk_as_large_as_a_message_allows_is_served(client):
    assert slices_per_message(512, 512, np.dtype(np.float32)) == 63
    assert slices_per_message(512, 512, np.dtype(np.int16)) == 126
    hu = np.tile(liver_slices(0, 1)[0] + np.float32(0.5), (63, 1, 1))  # 63 MiB of float32
    probs = segment_volume(client, "liver", hu, version=None, chunk=64)
    assert client.chunks == [((63, 512, 512), "float32")]
    assert (probs == probs[0]).all()


def test_cancel_stops_sending_and_raises(client):
    hu = liver_volume(PATIENTS[2])[0]
    cancel = threading.Event()
    with pytest.raises(SegmentationCancelled, match="cancelled at 4/29 slices") as info:
        segment_volume(
            client,
            "liver",
            hu,
            version=None,
            chunk=4,
            in_flight=1,
            progress=lambda done, total: cancel.set(),
            cancelled=cancel.is_set,
        )
    assert info.value.code == "cancelled"
    assert len(client.chunks) == 1


def test_a_wrong_answer_is_an_organ_error(served):
    class Truncating(InferenceClient):
        """The real server's answer with its last slice dropped."""

        def predict(self, *args, **kwargs):
            return encode_npy(decode_npy(super().predict(*args, **kwargs))[:-1])

    class Garbled(InferenceClient):
        def predict(self, *args, **kwargs):
            return NPY_MAGIC + b"\x01\x00garbage"

    hu = liver_slices(0, 2)[0]
    for wrong in (Truncating, Garbled):
        with wrong(served.grpc_inference_address, served.keys.inference, timeout=TIMEOUT) as bad:
            with pytest.raises(ServiceUnavailable) as info:
                segment_volume(bad, "liver", hu, version=None, chunk=2)
        assert info.value.code == "organ_error"


def test_volumes_that_are_not_finite_zyx_numbers_are_refused_before_sending(client):
    for bad, message in (
        (np.zeros((4, 4), np.float32), r"\(z, y, x\) volume"),
        (np.zeros((0, 32, 32), np.float32), r"\(z, y, x\) volume"),
        (np.full((2, 32, 32), np.nan, np.float32), "non-finite"),
        (np.zeros((2, 32, 32), bool), "dtype bool"),
    ):
        with pytest.raises(InvalidInput, match=message):
            segment_volume(client, "liver", bad, version=None, chunk=4)
    assert client.chunks == []


def test_wire_dtype_is_int16_only_for_whole_numbers_in_its_range():
    assert wire_dtype(np.array([[[-1024.0, 3071.0]]], np.float32)) == np.int16
    assert wire_dtype(np.array([[[-1024.0, 0.5]]], np.float32)) == np.float32
    assert wire_dtype(np.array([[[0, 40000]]], np.int32)) == np.float32
    assert wire_dtype(np.array([[[0, 4000]]], np.uint16)) == np.int16
