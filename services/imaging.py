"""Decode uploaded image bytes into float arrays, and encode result PNGs.

One decoder for the whole platform (organ handler, gateway, trainer), so that an upload means the same
thing everywhere:

    decode_image(data, window=spec.window) -> DecodedImage(array, format, spacing_mm, metadata)
    read_header(data) -> ImageInfo(height, width, format, spacing_mm), no pixel decoded
    decode_mask(data) -> bool H×W array (any non-zero pixel is foreground)
    encode_png(uint8 or bool array) -> PNG bytes

Accepted: PNG, JPEG, TIFF (1/8/16-bit integer, 32-bit float; first page of a multi-page file) and DICOM
(uncompressed or deflated transfer syntaxes; first frame). The format is recognised from the content, not
from a file name. Scaling to [0, 1]:

* 1/8/16-bit unsigned integers: divided by the type's maximum (1, 255, 65535);
* float, signed or 32-bit integers: kept if already inside [0, 1], else min-max scaled over the image;
* DICOM: modality LUT (RescaleSlope/Intercept), then the given window {center, width} (the organ's
  intensity window; falls back to the file's own window, then min-max), MONOCHROME1 inverted.

Grey images come back as H×W, colour as H×W×3 (palette, CMYK, YCbCr converted to RGB; alpha dropped).

A volume's slices travel as one .npy (n, H, W) of float32 or int16 intensities in the network's orientation
(`decode_volume_chunk`): Hounsfield units through the organ's window with the same `apply_window` a DICOM
goes through, other modalities scaled slice by slice as a float image is.

Every refusal is an `ImageDecodeError` (a ValueError) whose message says what is wrong and what is accepted.
Decompression bombs are refused from the header, before any pixel is decoded; `read_header` makes every
refusal the header allows (format, bombs, size limits, DICOM without pixels) and stops there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from zlib_ng import zlib_ng

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # width × height of one image (one page / frame)
MIN_SIDE = 16
ACCEPTED = "PNG, JPEG, TIFF (8/16-bit, float) or DICOM"

# Raw bytes one pixel may take (4 samples of 16 bits, or one 64-bit float): what an image within the
# pixel limit may cost before it is scaled; a file that would make us allocate more is refused first.
MAX_BYTES_PER_PIXEL = 8
DICOM_HEADER_ALLOWANCE = 1024 * 1024  # the elements around the pixel data of a deflated DICOM
_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"

# A volume chunk (services.handler_base): an .npy of (n, H, W) slices; the answer is one too.
NPY_MAGIC = b"\x93NUMPY"
NPY_CONTENT_TYPE = "application/x-npy"
NPY_MAX_HEADER = 10_000  # bytes of an .npy header (numpy's own default bound)
VOLUME_DTYPES = (np.dtype(np.float32), np.dtype(np.int16))
DEFAULT_MAX_SLICES = 64  # slices per volume chunk (handler setting max_volume_slices)
CHUNK_FORM = "an .npy of (slices, height, width) float32 or int16"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


class ImageDecodeError(ValueError):
    """The bytes are not an image we accept; the message says why and what is accepted."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded upload: `array` is float32 in [0, 1], H×W (grey) or H×W×3 (colour)."""

    array: np.ndarray
    format: str  # "PNG" | "JPEG" | "TIFF" | "DICOM"
    spacing_mm: tuple[float, float] | None = (
        None  # (row, col) pixel spacing; only DICOM carries a reliable one
    )
    metadata: dict = field(
        default_factory=dict
    )  # width, height, channels, dtype, bits, mode, pages/frames, ...

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])


@dataclass
class _Raw:
    """Pixels as stored (alpha already dropped), before scaling to [0, 1]."""

    pixels: np.ndarray
    format: str
    metadata: dict
    spacing_mm: tuple[float, float] | None = None
    unit_range: tuple[float, float] | None = None  # the value range that maps to [0, 1], when known
    invert: bool = False


# --- public API -------------------------------------------------------------------------------


def sniff_format(data: bytes) -> str | None:
    """The accepted format the bytes start like ("PNG", "JPEG", "TIFF", "DICOM"), or None."""
    # DICOM first: its 128-byte preamble may itself hold a TIFF header (dual-personality files).
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data[:4] in _TIFF_MAGICS:
        return "TIFF"
    return None


