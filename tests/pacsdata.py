"""Series for the PACS tests: CT instances written with pydicom, as a scanner would send them to a PACS (small
and random: for the plumbing; tests/studydata.py has the liver series the model segments)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_series(
    count: int,
    size: int = 64,
    *,
    patient_id: str = "P-PACS-1",
    patient_name: str = "Doe^Jane",
    study_uid: str | None = None,
    study_date: str = "20240115",
    modality: str = "CT",
    seed: int = 0,
) -> list[FileDataset]:
    """`count` axial CT slices of one series (int16 HU, 0.8 mm pixels, 2.5 mm apart), random pixels."""
    rng = np.random.default_rng(seed)
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    frame_of_reference = generate_uid()
    out = []
    for k in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", ""
        ds.StudyID, ds.StudyTime, ds.Manufacturer = "1", "101500", "test"
        ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = study_date, modality, 2, k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
        out.append(ds)
    return out


def stored_study(pacs, **kwargs) -> list[FileDataset]:
    """A CT series (`ct_series` keywords) stored in `pacs` (a common.pacs.Pacs) by STOW-RS."""
    series = ct_series(kwargs.pop("count", 3), **kwargs)
    pacs.store(series, series[0].StudyInstanceUID)
    return series
