"""DICOM files the tests build: one CT slice from its stored values, as a scanner writes it."""

from __future__ import annotations

import io

import numpy as np


def ct_slice(
    stored: np.ndarray, *, intercept: float = -1024, spacing_mm: tuple[float, float] = (0.7, 0.7)
) -> bytes:
    """A CT image (explicit VR little endian, signed 16-bit) holding `stored`; Hounsfield units are
    stored × 1 + `intercept`."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    height, width = stored.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = height, width, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept, ds.PixelSpacing = 1, intercept, list(spacing_mm)
    ds.PixelData = stored.astype(np.int16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