def decode_image(
    data: bytes,
    *,
    window: dict | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
) -> DecodedImage:
    """Decode PNG/JPEG/TIFF/DICOM bytes to a float32 [0, 1] array (see the module docstring).

    `window` ({"center": c, "width": w}, in the modality's units, e.g. Hounsfield) applies to DICOM only:
    other formats are taken as already windowed. Raises ImageDecodeError for anything we do not accept.
    """
    raw = _read(data, max_pixels=max_pixels, min_side=min_side, window=window)
    array = _to_unit(raw)
    meta = dict(raw.metadata)
    meta.update(height=int(array.shape[0]), width=int(array.shape[1]), channels=_channels(array))
    return DecodedImage(array=array, format=raw.format, spacing_mm=raw.spacing_mm, metadata=meta)


@dataclass(frozen=True)
class ImageInfo:
    """What `read_header` found: the size, format and pixel spacing an upload declares."""

    height: int
    width: int
    format: str
    spacing_mm: tuple[float, float] | None = None


def read_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> ImageInfo:
    """Size, format and pixel spacing of an upload from its header alone: what `decode_image` refuses before
    decoding a pixel (unknown format, decompression bomb, more than `max_pixels`, a side under `min_side`, a
    DICOM without pixel data or with 2 or 4+ samples a pixel) is refused here the same way, in well under a
    millisecond. A file whose header reads but whose pixels are corrupt or truncated passes: whoever decodes
    the pixels (the organ server, with `decode_image`) refuses it then."""
    data, fmt = _sniffed(data)
    limits = {"max_pixels": max_pixels, "min_side": min_side}
    with _decoder_errors(fmt):
        if fmt == "DICOM":
            ds = _dicom_dataset(data, header_only=True, **limits)
            return ImageInfo(int(ds.Rows), int(ds.Columns), fmt, _dicom_spacing(ds))
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                height, width = _tiff_first_page(tif, **limits)[1:]
            return ImageInfo(height, width, fmt)
        with _pillow_image(data, fmt, **limits) as im:
            width, height = im.size
        return ImageInfo(height, width, fmt)


def decode_grey8(data: bytes) -> np.ndarray | None:
    """An 8-bit grey PNG's bytes as uint8 H×W, or None when the data are anything else (the caller then
    decodes them the general way, which explains what is wrong). What `encode_png` writes (every
    probability map) is read directly: inflated and its filter bytes dropped, 0.3 ms for a 512² map against
    Pillow's 1.3–1.8."""
    if not data.startswith(_PNG_MAGIC):
        return None
    unfiltered = _decode_unfiltered_grey(data)
    if unfiltered is not None:
        return unfiltered
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.mode != "L":
                return None
            return np.asarray(im)
    except Exception:  # corrupt: let decode_image say why
        return None


