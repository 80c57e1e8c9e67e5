"""A volume chunk (.npy of slices) through SegmentationHandler with a fake TorchServe context, and the
decoding beneath it (services.imaging.decode_volume_chunk): the same window and preparation as a 2-D
image, mini-batches, refusals."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from ts.utils.util import PredictionException

from services.imaging import (
    ImageDecodeError,
    apply_window,
    decode_image,
    decode_npy,
    decode_volume_chunk,
    encode_npy,
)
from services.spec import load_organ_spec
from tests.services.test_handler import (
    ChannelMean,
    CountingModel,
    decode_png,
    initialized,
    png,
    run,
)
from tests.services.test_imaging import dicom_bytes, tiff_bytes

RNG = np.random.default_rng(7)
LIVER_WINDOW = load_organ_spec("liver").window


def stored_ct(shape=(3, 40, 48)) -> np.ndarray:
    """Stored values of a CT whose modality LUT (slope 400/255, intercept −140) spans the liver window."""
    return RNG.integers(0, 256, size=shape, dtype=np.int16)


def dicom_hu(data: bytes) -> np.ndarray:
    """Hounsfield units of a DICOM as the 2-D path computes them (modality LUT in float64) → float32."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float64).astype(np.float32)


def one_nan() -> np.ndarray:
    values = np.zeros((2, 32, 32), np.float32)
    values[1, 3, 5] = np.nan
    return values


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# chunks every organ server refuses, with what its message says (also sent to a real server)
BAD_CHUNKS = [
    (np.zeros((32, 32), np.float32), "expected 3 dimensions"),
    (np.zeros((2, 2, 32, 32), np.float32), "expected 3 dimensions"),
    (np.zeros((65, 16, 16), np.int16), "send 1 to 64 slices"),
    (np.zeros((0, 32, 32), np.int16), "send 1 to 64 slices"),
    (np.zeros((2, 32, 32), np.float64), "dtype float64"),
    (np.zeros((2, 32, 32), np.uint8), "dtype uint8"),
    (np.zeros((2, 8, 32), np.int16), "at least 16 pixels"),
    (one_nan(), "1 non-finite"),
    (np.full((1, 16, 16), np.inf, np.float32), "256 non-finite"),
]


@pytest.fixture
def liver(tmp_path):
    return initialized(tmp_path, "liver", ChannelMean())


# --- decoding -----------------------------------------------------------------------------------


def test_window_of_a_chunk_is_the_window_of_a_dicom():
    stored = stored_ct((1, 40, 48))[0]
    data = dicom_bytes(stored, slope=400 / 255, intercept=-140)
    hu = dicom_hu(data)
    from_dicom = decode_image(data, window=LIVER_WINDOW).array
    np.testing.assert_array_equal(apply_window(hu, LIVER_WINDOW), from_dicom)
    chunk = decode_volume_chunk(encode_npy(hu[None]), window=LIVER_WINDOW)
    assert chunk.dtype == np.float32 and chunk.shape == (1, 40, 48)
    np.testing.assert_array_equal(chunk[0], from_dicom)


def test_int16_and_float32_chunks_of_whole_units_decode_alike():
    hu = RNG.integers(-1000, 1000, size=(2, 32, 32)).astype(np.int16)
    as_int = decode_volume_chunk(encode_npy(hu), window=LIVER_WINDOW)
    as_float = decode_volume_chunk(encode_npy(hu.astype(np.float32)), window=LIVER_WINDOW)
    np.testing.assert_array_equal(as_int, as_float)
    assert as_int.min() == 0.0 and as_int.max() == 1.0  # −1000 and 999 HU lie outside C60/W400


def test_without_a_window_each_slice_is_scaled_as_a_float_image():
    values = RNG.normal(100, 50, size=(3, 24, 20)).astype(np.float32)
    values[1] = RNG.random((24, 20), dtype=np.float32)  # inside [0, 1]: kept as it is, as a float TIFF
    chunk = decode_volume_chunk(encode_npy(values), window=None)
    for plane, scaled in zip(values, chunk, strict=True):
        np.testing.assert_array_equal(scaled, decode_image(tiff_bytes(plane)).array)
    np.testing.assert_array_equal(chunk[1], values[1])


