"""Test studies from the real hippocampus MRI volumes (../shared/data/hippocampus3d, Medical Segmentation
Decathlon Task 04: 1 mm isotropic crops around one hippocampus, labels 1 = anterior, 2 = posterior), read
from there and never copied in; resampled copies and DICOM MR series are made here, in memory."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from functools import lru_cache

import nibabel as nib
import numpy as np
from pydicom.uid import MRImageStorage

from tests import studydata
from tests.data import SHARED_DATA

HIPPO = SHARED_DATA / "hippocampus3d"
CASE = "hippocampus_003"  # 34×52×35 voxels, both labels


@lru_cache(maxsize=8)
def case(name: str = CASE) -> tuple[nib.Nifti1Image, np.ndarray]:
    """(the image as stored, its labels as uint8 on the same grid)."""
    image = nib.load(HIPPO / "images" / f"{name}.nii.gz")
    labels = np.asarray(nib.load(HIPPO / "labels" / f"{name}.nii.gz").dataobj).astype(np.uint8)
    return image, labels


def nifti_bytes(name: str = CASE) -> bytes:
    """The study's file exactly as the data set has it."""
    return (HIPPO / "images" / f"{name}.nii.gz").read_bytes()


def resampled(name: str = CASE, mm: float = 0.8) -> tuple[bytes, np.ndarray]:
    """The volume resampled to `mm` isotropic over the same extent (trilinear; its labels nearest), as a
    .nii.gz with the matching affine, and those labels: a scanner's other voxel size."""
    from services.volumes import resample_zyx, resampled_shape

    image, labels = case(name)
    data = np.asarray(image.dataobj, dtype=np.float32)
    shape = resampled_shape(data.shape, image.header.get_zooms()[:3], (mm, mm, mm))
    affine = image.affine.copy()
    affine[:3, :3] = affine[:3, :3] * mm  # (the source is 1 mm, axis-aligned)
    # the first voxel's centre moves with the grid: voxel edges stay where they were
    affine[:3, 3] = image.affine[:3, 3] + (mm - 1.0) / 2.0 * np.sign(np.diag(image.affine)[:3])
    out = nib.Nifti1Image(resample_zyx(data, shape, order=1), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return gzip.compress(out.to_bytes()), resample_zyx(labels, shape, order=0)


def mr_series(name: str = CASE, *, reverse: bool = False) -> list[tuple[str, bytes]]:
    """The volume as the files of one DICOM MR series (MR Image Storage, int16, axial, 1 mm) on the base
    grid of tests/studydata.py: its labels are `case(name)[1]` on that grid, as a DICOM→NIfTI converter
    writes it."""
    image, _ = case(name)
    values = np.rint(np.asarray(image.dataobj)).astype(np.int16)
    return mr_series_of(values, name=f"hippocampus-{name}", patient_id="HIPPO-0003", reverse=reverse)


def mr_series_of(
    values: np.ndarray, *, name: str, patient_id: str, reverse: bool = False
) -> list[tuple[str, bytes]]:
    """`values` (i, j, k) int16 as the files of one DICOM MR series (MR Image Storage, axial, 1 mm, no CT
    rescale or window) on the base grid of tests/studydata.py; `name` seeds the UIDs."""
    datasets = studydata.ct_datasets(
        values,
        name=name,
        pixel_mm=1.0,
        slice_mm=1.0,
        patient_id=patient_id,
        series_description="T1 MR (test series from hippocampus3d)",
        intercept=0.0,
    )
    for ds in datasets:
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
            if keyword in ds:
                delattr(ds, keyword)
    return studydata.series_files(datasets, reverse=reverse)


def dice(pred: np.ndarray, label: np.ndarray, value: int) -> float:
    a, b = pred == value, label == value
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def mean_dice(pred: np.ndarray, label: np.ndarray, values: Sequence[int] = (1, 2)) -> float:
    return float(np.mean([dice(pred, label, v) for v in values]))


# --- synthetic labelled volumes for the fake organ server ---------------------------------------------------
SYNTHETIC_SHAPE = (20, 24, 16)  # (i, j, k) at 1 mm: within the hippocampus network's 48×64×48


def synthetic_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) (i, j, k) on a 1 mm grid, made for tests/gateway/fakes.FakeVolumeClient, which labels a
    voxel of value 100·i + c as label i with P = (c + 50) / 100: the anterior block is found (part of it only
    at 0.2), the posterior one too plus a rim it wrongly adds below 0.5 — or, for an odd `seed`, mistaken for
    anterior (no posterior predicted: its HD95 unknown). Slices along k hold different amounts of label."""
    image = np.full(SYNTHETIC_SHAPE, 10, np.int16)
    labels = np.zeros(SYNTHETIC_SHAPE, np.uint8)
    shift = seed % 3
    anterior = (slice(3 + shift, 9 + shift), slice(6, 14), slice(4, 12))
    posterior = (slice(10 + shift, 15 + shift), slice(5, 15), slice(6, 10))
    labels[anterior], labels[posterior] = 1, 2
    image[anterior] = 130  # anterior, P 0.8
    image[anterior[0], 6:8, anterior[2]] = 70  # anterior at P 0.2: found at 0.2 only
    image[posterior] = 140 if seed % 2 else 230  # anterior at P 0.9 (wrong), or posterior at P 0.8
    image[15 + shift : 17 + shift, 5:15, 6:10] = 190  # posterior at P 0.4, outside the label
    return image, labels


def synthetic_nifti(array: np.ndarray) -> bytes:
    """`array` as a .nii.gz on the 1 mm grid of synthetic_case."""
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), mtime=0)


def synthetic_files(*names: str) -> list[tuple[str, tuple[str, bytes]]]:
    """Multipart files ("images" / "labels", (file name, .nii.gz)) of synthetic cases named `names` (each its
    own seed, by position)."""
    files = []
    for seed, name in enumerate(names):
        image, labels = synthetic_case(seed)
        files.append(("images", (f"{name}.nii.gz", synthetic_nifti(image))))
        files.append(("labels", (f"{name}.nii.gz", synthetic_nifti(labels))))
    return files