def decode_mask(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode a label mask (PNG/TIFF/DICOM; JPEG works but is lossy) to a bool H×W array.

    Any non-zero stored value in any colour channel is foreground (0/1, 0/255 and multi-label maps all
    work); alpha is ignored.
    """
    raw = _read(data, max_pixels=max_pixels, min_side=min_side, window=None, stored_values=True)
    pixels = np.nan_to_num(raw.pixels, nan=0.0) if raw.pixels.dtype.kind == "f" else raw.pixels
    nonzero = pixels != 0
    return nonzero.any(axis=2) if nonzero.ndim == 3 else nonzero


@dataclass(frozen=True)
class ModalityValues:
    """A grey DICOM's pixels in the modality's units, for a viewer that windows them itself."""

    values: np.ndarray  # H×W: int16 when every value is a whole number that fits, else float32
    unit: str  # "HU" for CT, else the file's RescaleType or "" (no named unit)
    invert: bool  # MONOCHROME1: high values are shown dark
    file_window: dict | None  # the file's own {center, width}, when it has one
    orientation: tuple[str, str] | None  # patient directions of the image's +column and +row (e.g. "L", "P")


def decode_values(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ModalityValues | None:
    """The modality values (after RescaleSlope/Intercept: Hounsfield units for CT) of a grey DICOM, the
    input of window/level in a viewer; None for every other image (PNG, JPEG, TIFF and colour DICOM come
    windowed already: their 8-bit pixels are all there is to show)."""
    if sniff_format(data) != "DICOM":
        return None
    raw = _read(data, max_pixels=max_pixels, min_side=MIN_SIDE, window=None)
    if not raw.metadata.get("photometric", "").startswith("MONOCHROME") or raw.pixels.ndim != 2:
        return None
    values = np.nan_to_num(np.asarray(raw.pixels, dtype=np.float64), nan=0.0)
    info16 = np.iinfo(np.int16)
    whole = (
        bool(np.all(values == np.rint(values))) and info16.min <= values.min() and values.max() <= info16.max
    )
    modality = raw.metadata.get("modality", "")
    lo_hi = raw.unit_range
    return ModalityValues(
        values=values.astype(np.int16 if whole else np.float32),
        unit="HU" if modality == "CT" else raw.metadata.get("rescale_type", ""),
        invert=raw.invert,
        file_window=None
        if lo_hi is None
        else {"center": (lo_hi[0] + lo_hi[1]) / 2, "width": lo_hi[1] - lo_hi[0]},
        orientation=raw.metadata.get("orientation"),
    )


def patient_directions(orientation: object) -> tuple[str, str] | None:
    """DICOM ImageOrientationPatient (the patient-space directions, LPS, of a row and of a column) as the
    letters of the image's +column and +row directions, e.g. ("L", "P") for an axial slice as scanners
    write it; an oblique direction has two or three letters, the strongest first ("LA"). None when the
    attribute is missing or malformed."""
    try:
        cosines = [float(v) for v in orientation]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(cosines) != 6 or not all(np.isfinite(cosines)):
        return None
    letters = (("R", "L"), ("A", "P"), ("I", "S"))  # negative, positive along patient x, y, z (LPS)

    def name(direction: list[float]) -> str:
        order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
        return "".join(letters[a][direction[a] > 0] for a in order if abs(direction[a]) > 0.25)

    row, column = cosines[:3], cosines[3:]
    along_row, along_column = name(row), name(column)
    return (along_row, along_column) if along_row and along_column else None


def decode_volume_chunk(
    data: bytes,
    *,
    window: dict | None,
    max_slices: int = DEFAULT_MAX_SLICES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """A chunk of a volume's slices — an .npy holding a (n, H, W) float32 or int16 array of intensities in
    the network's orientation — scaled to float32 [0, 1] (n, H, W) as the 2-D path scales one image:
    with `window` ({center, width} in the modality's units, e.g. Hounsfield) as a DICOM's pixels are
    (apply_window); without one, each slice on its own as a float or signed image is (identity inside
    [0, 1], else its min-max). The header is checked (dtype, dimensions, `max_slices`, `max_pixels` per
    slice, the byte count) before any value is read; non-finite values are refused."""
    shape, dtype, fortran, offset = read_npy_header(data)
    if dtype.newbyteorder("=") not in VOLUME_DTYPES:
        raise ImageDecodeError(
            f"volume chunk of dtype {dtype}; send float32 or int16 intensities ({CHUNK_FORM})"
        )
    if len(shape) != 3:
        raise ImageDecodeError(f"volume chunk of shape {shape}: expected 3 dimensions, {CHUNK_FORM}")
    slices, height, width = shape
    if not 1 <= slices <= max_slices:
        raise ImageDecodeError(
            f"volume chunk of {slices} slices: send 1 to {max_slices} slices per request ({CHUNK_FORM})"
        )
    _check_size("volume slice", height, width, max_pixels=max_pixels, min_side=min_side)
    expected = slices * height * width * dtype.itemsize
    if len(data) - offset != expected:
        raise ImageDecodeError(
            f"volume chunk header says {shape} {dtype} ({expected} bytes) but {len(data) - offset} bytes "
            "follow it: a truncated or padded .npy"
        )
    values = np.frombuffer(data, dtype=dtype, count=slices * height * width, offset=offset)
    values = values.reshape(shape, order="F" if fortran else "C")
    if dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ImageDecodeError(f"volume chunk holds {bad} non-finite values (NaN or infinity)")
    if window:
        return np.ascontiguousarray(apply_window(values, window))
    out = np.empty(shape, np.float32)
    for i, plane in enumerate(values):  # each slice as the 2-D path scales one float or signed image
        out[i] = scale_to_unit(plane, *_value_range(plane))
    return out


def decode_whole_volume(data: bytes, *, max_shape: tuple[int, int, int]) -> np.ndarray:
    """A 3-D organ's request — an .npy holding one whole (z, y, x) float32 or int16 volume of raw intensities
    (MR has no fixed scale: the handler normalises per volume) — as float32 (z, y, x). The header is checked
    (dtype, 3 dimensions, no axis of 1 voxel or larger than `max_shape`, the byte count) before any value is
    read; non-finite values are refused."""
    form = "an .npy of one (z, y, x) float32 or int16 volume"
    shape, dtype, fortran, offset = read_npy_header(data)
    if dtype.newbyteorder("=") not in VOLUME_DTYPES:
        raise ImageDecodeError(f"volume of dtype {dtype}; send float32 or int16 intensities ({form})")
    if len(shape) != 3:
        raise ImageDecodeError(f"an array of shape {shape} is not a volume: expected (z, y, x), {form}")
    if min(shape) < 2:
        raise ImageDecodeError(f"a volume of shape {shape} is a single image, not a volume ({form})")
    if any(n > m for n, m in zip(shape, max_shape, strict=True)):
        raise ImageDecodeError(
            f"a volume of shape {shape} is larger than the network's input {tuple(max_shape)} (z, y, x)"
        )
    count = int(np.prod(shape))
    if len(data) - offset != count * dtype.itemsize:
        raise ImageDecodeError(
            f"volume header says {shape} {dtype} ({count * dtype.itemsize} bytes) but {len(data) - offset} "
            "bytes follow it: a truncated or padded .npy"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(
        shape, order="F" if fortran else "C"
    )
    if dtype.kind == "f" and not np.isfinite(values).all():
        raise ImageDecodeError("the volume holds non-finite values (NaN or infinity)")
    return values.astype(np.float32)


def read_npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, offset of the values) of .npy bytes, from the header alone; refuses
    anything else, and object arrays (which would need unpickling)."""
    if not is_npy(data):
        raise ImageDecodeError("not an .npy (it does not start with \\x93NUMPY)")
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"format version {version}; np.save writes 1.0 or 2.0")
        shape, fortran, dtype = readers[version](fh, max_header_size=NPY_MAX_HEADER)
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors...
        raise ImageDecodeError(f"unreadable .npy header ({exc})") from exc
    if dtype.hasobject:
        raise ImageDecodeError(f".npy of dtype {dtype}: object arrays are refused")
    return tuple(int(n) for n in shape), dtype, bool(fortran), fh.tell()


def is_npy(data: bytes) -> bool:
    return bytes(data[: len(NPY_MAGIC)]) == NPY_MAGIC


def encode_npy(array: np.ndarray) -> bytes:
    """An array as .npy bytes (the volume answer: uint8 (n, H, W) probabilities)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """.npy bytes → array, never unpickling; ValueError when they are not a complete .npy."""
    if not is_npy(data):
        raise ValueError("not an .npy")
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_png(array: np.ndarray, *, compress_level: int = 1) -> bytes:
    """Encode a uint8 H×W (grey) or H×W×3 (RGB) array — or a bool mask, written as 0/255 — as PNG.

    Grey images (every probability map and mask, encoded on every request) are written here directly:
    unfiltered rows and the run-length strategy at level 1, deflated by zlib-ng (a 512×512
    mask in 0.13 ms against zlib's 1.09, the same bytes' size; a map 10× faster), so the seven masks of a
    segment answer cost about 1 ms. Colour goes through Pillow.
    """
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8) * np.uint8(255)
    if arr.dtype != np.uint8:
        raise TypeError(f"encode_png needs a uint8 (or bool) array, got {arr.dtype}; scale and cast first")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return _encode_grey_png(arr, compress_level)
    if not (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        raise ValueError(f"encode_png needs H×W, H×W×3 or H×W×4, got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _encode_grey_png(arr: np.ndarray, compress_level: int) -> bytes:
    """8-bit grey PNG (colour type 0), one IDAT, every scanline unfiltered (filter byte 0), deflated by
    zlib-ng with Z_RLE (any inflater reads it). Run-length coding finds the runs of a map or a mask as well
    without the "Up" filter (sizes within 3 % on liver maps), and unfiltered rows are read back without
    undoing a filter (`_decode_unfiltered_grey`)."""
    height, width = arr.shape
    rows = np.zeros((height, width + 1), np.uint8)
    rows[:, 1:] = arr
    deflate = zlib_ng.compressobj(compress_level, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_RLE)
    idat = deflate.compress(rows.data) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return _PNG_MAGIC + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _decode_unfiltered_grey(data: bytes) -> np.ndarray | None:
    """The pixels of an 8-bit grey, non-interlaced PNG whose scanlines are all unfiltered (what
    `_encode_grey_png` writes), every chunk's CRC checked; None for any other PNG (Pillow reads those)."""
    pos, header, idat = len(_PNG_MAGIC), None, []
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data) or zlib.crc32(data[pos + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return None
        if kind == b"IHDR":
            header = struct.unpack_from(">IIBBBBB", data, pos + 8) if length == 13 else None
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : end])
        elif kind == b"IEND":
            break
        pos = end + 4
    if header is None or header[2:] != (8, 0, 0, 0, 0) or not idat:  # 8-bit grey, no interlace
        return None
    width, height = header[0], header[1]
    if not 0 < width * height <= DEFAULT_MAX_PIXELS:  # no allocation a header alone asks for
        return None
    inflater, first = zlib_ng.decompressobj(), min(height, 2) * (width + 1)
    try:
        # the first two scanlines' filter bytes before the rest: an archive packed before this encoder
        # (its organ server filters rows with "Up") costs a microsecond here, not an inflate
        head = inflater.decompress(b"".join(idat), first)
        if len(head) < first or head[0] != 0 or (height > 1 and head[width + 1] != 0):
            return None
        raw = head + inflater.decompress(inflater.unconsumed_tail) + inflater.flush()
    except zlib_ng.error:
        return None
    if not inflater.eof or len(raw) != height * (width + 1):  # truncated (its checksum unread) or off size
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    if rows[:, 0].any():  # some scanline is filtered
        return None
    return rows[:, 1:].copy()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# --- reading ----------------------------------------------------------------------------------


