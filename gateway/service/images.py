"""The gateway's use of `services.imaging` (the platform's one decoder), with decode failures turned
into InvalidInput so every edge answers 4xx with the decoder's own explanation. Uploads are checked from
their header only; the organ server decodes them."""

from __future__ import annotations

import numpy as np

from common.errors import InvalidInput
from services import imaging


def inspect(data: bytes, filename: str, *, max_pixels: int) -> tuple[int, int, tuple[float, float] | None]:
    """(height, width, pixel spacing in mm or None) of an upload, from its header: what the header shows to
    be unusable (not an image we read, a decompression bomb, over `max_pixels`, too small) is refused here,
    before it costs an inference slot. The pixels are decoded once, by the organ server, which refuses a
    corrupt or truncated file (see `refused_by_organ`)."""
    try:
        info = imaging.read_header(data, max_pixels=max_pixels)
    except imaging.ImageDecodeError as exc:
        raise InvalidInput(f"{filename}: {exc}", code="invalid_image", params={"name": filename}) from None
    return info.height, info.width, info.spacing_mm


def preview_png(data: bytes, filename: str, *, max_pixels: int, window: dict | None = None) -> bytes:
    """The upload as the organ's model sees it, as an 8-bit PNG a browser shows: decoded by the platform's
    one decoder and, for DICOM, windowed with the organ's intensity window (browsers show neither DICOM nor
    16-bit TIFF)."""
    try:
        decoded = imaging.decode_image(data, window=window, max_pixels=max_pixels)
    except imaging.ImageDecodeError as exc:
        raise InvalidInput(f"{filename}: {exc}", code="invalid_image", params={"name": filename}) from None
    return imaging.encode_png(np.rint(decoded.array * 255.0).astype(np.uint8))


def refused_by_organ(exc: InvalidInput, filename: str) -> InvalidInput:
    """The organ server's 400 for an upload (it could not decode the pixels): the caller's bad file, named
    like the header check names it."""
    return InvalidInput(f"{filename}: {exc.message}", code="invalid_image", params={"name": filename})


def decode_label(data: bytes, filename: str, *, max_pixels: int) -> np.ndarray:
    """A label mask as bool H×W (any non-zero value is foreground)."""
    try:
        return imaging.decode_mask(data, max_pixels=max_pixels)
    except imaging.ImageDecodeError as exc:
        raise InvalidInput(f"{filename}: {exc}", code="invalid_image", params={"name": filename}) from None


def decode_probability(png: bytes) -> np.ndarray:
    """The organ server's 8-bit grey probability PNG → uint8 H×W (raises ValueError if it is not one)."""
    decoded = imaging.decode_grey8(png)
    if decoded is not None:  # what every organ server sends: the bytes are the answer, no rescaling
        return decoded
    decoded = imaging.decode_image(png, min_side=1)
    if decoded.array.ndim != 2:
        raise ValueError(f"probability map has shape {decoded.array.shape}, expected a grey image")
    return np.rint(decoded.array * 255.0).astype(np.uint8)
