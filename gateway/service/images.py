"""The gateway's use of `services.imaging` (the platform's one decoder), with decode failures turned
into InvalidInput so every edge answers 4xx with the decoder's own explanation."""

from __future__ import annotations

import numpy as np

from common.errors import InvalidInput
from services import imaging


def inspect(
    data: bytes, filename: str, *, max_pixels: int, window: dict | None = None
) -> tuple[int, int, tuple[float, float] | None]:
    """(height, width, pixel spacing in mm or None) of an upload, after decoding it completely: a file
    the organ server could not decode is refused here, before it costs an inference slot."""
    try:
        info = imaging.inspect_image(data, window=window, max_pixels=max_pixels)
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


def encode_mask(mask: np.ndarray) -> bytes:
    """Bool H×W → 0/255 grey PNG."""
    return imaging.encode_png(mask)