def _sniffed(data: bytes) -> tuple[bytes, str]:
    """(the bytes, their format), or ImageDecodeError for what is not bytes, empty or not a format we read."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageDecodeError(f"empty upload: send a {ACCEPTED} image")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(f"unrecognised image format (first bytes {data[:8]!r}); accepted: {ACCEPTED}")
    return data, fmt


@contextlib.contextmanager
def _decoder_errors(fmt: str):
    """Whatever a decoder raises on bad bytes becomes ImageDecodeError ("corrupt or truncated")."""
    try:
        yield
    except (ImageDecodeError, MemoryError):
        raise
    except Exception as exc:  # decoders raise anything (OSError, SyntaxError, struct.error, zlib.error...)
        raise ImageDecodeError(f"corrupt or truncated {fmt} file ({exc}); accepted: {ACCEPTED}") from exc


def _read(
    data: bytes, *, max_pixels: int, min_side: int, window: dict | None, stored_values: bool = False
) -> _Raw:
    data, fmt = _sniffed(data)
    limits = {"max_pixels": max_pixels, "min_side": min_side}
    with _decoder_errors(fmt):
        if fmt == "DICOM":
            raw = _read_dicom(data, window=window, stored_values=stored_values, **limits)
        elif fmt == "TIFF":
            raw = _read_tiff(data, **limits)
        else:
            raw = _read_pillow(data, fmt, **limits)
    raw.pixels = _drop_alpha(raw.pixels, fmt)
    return raw


def _check_size(fmt: str, height: int, width: int, *, max_pixels: int, min_side: int) -> None:
    if height * width > max_pixels:
        raise ImageDecodeError(
            f"{fmt} image is {width}×{height} = {height * width / 1e6:.1f} megapixels, more than the "
            f"{max_pixels / 1e6:.0f} megapixel limit; downscale or crop it"
        )
    if min(height, width) < min_side:
        raise ImageDecodeError(
            f"{fmt} image is {width}×{height}: too small, each side needs at least {min_side} pixels"
        )


@contextlib.contextmanager
def _pillow_image(data: bytes, fmt: str, *, max_pixels: int, min_side: int):
    """The image Pillow opened (header read, nothing decoded yet), its size checked; inside, Pillow's bomb
    warnings are errors."""
    with warnings.catch_warnings():
        # Pillow's own bomb guard warns first, then errors at twice its limit: make both refusals.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=[fmt])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(f"{fmt} image refused as a decompression bomb ({exc})") from exc
        width, height = im.size  # header only; nothing decoded yet
        _check_size(fmt, height, width, max_pixels=max_pixels, min_side=min_side)
        yield im


def _read_pillow(data: bytes, fmt: str, *, max_pixels: int, min_side: int) -> _Raw:
    with _pillow_image(data, fmt, max_pixels=max_pixels, min_side=min_side) as im:
        pages = getattr(im, "n_frames", 1)
        im.seek(0)
        im.load()  # raises on truncated / corrupt data
    meta = {"mode": im.mode, "pages": pages}
    if "dpi" in im.info:
        meta["dpi"] = tuple(float(v) for v in im.info["dpi"])
    mode = im.mode
    unit_range = None
    if mode == "1":
        pixels = np.asarray(im, dtype=bool)
        meta["bits"] = 1
    elif mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
        pixels = np.asarray(im)
        meta["bits"] = 8
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        im = im.convert("RGB" if mode != "La" else "L")
        pixels = np.asarray(im)
        meta["bits"] = 8
    elif mode == "I" and fmt == "PNG":
        pixels = np.asarray(im)  # Pillow reads 16-bit grey PNG as 32-bit "I" in some versions
        unit_range = (0.0, 65535.0)
        meta["bits"] = 16
    else:
        pixels = np.asarray(im)
        meta["bits"] = pixels.dtype.itemsize * 8 if pixels.dtype != bool else 1
    meta["dtype"] = str(pixels.dtype)
    return _Raw(pixels=pixels, format=fmt, metadata=meta, unit_range=unit_range)


def _read_tiff(data: bytes, *, max_pixels: int, min_side: int) -> _Raw:
    """tifffile first (any depth, float, >8-bit colour); Pillow for compressions tifffile cannot decode
    without imagecodecs (LZW, PackBits, JPEG)."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = _tiff_first_page(tif, max_pixels=max_pixels, min_side=min_side)[0]
        axes = page.axes
        meta = {
            "pages": len(tif.pages),
            "bits": int(page.bitspersample),
            "photometric": page.photometric.name,
            "compression": page.compression.name,
        }
        try:
            pixels = page.asarray()
        except (KeyError, ValueError, NotImplementedError) as exc:
            if "imagecodecs" not in str(exc):
                raise
            logger.debug("tifffile cannot decode %s without imagecodecs; using Pillow", page.compression.name)
            raw = _read_pillow(data, "TIFF", max_pixels=max_pixels, min_side=min_side)
            raw.metadata.update(meta)
            return raw
        colormap = page.colormap
        photometric = page.photometric.name
    pixels = _to_yxs(pixels, axes)
    invert = False
    unit_range = None
    if photometric == "PALETTE" and colormap is not None:
        # TIFF colormaps are 16-bit; writers store v*256 or v*257 for 8-bit colours: keep the high byte.
        cmap = (colormap >> 8).astype(np.uint8) if colormap.max() > 255 else colormap.astype(np.uint8)
        pixels = np.moveaxis(cmap[:, pixels[:, :, 0].astype(np.intp)], 0, -1)
    elif photometric == "MINISWHITE":
        invert = True
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    meta["dtype"] = str(pixels.dtype)
    return _Raw(pixels=pixels, format="TIFF", metadata=meta, unit_range=unit_range, invert=invert)


