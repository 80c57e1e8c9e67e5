"""services.imaging: every accepted format and depth, and every refusal, with real and generated files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from services import imaging
from services.imaging import (
    DecodedImage,
    ImageDecodeError,
    decode_grey8,
    decode_image,
    decode_mask,
    encode_png,
    read_header,
    sniff_format,
)
from tests.data import SHARED_DATA

DATA = SHARED_DATA
LIVER = DATA / "liver" / "train"
MONUSEG = DATA / "monuseg" / "train"
RNG = np.random.default_rng(0)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data file {path} is missing (see ../shared/data/README.md)")
    return path


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def dicom_bytes(
    stored: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
    spacing: tuple[float, float] | None = (0.75, 0.8),
    file_window: tuple[float, float] | None = None,
    rows: int | None = None,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows = rows if rows is not None else stored.shape[0]
    ds.Columns = stored.shape[1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if spacing:
        ds.PixelSpacing = list(spacing)
    if file_window:
        ds.WindowCenter, ds.WindowWidth = file_window
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: length, kind, body, CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height, followed by an IDAT that could never decode to it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


# --- real data ---------------------------------------------------------------------------------


def test_liver_slice_png_is_rgb_in_unit_range():
    data = need(LIVER / "000.png").read_bytes()
    out = decode_image(data)
    expected = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255.0
    assert isinstance(out, DecodedImage)
    assert out.format == "PNG" and out.spacing_mm is None
    assert out.array.dtype == np.float32 and out.array.shape == (512, 512, 3)
    np.testing.assert_allclose(out.array, expected, atol=1e-6)
    assert (out.width, out.height) == (512, 512) and out.metadata["channels"] == 3


def test_monuseg_tile_png():
    path = need(MONUSEG / "images").glob("*.png").__next__()
    out = decode_image(path.read_bytes())
    assert out.array.shape == (1000, 1000, 3)
    assert 0.0 <= out.array.min() < out.array.max() <= 1.0


def test_liver_mask_any_nonzero_is_foreground():
    data = need(LIVER / "000_mask.png").read_bytes()
    mask = decode_mask(data)
    stored = np.asarray(Image.open(io.BytesIO(data)))
    assert mask.dtype == np.bool_ and mask.shape == (512, 512)
    np.testing.assert_array_equal(mask, stored != 0)
    assert 0 < mask.mean() < 1


def test_jpeg_of_a_liver_slice_is_close_to_the_png():
    png = need(LIVER / "001.png").read_bytes()
    jpeg = pil_bytes(Image.open(io.BytesIO(png)), "JPEG", quality=95)
    a, b = decode_image(png).array, decode_image(jpeg)
    assert b.format == "JPEG" and b.array.shape == a.shape
    assert np.abs(a - b.array).mean() < 0.01


# --- PNG depths and modes --------------------------------------------------------------------------


def test_png_16bit_grey_uses_full_16bit_range():
    arr = RNG.integers(0, 65536, size=(40, 50), dtype=np.uint16)
    out = decode_image(pil_bytes(Image.fromarray(arr), "PNG"))
    assert out.array.shape == (40, 50)
    np.testing.assert_allclose(out.array, arr / 65535.0, atol=1e-6)


def test_png_1bit():
    arr = RNG.random((32, 48)) > 0.5
    out = decode_image(pil_bytes(Image.fromarray(arr).convert("1"), "PNG"))
    np.testing.assert_array_equal(out.array, arr.astype(np.float32))


def test_png_palette_becomes_rgb():
    index = RNG.integers(0, 3, size=(20, 30), dtype=np.uint8)
    im = Image.fromarray(index, mode="L").convert("P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    out = decode_image(pil_bytes(im, "PNG"))
    palette = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(out.array, palette[index])


def test_png_grey_alpha_and_rgba_drop_alpha():
    grey = RNG.integers(0, 256, size=(24, 24), dtype=np.uint8)
    alpha = np.zeros_like(grey)
    la = decode_image(pil_bytes(Image.fromarray(np.dstack([grey, alpha]), mode="LA"), "PNG"))
    np.testing.assert_allclose(la.array, grey / 255.0, atol=1e-6)
    rgb = RNG.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    rgba = decode_image(pil_bytes(Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), "PNG"))
    np.testing.assert_allclose(rgba.array, rgb / 255.0, atol=1e-6)


def test_grey_jpeg_is_2d():
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    out = decode_image(pil_bytes(Image.fromarray(grey), "JPEG", quality=95))
    assert out.array.ndim == 2 and out.format == "JPEG"
    assert np.abs(out.array - grey / 255.0).max() < 0.05


# --- TIFF -------------------------------------------------------------------------------------


def test_tiff_8bit_and_16bit():
    a8 = RNG.integers(0, 256, size=(30, 40), dtype=np.uint8)
    a16 = RNG.integers(0, 65536, size=(30, 40), dtype=np.uint16)
    np.testing.assert_allclose(decode_image(tiff_bytes(a8)).array, a8 / 255.0, atol=1e-6)
    out16 = decode_image(tiff_bytes(a16, compression="zlib"))
    assert out16.format == "TIFF" and out16.metadata["bits"] == 16
    np.testing.assert_allclose(out16.array, a16 / 65535.0, atol=1e-6)


def test_tiff_16bit_rgb_contiguous_and_planar():
    rgb = RNG.integers(0, 65536, size=(20, 24, 3), dtype=np.uint16)
    contig = decode_image(tiff_bytes(rgb, photometric="rgb"))
    planar = decode_image(tiff_bytes(np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"))
    np.testing.assert_allclose(contig.array, rgb / 65535.0, atol=1e-6)
    np.testing.assert_allclose(planar.array, rgb / 65535.0, atol=1e-6)


def test_tiff_float_kept_in_unit_range_else_min_max_scaled():
    inside = RNG.random((20, 20)).astype(np.float32)
    np.testing.assert_allclose(decode_image(tiff_bytes(inside)).array, inside, atol=1e-7)
    hu = np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(20, 20)
    out = decode_image(tiff_bytes(hu)).array
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, (hu + 1000) / 2000, atol=1e-6)


def test_tiff_float_with_nan_is_finite():
    arr = RNG.random((20, 20)).astype(np.float32) * 5
    arr[3, 4] = np.nan
    out = decode_image(tiff_bytes(arr)).array
    assert np.isfinite(out).all() and out[3, 4] == 0.0


def test_tiff_multipage_takes_first_page():
    pages = RNG.integers(0, 256, size=(3, 20, 30), dtype=np.uint8)
    out = decode_image(tiff_bytes(pages, photometric="minisblack"))
    assert out.metadata["pages"] == 3
    np.testing.assert_allclose(out.array, pages[0] / 255.0, atol=1e-6)


def test_tiff_lzw_falls_back_to_pillow():
    rgb = RNG.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    out = decode_image(pil_bytes(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"))
    np.testing.assert_allclose(out.array, rgb / 255.0, atol=1e-6)


def test_tiff_miniswhite_is_inverted():
    arr = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    out = decode_image(tiff_bytes(arr, photometric="miniswhite")).array
    np.testing.assert_allclose(out, 1.0 - arr / 255.0, atol=1e-6)


def test_tiff_palette():
    index = RNG.integers(0, 2, size=(20, 20), dtype=np.uint8)
    im = Image.fromarray(index, mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
    out = decode_image(pil_bytes(im, "TIFF")).array
    np.testing.assert_allclose(out, np.repeat(index[:, :, None], 3, axis=2).astype(np.float32), atol=1e-6)


# --- DICOM ------------------------------------------------------------------------------------


def test_dicom_rescale_and_organ_window():
    hu = np.array([[-140, 60, 260, -1000]] * 16, dtype=np.int16)
    stored = np.tile(((hu + 1024) // 2).astype(np.uint16), (1, 4))  # slope 2, intercept -1024
    out = decode_image(dicom_bytes(stored, slope=2, intercept=-1024), window={"center": 60, "width": 400})
    assert out.format == "DICOM" and out.spacing_mm == (0.75, 0.8)
    np.testing.assert_allclose(out.array[0, :4], [0.0, 0.5, 1.0, 0.0], atol=1e-6)
    assert out.metadata["window"] == {"center": 60.0, "width": 400.0}


def test_dicom_monochrome1_is_inverted():
    stored = np.tile(np.array([0, 100, 200, 300], dtype=np.uint16), (16, 4))
    window = {"center": 150, "width": 300}
    plain = decode_image(dicom_bytes(stored), window=window).array
    inverted = decode_image(dicom_bytes(stored, photometric="MONOCHROME1"), window=window)
    np.testing.assert_allclose(inverted.array, 1.0 - plain, atol=1e-6)


def test_dicom_falls_back_to_file_window_then_min_max():
    stored = np.tile(np.array([0, 100, 200, 400], dtype=np.uint16), (16, 4))
    with_file_window = decode_image(dicom_bytes(stored, file_window=(100, 200))).array
    np.testing.assert_allclose(with_file_window[0, :4], [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    min_max = decode_image(dicom_bytes(stored, spacing=None))
    assert min_max.spacing_mm is None
    np.testing.assert_allclose(min_max.array[0, :4], [0.0, 0.25, 0.5, 1.0], atol=1e-6)


def test_dicom_sample_file_from_pydicom():
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    out = decode_image(Path(path).read_bytes(), window={"center": 40, "width": 400})
    ds = pydicom.dcmread(path)
    assert out.array.shape == (ds.Rows, ds.Columns)
    assert out.spacing_mm == tuple(float(v) for v in ds.PixelSpacing)
    assert 0.0 <= out.array.min() < out.array.max() <= 1.0


# The refusals a header allows: decode_image makes them before decoding a pixel, read_header makes the same
# ones and decodes nothing (the gateway's upload check; the organ server decodes).
READERS = pytest.mark.parametrize("read", [decode_image, read_header], ids=["decode_image", "read_header"])


@READERS
def test_dicom_without_pixels_is_refused(read):
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        read(buf.getvalue())


# --- refusals ---------------------------------------------------------------------------------


@READERS
def test_bomb_is_refused_from_the_header_before_decoding(read):
    # The IDAT holds 64 bytes: decoding would fail as truncated; the size check must come first.
    with pytest.raises(ImageDecodeError, match="megapixel limit"):
        read(png_header_only(8000, 6000))


@READERS
def test_pillow_bomb_guard_is_an_error_too(read):
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        read(png_header_only(20000, 20000), max_pixels=10**12)


@READERS
def test_dicom_bomb_is_refused_before_reading_pixels(read):
    with pytest.raises(ImageDecodeError, match="megapixel limit"):
        read(dicom_bytes(np.zeros((16, 1000), dtype=np.uint16), rows=65535))


@READERS
def test_tiff_bomb_is_refused(read):
    data = tiff_bytes(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="megapixel limit"):
        read(data, max_pixels=64 * 63)


@READERS
def test_tiny_image_is_refused(read):
    with pytest.raises(ImageDecodeError, match="at least 16 pixels"):
        read(pil_bytes(Image.new("L", (15, 200)), "PNG"))


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"", "empty upload"),
        (b"hello, this is not an image at all", "unrecognised image format"),
        (b"GIF89a" + b"\0" * 100, "unrecognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "corrupt or truncated PNG"),
        (b"\xff\xd8\xff\xe0" + b"garbage" * 20, "corrupt or truncated JPEG"),
        (b"II*\x00" + b"\xff" * 60, "corrupt or truncated TIFF"),
        (b"\0" * 128 + b"DICM" + b"\x07" * 40, "DICOM"),
    ],
)
@READERS
def test_bad_bytes_are_refused_with_what_is_accepted(read, data, phrase):
    with pytest.raises(ImageDecodeError, match=phrase) as info:
        read(data)
    assert isinstance(info.value, ValueError)
    if phrase != "empty upload":
        assert "PNG, JPEG, TIFF" in str(info.value) or "DICOM" in str(info.value)


def test_truncated_real_png_is_refused():
    data = need(LIVER / "002.png").read_bytes()
    with pytest.raises(ImageDecodeError, match="corrupt or truncated PNG"):
        decode_image(data[: len(data) // 2])


def test_sniff_format():
    assert sniff_format(png_header_only(20, 20)) == "PNG"
    assert sniff_format(b"MM\x00*....") == "TIFF"
    assert sniff_format(b"BM....") is None


# --- masks and encoding -------------------------------------------------------------------------


def test_mask_multilabel_and_alpha_ignored():
    labels = RNG.integers(0, 3, size=(20, 20), dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(pil_bytes(Image.fromarray(labels), "PNG")), labels > 0)
    opaque_black = np.zeros((20, 20, 4), dtype=np.uint8)
    opaque_black[..., 3] = 255
    assert not decode_mask(pil_bytes(Image.fromarray(opaque_black, mode="RGBA"), "PNG")).any()


def test_mask_float_tiff_all_ones_is_all_foreground():
    assert decode_mask(tiff_bytes(np.ones((20, 20), dtype=np.float32))).all()


def test_encode_png_round_trip():
    grey = RNG.integers(0, 256, size=(33, 47), dtype=np.uint8)
    data = encode_png(grey)
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), grey)
    mask = grey > 128
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(mask)))), mask * 255)
    rgb = RNG.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb)))), rgb)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (2, 2), (512, 512), (77, 513)])
def test_grey_png_writer_is_lossless_and_decodes_everywhere(shape):
    """The hand-written grey encoder (unfiltered rows, Z_RLE) against Pillow's decoder and our own."""
    for grey in (
        RNG.integers(0, 256, size=shape, dtype=np.uint8),
        np.zeros(shape, np.uint8),
        np.full(shape, 255, np.uint8),
        np.tile(np.arange(shape[1], dtype=np.uint8), (shape[0], 1)),
    ):
        data = encode_png(grey)
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (shape[1], shape[0]))
            np.testing.assert_array_equal(np.asarray(im), grey)
        if min(shape) >= 16:
            np.testing.assert_array_equal(decode_image(data).array, grey.astype(np.float32) / 255.0)
        np.testing.assert_array_equal(decode_grey8(data), grey)


