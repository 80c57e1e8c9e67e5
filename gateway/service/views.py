"""The image of a 2-D segmentation as the viewer shows it, kept with the segmentation so that a result opened
again from the history shows its anatomy under the masks (the upload itself is not kept).

One object per segmentation, `view.zip` (beside masks.zip, in the results bucket), holding:

* `image.png`: the upload as the organ's model saw it: 8-bit grey or RGB, a DICOM windowed with the
  organ's intensity window (what a browser can show; DICOM and 16-bit TIFF it cannot);
* `values.npy`, grey DICOM only: the pixels in the modality's units (Hounsfield for CT), int16 where they
  are whole numbers, so the viewer can window/level them itself (presets, drag) without a request per step;
* `view.json`: what the viewer needs to say about them: the window `image.png` was drawn with, the values'
  unit, MONOCHROME1 inversion, the patient directions of the image's right and bottom edges.

No DICOM header is kept: only pixels, the pixel spacing the row already records and the directions.
"""

from __future__ import annotations

import io
import json
import zipfile

from common.errors import NotFound
from gateway.service import images
from services import imaging

VIEW_OBJECT = "view.zip"
IMAGE_MEMBER = "image.png"
VALUES_MEMBER = "values.npy"
META_MEMBER = "view.json"


def make_view(data: bytes, *, max_pixels: int, window: dict | None) -> bytes:
    """The view object of an upload the data plane has already accepted (it decodes)."""
    values = imaging.decode_values(data, max_pixels=max_pixels)
    meta: dict = {}
    members = {IMAGE_MEMBER: images.preview_png(data, "upload", max_pixels=max_pixels, window=window)}
    if values is not None:
        members[VALUES_MEMBER] = imaging.encode_npy(values.values)
        shown = window or values.file_window
        if shown is None:  # min-max, as decode_image scales a DICOM without any window
            lo, hi = float(values.values.min()), float(values.values.max())
            shown = {"center": (lo + hi) / 2, "width": max(hi - lo, 1.0)}
        meta.update(
            unit=values.unit,
            window={"center": float(shown["center"]), "width": float(shown["width"])},
            invert=values.invert,
            orientation=list(values.orientation) if values.orientation else None,
        )
    members[META_MEMBER] = json.dumps(meta).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, blob in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            # PNG is compressed already; Hounsfield values deflate to about half
            info.compress_type = zipfile.ZIP_DEFLATED if name == VALUES_MEMBER else zipfile.ZIP_STORED
            archive.writestr(info, blob, compresslevel=1)
    return buf.getvalue()


def read_view(blob: bytes, member: str) -> tuple[bytes, dict]:
    """(the member's bytes, view.json) of a stored view; NotFound `no_values` when it has no such member
    (only a grey DICOM has values)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        meta = json.loads(archive.read(META_MEMBER))
        if member not in archive.namelist():
            raise NotFound(
                "this segmentation's image has no modality values to window: only a grey DICOM (CT, MR) has "
                "them; its image.png is all there is",
                code="no_values",
            )
        return archive.read(member), meta


def headers(meta: dict) -> dict[str, str]:
    """view.json as the response headers of image.png and values.npy (the viewer reads them)."""
    out = {}
    if "unit" in meta:
        out["X-MedSeg-Values"] = meta["unit"] or "value"  # values.npy exists
        window = meta["window"]
        out["X-MedSeg-Window"] = f"{window['center']:g} {window['width']:g}"
        out["X-MedSeg-Invert"] = "1" if meta.get("invert") else "0"
    if meta.get("orientation"):
        out["X-MedSeg-Orientation"] = " ".join(meta["orientation"])
    return out