def _tiff_first_page(tif, *, max_pixels: int, min_side: int):
    """(the first page, its height, its width), from the page's tags, once its size and the bytes it would
    take to decode are checked."""
    page = tif.pages.first
    shape = dict(zip(page.axes, page.shape, strict=True))
    height, width = shape.get("Y", 0), shape.get("X", 0)
    _check_size("TIFF", height, width, max_pixels=max_pixels, min_side=min_side)
    # The page's other axes (samples, depth) multiply what asarray() would allocate: bound it too.
    page_bytes = int(np.prod(page.shape, dtype=np.float64)) * (page.dtype.itemsize if page.dtype else 1)
    if page_bytes > max_pixels * MAX_BYTES_PER_PIXEL:
        raise ImageDecodeError(
            f"TIFF page of shape {page.shape} would take {page_bytes} bytes, more than "
            f"{MAX_BYTES_PER_PIXEL} bytes per pixel of the {max_pixels / 1e6:.0f} megapixel limit"
        )
    return page, height, width


def _to_yxs(pixels: np.ndarray, axes: str) -> np.ndarray:
    """Reorder one TIFF page to Y, X, S (samples), dropping any other singleton axes."""
    keep = [a for a in "YXS" if a in axes]
    extra = [i for i, a in enumerate(axes) if a not in keep]
    if any(pixels.shape[i] != 1 for i in extra):
        raise ImageDecodeError(f"TIFF page with axes {axes!r} and shape {pixels.shape} is not a 2-D image")
    pixels = pixels.reshape([pixels.shape[i] for i, a in enumerate(axes) if a in keep])
    ordered = [a for a in axes if a in keep]
    pixels = np.transpose(pixels, [ordered.index(a) for a in keep])
    return pixels if "S" in keep else pixels[:, :, None]