@pytest.mark.parametrize(("array", "message"), BAD_CHUNKS)
def test_bad_chunks_are_refused_with_the_reason(array, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_volume_chunk(npy(array), window=LIVER_WINDOW)


def test_size_is_checked_from_the_header_before_the_values():
    header_only = npy(np.zeros((64, 2048, 2048), np.int16))[:128]  # claims 512 MiB, carries none of it
    with pytest.raises(ImageDecodeError, match="megapixel limit"):
        decode_volume_chunk(header_only, window=None, max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError, match="truncated or padded"):
        decode_volume_chunk(header_only, window=None)


def test_object_arrays_and_broken_headers_are_refused():
    with pytest.raises(ImageDecodeError, match="object arrays"):
        decode_volume_chunk(npy(np.array([[[None]]], dtype=object)), window=None)
    with pytest.raises(ImageDecodeError, match="unreadable .npy header"):
        decode_volume_chunk(b"\x93NUMPY\x01\x00\x10\x00{'descr': 'garbage", window=None)


def test_fortran_order_and_big_endian_chunks_are_read_as_what_they_hold():
    hu = RNG.integers(-200, 300, size=(2, 20, 24)).astype(np.int16)
    expected = decode_volume_chunk(encode_npy(hu), window=LIVER_WINDOW)
    np.testing.assert_array_equal(
        decode_volume_chunk(npy(np.asfortranarray(hu)), window=LIVER_WINDOW), expected
    )
    np.testing.assert_array_equal(decode_volume_chunk(npy(hu.astype(">i2")), window=LIVER_WINDOW), expected)


# --- the handler --------------------------------------------------------------------------------


def test_chunk_slices_equal_the_2d_answers_for_the_same_slices(liver):
    handler, ctx = liver
    stored = stored_ct((3, 40, 48))
    dicoms = [dicom_bytes(s, slope=400 / 255, intercept=-140) for s in stored]
    hu = np.stack([dicom_hu(d) for d in dicoms])
    [body] = run(handler, ctx, [encode_npy(hu)])
    assert ctx.get_response_content_type(0) == "application/x-npy"
    probs = decode_npy(body)
    assert probs.dtype == np.uint8 and probs.shape == (3, 40, 48)
    for dicom, plane in zip(dicoms, probs, strict=True):
        [png_body] = run(handler, ctx, [dicom])
        np.testing.assert_array_equal(plane, decode_png(png_body))


def test_slices_go_through_the_network_volume_batch_at_a_time(tmp_path):
    spec = load_organ_spec("liver")
    spec = dataclasses.replace(spec, inference=dataclasses.replace(spec.inference, volume_batch=4))
    handler, ctx = initialized(tmp_path, "liver", ChannelMean(), spec)
    handler.model = counting = CountingModel(handler.model)
    hu = stored_ct((10, 40, 48)).astype(np.float32)
    [body] = run(handler, ctx, [encode_npy(hu)])
    assert counting.shapes == [(4, 1, 256, 256), (4, 1, 256, 256), (2, 1, 256, 256)]
    handler.spec = dataclasses.replace(spec, inference=dataclasses.replace(spec.inference, volume_batch=1))
    [one_by_one] = run(handler, ctx, [encode_npy(hu)])  # volume_batch 1 gives the same probabilities
    np.testing.assert_array_equal(decode_npy(body), decode_npy(one_by_one))


def test_a_chunk_and_images_in_one_torchserve_batch_are_each_answered(liver):
    handler, ctx = liver
    image = png(RNG.integers(0, 256, size=(40, 40), dtype=np.uint8))
    chunk = encode_npy(stored_ct((2, 32, 36)).astype(np.float32))
    bad_chunk = npy(np.zeros((2, 32), np.float32))
    outputs = run(handler, ctx, [image, chunk, bad_chunk, image])
    assert decode_png(outputs[0]).shape == (40, 40) and decode_png(outputs[3]).shape == (40, 40)
    assert decode_npy(outputs[1]).shape == (2, 32, 36)
    error = json.loads(outputs[2])["error"]
    assert error["code"] == "invalid_input" and "expected 3 dimensions" in error["message"]
    assert [ctx.get_response_status(i)[0] for i in range(4)] == [200, 200, 400, 200]


def test_a_bad_chunk_alone_is_a_400_with_the_reason(liver):
    handler, ctx = liver
    with pytest.raises(PredictionException) as info:
        run(handler, ctx, [npy(np.full((2, 32, 32), np.nan, np.float32))])
    assert info.value.error_code == 400 and "non-finite" in info.value.message


def test_slice_cap_from_model_config(tmp_path):
    handler, ctx = initialized(tmp_path, "liver", ChannelMean(), config={"max_volume_slices": 4})
    with pytest.raises(PredictionException, match="send 1 to 4 slices"):
        run(handler, ctx, [encode_npy(np.zeros((5, 32, 32), np.int16))])
    [body] = run(handler, ctx, [encode_npy(np.zeros((4, 32, 32), np.int16))])
    assert decode_npy(body).shape == (4, 32, 32)


def test_an_rgb_organ_takes_grey_slices_as_its_2d_path_takes_grey_images(tmp_path):
    handler, ctx = initialized(tmp_path, "cells", ChannelMean())
    values = RNG.normal(0, 1, size=(2, 48, 40)).astype(np.float32)
    [body] = run(handler, ctx, [encode_npy(values)])
    for plane, probs in zip(values, decode_npy(body), strict=True):
        [png_body] = run(handler, ctx, [tiff_bytes(plane)])
        np.testing.assert_array_equal(probs, decode_png(png_body))
