"""services.imaging under hostile input (hypothesis): arbitrary bytes and mutated valid PNG/JPEG/TIFF/DICOM
files either decode within the pixel limit or are refused with ImageDecodeError, never anything else, and
decoding never allocates much beyond what an image within the pixel limit needs (tracemalloc). The
hand-written cases per format and bomb live in tests/services/test_imaging.py; these add generated input
and the deflate / multi-frame DICOM bombs found here."""

from __future__ import annotations

import io
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.imaging import MAX_BYTES_PER_PIXEL, ImageDecodeError, decode_image, decode_mask, read_header
from tests.services.test_imaging import dicom_bytes, pil_bytes, tiff_bytes

MAX_PIXELS = 48 * 48  # small, so that a file claiming more is common among the mutations
# What one decode may allocate (traced by tracemalloc): the pixels within the limit at float64 a few
# times over (stored, modality LUT, scaled) plus the input itself; a bomb goes far beyond.
ALLOWANCE = MAX_PIXELS * MAX_BYTES_PER_PIXEL * 8 + 2 * 1024 * 1024

RNG = np.random.default_rng(8)
GREY = RNG.integers(0, 256, (40, 40), dtype=np.uint8)
SAMPLES = {
    "png grey": pil_bytes(Image.fromarray(GREY), "PNG"),
    "png rgb": pil_bytes(Image.fromarray(np.dstack([GREY, GREY[::-1], GREY.T])), "PNG"),
    "png 16-bit": pil_bytes(Image.fromarray(GREY.astype(np.uint16) * 257), "PNG"),
    "jpeg": pil_bytes(Image.fromarray(GREY), "JPEG", quality=80),
    "tiff 8-bit": tiff_bytes(GREY),
    "tiff 16-bit deflate": tiff_bytes(GREY.astype(np.uint16) * 200, compression="zlib"),
    "tiff float": tiff_bytes(GREY.astype(np.float32) / 255),
    "dicom": dicom_bytes(GREY.astype(np.int16) * 4 - 500, slope=1.0, intercept=-1024.0),
}
HEADERS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"\0" * 128 + b"DICM"]


def decode_within_limits(data: bytes) -> None:
    """Decode, inspect and read as a mask; only ImageDecodeError may escape, and memory stays bounded."""
    tracemalloc.start()
    try:
        for decode in (decode_image, read_header, decode_mask):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # decoders warn about what they then refuse
                    out = decode(data, max_pixels=MAX_PIXELS)
            except ImageDecodeError:
                continue
            shape = out.array.shape if hasattr(out, "array") else getattr(out, "shape", None)
            height, width = (out.height, out.width) if shape is None else shape[:2]
            assert height * width <= MAX_PIXELS, (decode.__name__, height, width)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= ALLOWANCE + 4 * len(data), f"decoding {len(data)} bytes allocated {peak} bytes"


@st.composite
def mutated(draw) -> bytes:
    """A valid sample with a few edits: byte flips, 32-bit fields overwritten (sizes, offsets, lengths),
    a slice removed or duplicated, or the tail cut off."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "field", "cut", "repeat", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "field":
            value = draw(st.sampled_from([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65536, 100_000]))
            data[at : at + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 256))] * draw(st.integers(1, 8))
        else:
            del data[at:]
    return bytes(data)


HYPOTHESIS = settings(
    max_examples=150, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@HYPOTHESIS
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_or_decoded_within_limits(data):
    decode_within_limits(data)


@HYPOTHESIS
@given(st.sampled_from(HEADERS), st.binary(max_size=4096))
def test_a_known_signature_with_garbage_after_it_is_refused_cleanly(header, tail):
    decode_within_limits(header + tail)


@settings(HYPOTHESIS, max_examples=400)
@given(mutated())
def test_mutated_valid_images_are_refused_or_decoded_within_limits(data):
    decode_within_limits(data)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_unmutated_samples_decode(name):
    """The mutations start from files that decode (else the property tests would only see refusals)."""
    assert decode_image(SAMPLES[name], max_pixels=MAX_PIXELS).array.shape[:2] == (40, 40)


# --- DICOM bombs (found by hand while writing these properties; fixed in services/imaging.py) -----------
def _deflated_dicom(frames: int, pixel_bytes: int) -> bytes:
    """A deflated (PS3.5 A.5) 48×48 CT DICOM claiming `frames` frames with `pixel_bytes` of zeros."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((48, 48), np.int16))))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\0" * pixel_bytes
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_deflated_dicom_is_decoded():
    assert decode_image(_deflated_dicom(1, 48 * 48 * 2), max_pixels=MAX_PIXELS).array.shape == (48, 48)


@pytest.mark.parametrize("frames, pixel_bytes", [(20_000, 48 * 48 * 2 * 20_000), (1, 100_000_000)])
def test_deflate_bomb_dicom_is_refused_before_inflating_it(frames, pixel_bytes):
    """~100 KB on the wire that inflated to ~100 MB inside pydicom before its header was even looked at."""
    data = _deflated_dicom(frames, pixel_bytes)
    assert len(data) < 500_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="deflated DICOM expands to more than"):
            decode_image(data, max_pixels=MAX_PIXELS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOWANCE + 4 * len(data), peak  # before the fix: about pixel_bytes


def test_multi_frame_dicom_decodes_only_its_first_frame():
    import pydicom

    frames = np.stack([np.full((48, 48), v, np.int16) for v in (100, 900, 1700)])
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(frames[0])))
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    image = decode_image(buf.getvalue(), window={"center": 1000, "width": 2000})
    assert image.array.shape == (48, 48) and image.metadata["frames"] == 3
    assert np.allclose(image.array, 0.05)  # the first frame (100 in a 0…2000 window), not the others


def test_dicom_with_unusual_samples_per_pixel_is_refused_before_decoding():
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((48, 48), np.int16))))
    ds.SamplesPerPixel = 64
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="64 samples per pixel"):
        decode_image(buf.getvalue())