def _read_dicom(
    data: bytes, *, window: dict | None, stored_values: bool, max_pixels: int, min_side: int
) -> _Raw:
    from pydicom.pixels import apply_modality_lut

    ds = _dicom_dataset(data, header_only=False, max_pixels=max_pixels, min_side=min_side)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        # Only the first frame is decoded: a file claiming thousands of frames costs one frame's memory.
        ds.pixel_array_options(index=0)
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(transfer_syntax, "name", str(transfer_syntax))
        raise ImageDecodeError(
            f"DICOM transfer syntax {name!r} cannot be decoded here ({exc}); send an uncompressed DICOM "
            f"or a PNG/TIFF export"
        ) from exc
    meta = {
        "frames": frames,
        "bits": int(ds.get("BitsStored", ds.get("BitsAllocated", 0)) or 0),
        "photometric": photometric,
        "modality": str(ds.get("Modality", "")),
        "dtype": str(pixels.dtype),
        "rescale_type": str(ds.get("RescaleType", "")),
        "orientation": patient_directions(ds.get("ImageOrientationPatient")),
    }
    spacing_mm = _dicom_spacing(ds)
    if photometric.startswith("MONOCHROME") and not stored_values:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        lo_hi = _dicom_window(window, ds)
        if lo_hi is not None:
            meta["window"] = {"center": (lo_hi[0] + lo_hi[1]) / 2, "width": lo_hi[1] - lo_hi[0]}
        return _Raw(
            pixels=values,
            format="DICOM",
            metadata=meta,
            spacing_mm=spacing_mm,
            unit_range=lo_hi,
            invert=photometric == "MONOCHROME1",
        )
    # colour (RGB / YBR converted to RGB by pydicom): no intensity window applies. Masks: stored values.
    bits = int(ds.get("BitsStored", 8) or 8)
    return _Raw(
        pixels=pixels, format="DICOM", metadata=meta, spacing_mm=spacing_mm, unit_range=(0.0, 2**bits - 1)
    )