def test_grey_pngs_written_elsewhere_still_decode_and_damaged_ones_are_refused():
    """decode_grey8 reads encode_png's layout itself and leaves every other PNG to Pillow: filtered rows
    (Pillow's adaptive filters), several IDAT chunks, other modes; a bad CRC is no fast-path answer."""
    grey = np.tile(np.arange(64, dtype=np.uint8), (40, 1)) + RNG.integers(0, 3, size=(40, 64), dtype=np.uint8)
    filtered = pil_bytes(Image.fromarray(grey), "PNG", optimize=True)
    np.testing.assert_array_equal(decode_grey8(filtered), grey)
    ours = encode_png(grey)
    # the same pixels split over two IDAT chunks: still read directly
    ihdr_end = 8 + 25
    length = struct.unpack(">I", ours[ihdr_end : ihdr_end + 4])[0]
    stream = ours[ihdr_end + 8 : ihdr_end + 8 + length]
    half = len(stream) // 2
    idats = chunk(b"IDAT", stream[:half]) + chunk(b"IDAT", stream[half:])
    split = ours[:ihdr_end] + idats + chunk(b"IEND", b"")
    np.testing.assert_array_equal(decode_grey8(split), grey)
    for direct in (ours, split):  # read without Pillow
        np.testing.assert_array_equal(imaging._decode_unfiltered_grey(direct), grey)
    assert imaging._decode_unfiltered_grey(filtered) is None  # Pillow's rows are filtered: its own decoder
    assert decode_grey8(pil_bytes(Image.fromarray(np.stack([grey] * 3, axis=2)), "PNG")) is None  # RGB
    damaged = bytearray(ours)
    damaged[ihdr_end + 8 + 3] ^= 0xFF  # a byte of the deflated pixels: the IDAT CRC no longer matches
    assert decode_grey8(bytes(damaged)) is None
    assert decode_grey8(ours[: len(ours) // 2]) is None  # truncated
    cut = ours[:ihdr_end] + chunk(b"IDAT", stream[: len(stream) - 6]) + chunk(b"IEND", b"")
    assert imaging._decode_unfiltered_grey(cut) is None  # chunks whole, the deflate stream cut short


def test_encode_png_takes_non_contiguous_and_single_channel_arrays():
    grey = RNG.integers(0, 256, size=(40, 60, 1), dtype=np.uint8)
    for view in (grey[:, :, 0].T, grey[::2, ::3, 0], grey):
        data = encode_png(view)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), np.squeeze(view))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_scaling_is_the_float32_division_by_the_type_maximum(dtype):
    top = np.iinfo(dtype).max
    pixels = np.concatenate([np.arange(0, top + 1, max(1, top // 4095), dtype=dtype), [dtype(top)]])
    image = np.resize(pixels, (64, max(16, pixels.size // 64 + 1))).astype(dtype)
    expected = np.clip((image.astype(np.float32) - np.float32(0.0)) / np.float32(top), 0.0, 1.0)
    got = decode_image(tiff_bytes(image)).array
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


HEADER_CASES = {
    "png grey": lambda: pil_bytes(Image.fromarray(RNG.integers(0, 256, (40, 64), dtype=np.uint8)), "PNG"),
    "png rgba": lambda: pil_bytes(Image.new("RGBA", (33, 17)), "PNG"),
    "jpeg": lambda: pil_bytes(Image.new("RGB", (50, 30)), "JPEG"),
    "tiff 16-bit rgb": lambda: tiff_bytes(np.zeros((20, 70, 3), dtype=np.uint16), photometric="rgb"),
    "dicom ct": lambda: Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes(),
    "liver slice": lambda: need(LIVER / "002.png").read_bytes(),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_read_header_finds_what_decoding_finds(case):
    data = HEADER_CASES[case]()
    decoded = decode_image(data)
    info = read_header(data)
    assert (info.height, info.width) == decoded.array.shape[:2]
    assert (info.format, info.spacing_mm) == (decoded.format, decoded.spacing_mm)


@pytest.mark.parametrize("case", ["png grey", "tiff 16-bit rgb", "dicom ct", "liver slice"])
def test_read_header_leaves_corrupt_pixels_to_the_decoder(case):
    """Cut in the pixel data: the header still reads (the size is right), and decoding refuses the file."""
    data = HEADER_CASES[case]()
    cut = data[: len(data) - max(40, len(data) // 3)]
    whole, info = read_header(data), read_header(cut)
    assert (info.height, info.width, info.format) == (whole.height, whole.width, whole.format)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(cut)


def test_encode_png_refuses_floats():
    with pytest.raises(TypeError, match="uint8"):
        encode_png(np.zeros((20, 20), dtype=np.float32))


# --- modality values for a viewer's window/level (decode_values) and the image's directions ---------------
def test_decode_values_gives_a_ct_in_hounsfield_units_as_int16():
    from services.imaging import decode_values

    stored = RNG.integers(0, 2000, size=(24, 32)).astype(np.int16)
    values = decode_values(dicom_bytes(stored, intercept=-1024.0, file_window=(40.0, 350.0)))
    assert values.values.dtype == np.int16 and np.array_equal(values.values, stored.astype(np.int32) - 1024)
    assert (values.unit, values.invert, values.file_window) == ("HU", False, {"center": 40.0, "width": 350.0})
    assert values.orientation is None  # dicom_bytes writes no ImageOrientationPatient


def test_decode_values_keeps_fractions_as_float32_and_says_monochrome1_is_inverted():
    from services.imaging import decode_values

    stored = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)
    values = decode_values(dicom_bytes(stored, slope=0.5, photometric="MONOCHROME1"))
    assert values.values.dtype == np.float32 and values.values[0, 1] == pytest.approx(0.5)
    assert values.invert and values.file_window is None


def test_decode_values_is_none_for_images_that_come_windowed():
    from services.imaging import decode_values

    grey = RNG.integers(0, 256, size=(20, 20), dtype=np.uint8)
    assert decode_values(pil_bytes(Image.fromarray(grey), "PNG")) is None
    assert decode_values(tiff_bytes(grey.astype(np.uint16))) is None


@pytest.mark.parametrize(
    ("cosines", "expected"),
    [
        ([1, 0, 0, 0, 1, 0], ("L", "P")),  # axial as scanners write it
        ([-1, 0, 0, 0, -1, 0], ("R", "A")),
        ([0, 1, 0, 0, 0, -1], ("P", "I")),  # sagittal
        ([1, 0, 0, 0, 0, -1], ("L", "I")),  # coronal
        ([0.866, 0.5, 0, -0.5, 0.866, 0], ("LP", "PR")),  # axial turned 30°: the strongest letter first
        ([1, 0, 0], None),
        (None, None),
        (["a", 0, 0, 0, 1, 0], None),
    ],
)
def test_patient_directions_name_the_right_and_bottom_edges(cosines, expected):
    from services.imaging import patient_directions

    assert patient_directions(cosines) == expected