def _dicom_dataset(data: bytes, *, header_only: bool, max_pixels: int, min_side: int):
    """The parsed DICOM, once it is known to hold pixel data within the limits, of 1 or 3 samples a pixel.
    header_only: values over 1 KB (the pixel data) are left unread."""
    import pydicom

    check_deflated_dicom(data, max_bytes=max_pixels * MAX_BYTES_PER_PIXEL + DICOM_HEADER_ALLOWANCE)
    ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024 if header_only else None)
    if "PixelData" not in ds:
        raise ImageDecodeError("DICOM file has no pixel data (is it a report or a structured document?)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size("DICOM", rows, cols, max_pixels=max_pixels, min_side=min_side)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples not in (1, 3):
        raise ImageDecodeError(f"DICOM image has {samples} samples per pixel; accepted: 1 (grey) or 3 (RGB)")
    return ds


def _dicom_spacing(ds) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm, when the file carries one."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None


def check_deflated_dicom(data: bytes, *, max_bytes: int) -> None:
    """A deflated DICOM (PS3.5 A.5) is inflated whole by pydicom before any header is read: refuse one
    that would expand beyond `max_bytes` (a deflate bomb), measuring without keeping the output."""
    group_length = data[132:144]
    if group_length[:4] != b"\x02\x00\x00\x00" or group_length[4:6] != b"UL":
        if _DEFLATED_UID in data[132:4096]:
            raise ImageDecodeError("deflated DICOM without a file meta group length; send it uncompressed")
        return
    meta_end = 144 + struct.unpack("<I", group_length[8:12])[0]
    if _DEFLATED_UID not in data[132:meta_end]:
        return
    inflater, size, rest = zlib.decompressobj(-zlib.MAX_WBITS), 0, data[meta_end:]
    while rest and not inflater.eof:
        size += len(inflater.decompress(rest, 1024 * 1024))
        rest = inflater.unconsumed_tail
        if size > max_bytes:
            raise ImageDecodeError(
                f"deflated DICOM expands to more than {max_bytes} bytes (a decompression bomb?); send one "
                "image, uncompressed"
            )


def _dicom_window(window: dict | None, ds) -> tuple[float, float] | None:
    """(low, high) of the window to apply: the organ's, else the file's first, else None (min-max)."""
    if window:
        return window_bounds(window)
    center_raw, width_raw = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center_raw is None or width_raw is None:
        return None
    return window_bounds({"center": _first_value(center_raw), "width": _first_value(width_raw)})


def _first_value(value) -> float:
    """DICOM multi-valued attributes (several windows) → the first value."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


# --- scaling ----------------------------------------------------------------------------------


def _drop_alpha(pixels: np.ndarray, fmt: str) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2]
    if channels == 1:
        return pixels[:, :, 0]
    if channels == 2:  # grey + alpha
        return pixels[:, :, 0]
    if channels in (3, 4):  # RGB, RGBA
        return pixels[:, :, :3]
    raise ImageDecodeError(f"{fmt} image has {channels} channels; accepted: grey, grey+alpha, RGB or RGBA")


def window_bounds(window: dict) -> tuple[float, float]:
    """An intensity window {center, width} (in the modality's units, e.g. Hounsfield) as (low, high)."""
    center, width = float(window["center"]), float(window["width"])
    if not width > 0:
        raise ImageDecodeError(f"intensity window width must be positive, got {width}")
    return center - width / 2, center + width / 2


def scale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Real values → float32 in [0, 1]: (v − lo) / (hi − lo), clipped; non-finite values count as `lo`;
    all zeros when hi ≤ lo. The one scaling of the platform: a DICOM's intensity window, a volume chunk's
    (services.handler_base), and the min-max of float and signed images all go through it."""
    values = np.asarray(values)
    out = values.astype(np.float32)  # a fresh buffer, scaled in place below
    if values.dtype.kind == "f" and not np.isfinite(out).all():
        out = np.where(np.isfinite(out), out, np.float32(lo))
    if hi > lo:  # in place: one 512×512×3 float buffer instead of three (each a fresh, page-faulted one)
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
    else:
        out = np.zeros_like(out)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def apply_window(values: np.ndarray, window: dict) -> np.ndarray:
    """Values in the modality's units (e.g. Hounsfield) through the intensity window {center, width}
    → float32 in [0, 1]: what decode_image does to a DICOM's pixels."""
    return scale_to_unit(values, *window_bounds(window))


def _to_unit(raw: _Raw) -> np.ndarray:
    pixels = raw.pixels
    if pixels.dtype == np.bool_:
        out = pixels.astype(np.float32)
    else:
        if raw.unit_range is not None:
            lo, hi = raw.unit_range
        elif pixels.dtype.kind == "u" and pixels.dtype.itemsize <= 2:
            lo, hi = 0.0, float(np.iinfo(pixels.dtype).max)
        else:
            lo, hi = _value_range(pixels)
        out = scale_to_unit(pixels, lo, hi)
    if raw.invert:
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _value_range(pixels: np.ndarray) -> tuple[float, float]:
    """Float / signed / 32-bit data: identity if already in [0, 1], else the image's own min-max."""
    finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels
    if finite.size == 0:
        raise ImageDecodeError("image has no finite pixel values")
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    return lo, hi


def _channels(array: np.ndarray) -> int:
    return 1 if array.ndim == 2 else int(array.shape[2])
