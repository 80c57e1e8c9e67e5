"""Test studies built from the real liver training slices (read from ../shared/data, never copied in).

The liver PNGs are 8-bit renderings of window C60/W400 with the patient's BACK at the top and the liver on
the image's left. A scanner writes the FRONT at the top, so every builder here flips the rows and maps grey
to HU as ``HU = v * 400/255 - 140``: that is the scanner's convention, and reading a study back must undo it.

Geometry of every study (the "base" grid, as a standard DICOM→NIfTI converter writes a series):
- axial slices, ImageOrientationPatient = [1, 0, 0, 0, 1, 0] (rows run to the patient's left, columns to
  the back), so column 0 is the patient's right and row 0 the front;
- training slice ``first + k`` lies at z = Z0 + k * slice_mm (slices ordered inferior → superior);
- NIfTI voxel order (i, j, k) = (column, row, slice) and affine = the LPS → RAS flip of the DICOM geometry,
  origin at the first slice's ImagePositionPatient: nibabel axis codes ('L', 'P', 'S') (i runs to the
  patient's left, j to the back, k up).

``layout`` (NIfTI builders, labels) stores the same anatomy with axes flipped and/or permuted: a nibabel
orientation array ``[[axis, ±1], …]`` as in ``nibabel.orientations.apply_orientation`` applied to the base
grid, the affine updated so every voxel keeps its place in the patient (``LAYOUTS`` names a few).

Slices 0–161 of liver/train are one patient; a run must stay inside one patient's slices.
"""

from __future__ import annotations

import datetime
import gzip
import io
import zipfile
from collections.abc import Sequence
from functools import lru_cache

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.data import LIVER_TRAIN

PIXEL_MM = 0.75
SLICE_MM = 2.5
Z0_MM = -120.0
PATIENT_ID = "LIVER-0001"
STUDY_DATE = datetime.date(2024, 3, 1)
CT_INTERCEPT = -1024.0  # stored = round(HU) + 1024, as CT scanners write it
FIRST_PATIENT_SLICES = range(0, 162)

# Orientation arrays for apply_orientation on the base (i, j, k) grid: row n = (where base axis n goes, ±1).
LAYOUTS: dict[str, tuple[tuple[int, int], ...]] = {
    "base": ((0, 1), (1, 1), (2, 1)),  # LPS
    "flip_i": ((0, -1), (1, 1), (2, 1)),  # RPS
    "flip_jk": ((0, 1), (1, -1), (2, -1)),  # LAI
    "las": ((0, 1), (1, -1), (2, 1)),  # LAS: the storage dcm2niix and many research pipelines write
    "ras": ((0, -1), (1, -1), (2, 1)),  # RAS: nibabel's closest canonical
    "permuted": ((2, 1), (0, 1), (1, 1)),  # base i -> axis 2, j -> axis 0, k -> axis 1: PSL
    "permuted_flipped": ((1, -1), (2, 1), (0, -1)),  # IRP
}


def hu_from_grey(grey: np.ndarray) -> np.ndarray:
    """The scanner HU a liver PNG grey value stands for (window C60/W400 rendered to 0..255)."""
    return grey.astype(np.float32) * (400.0 / 255.0) - 140.0


def grey_from_hu(hu: np.ndarray) -> np.ndarray:
    """Inverse of ``hu_from_grey``, clipped to 0..255 (float: round it to compare with a PNG)."""
    return np.clip((np.asarray(hu, dtype=np.float32) + 140.0) * (255.0 / 400.0), 0.0, 255.0)


@lru_cache(maxsize=512)
def _png(index: int, mask: bool) -> np.ndarray:
    path = LIVER_TRAIN / (f"{index:03d}_mask.png" if mask else f"{index:03d}.png")
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def training_slices(first: int = 20, count: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(grey, mask) stacks of the training PNGs as they are, (count, 512, 512) uint8 each; mask in {0, 1}.

    This is the convention the liver network was trained on (back at the top, liver on the left)."""
    _check_run(first, count)
    grey = np.stack([_png(first + n, False) for n in range(count)])
    mask = np.stack([_png(first + n, True) for n in range(count)]) > 127
    return grey, mask.astype(np.uint8)


def liver_volume(first: int = 20, count: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32, labels uint8) on the base grid (i, j, k) = (column, row, slice), scanner convention."""
    grey, mask = training_slices(first, count)
    # (slice, row, column) with the front at the top -> (column, row, slice)
    hu = hu_from_grey(grey[:, ::-1, :]).transpose(2, 1, 0)
    labels = mask[:, ::-1, :].transpose(2, 1, 0)
    return np.ascontiguousarray(hu), np.ascontiguousarray(labels)


def base_affine(
    shape_ijk: Sequence[int], *, pixel_mm: float = PIXEL_MM, slice_mm: float = SLICE_MM
) -> np.ndarray:
    """RAS+ affine of the base grid: LPS→RAS flip of the series geometry, origin the first slice's IPP."""
    return _lps_to_ras() @ _lps_affine(shape_ijk, pixel_mm=pixel_mm, slice_mm=slice_mm)


def image_position(
    k: int, shape_ijk: Sequence[int], *, pixel_mm: float = PIXEL_MM, slice_mm: float = SLICE_MM
):
    """ImagePositionPatient (LPS, mm) of slice k of the base grid."""
    return [float(v) for v in _lps_affine(shape_ijk, pixel_mm=pixel_mm, slice_mm=slice_mm) @ (0, 0, k, 1)][:3]


def liver_labels(first: int = 20, count: int = 24, *, layout: str | Sequence = "base") -> np.ndarray:
    """The expected label volume (uint8, 1 = liver) in the voxel order of ``liver_nifti(..., layout=layout)``
    (``layout="base"``: the order of ``liver_dicom_series`` read as a standard converter would)."""
    _, labels = liver_volume(first, count)
    return np.ascontiguousarray(apply_orientation(labels, _layout(layout)))


def liver_dicom_labels(first: int = 20, count: int = 24, *, layout: str | Sequence = "base") -> np.ndarray:
    """The expected labels on the grid a standard converter reads from ``liver_dicom_series(layout=...)``:
    k sorted along the slice normal, so reversed from the layout's when its axes are left-handed."""
    labels = liver_labels(first, count, layout=layout)
    _, affine = _on_layout(labels, layout, PIXEL_MM, SLICE_MM)
    return np.ascontiguousarray(labels[:, :, ::-1]) if np.linalg.det(affine[:3, :3]) < 0 else labels


def liver_nifti_image(
    first: int = 20,
    count: int = 24,
    *,
    layout: str | Sequence = "base",
    dtype: str = "int16",
    labels: bool = False,
    pixel_mm: float = PIXEL_MM,
    slice_mm: float = SLICE_MM,
    in_plane_step: int = 1,
) -> nib.Nifti1Image:
    """The liver volume (or its labels) as a nibabel image; qform and sform codes 1 (scanner).
    ``in_plane_step`` s keeps every s-th column and row, voxels s times as wide: the same anatomy on a
    smaller grid, for tests of pages and plumbing (a headless browser's software WebGL redraws a 256² volume
    several times faster than a 512² one)."""
    hu, label_volume = liver_volume(first, count)
    data = (label_volume if labels else _cast(hu, dtype))[::in_plane_step, ::in_plane_step]
    return nifti_image(data, layout=layout, pixel_mm=pixel_mm * in_plane_step, slice_mm=slice_mm)


def nifti_image(
    data_ijk: np.ndarray,
    *,
    layout: str | Sequence = "base",
    pixel_mm: float = PIXEL_MM,
    slice_mm: float = SLICE_MM,
) -> nib.Nifti1Image:
    """Any volume on the base grid (i, j, k) = (column, row, slice) as a nibabel image stored in
    ``layout``'s order, as the liver builders write theirs; qform and sform codes 1 (scanner)."""
    data, affine = _on_layout(np.asarray(data_ijk), layout, pixel_mm, slice_mm)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def liver_nifti(first: int = 20, count: int = 24, *, gz: bool = True, **kwargs) -> bytes:
    """``liver_nifti_image(...)`` as the bytes of a .nii.gz (``gz=False``: .nii); keywords as there."""
    raw = liver_nifti_image(first, count, **kwargs).to_bytes()
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def liver_dicom_datasets(
    first: int = 20, count: int = 24, *, in_plane_step: int = 1, **kwargs
) -> list[Dataset]:
    """The liver volume as CT Image Storage datasets, one per slice in k order (uncompressed, int16).
    ``in_plane_step`` as for ``liver_nifti_image``; other keywords as ``ct_datasets``; UIDs are deterministic
    for the same arguments."""
    hu, _ = liver_volume(first, count)
    if in_plane_step != 1:
        hu = hu[::in_plane_step, ::in_plane_step]
        kwargs["pixel_mm"] = kwargs.get("pixel_mm", PIXEL_MM) * in_plane_step
    return ct_datasets(hu, name=f"liver-{first}-{count}", **kwargs)


def ct_datasets(
    hu_ijk: np.ndarray,
    *,
    name: str,
    layout: str | Sequence = "base",
    pixel_mm: float = PIXEL_MM,
    slice_mm: float = SLICE_MM,
    patient_id: str | None = PATIENT_ID,
    study_date: datetime.date | None = STUDY_DATE,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 2,
    series_description: str = "Liver CT axial (test series from liver/train)",
    slope: float = 1.0,
    intercept: float = CT_INTERCEPT,
) -> list[Dataset]:
    """A HU volume on the base grid as CT Image Storage datasets, one per slice in k order (uncompressed,
    int16); ``name`` seeds the UIDs (deterministic for the same arguments).

    ``layout`` as for NIfTI: the series' columns, rows and slices are the layout's i, j and k (e.g.
    "flip_jk": back at the top and slices running down; a permuted layout: a sagittal or coronal series).
    A reader sorting slices along the normal (row × column cosines) gets ``liver_dicom_labels(layout)``'s
    grid: the layout's, with k reversed when the layout is left-handed ("flip_i", "las"). Stored values are
    ``round((HU - intercept) / slope)``."""
    stored, affine = _on_layout(
        np.rint((np.asarray(hu_ijk) - intercept) / slope).astype(np.int16), layout, pixel_mm, slice_mm
    )
    lps = _lps_to_ras() @ affine  # the flip is its own inverse
    column_mm, row_mm, step_mm = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    plane = {
        "ImageOrientationPatient": [float(v) for v in (*lps[:3, 0] / column_mm, *lps[:3, 1] / row_mm)],
        "PixelSpacing": [float(row_mm), float(column_mm)],
        "SliceThickness": float(step_mm),
    }
    seed = f"medseg-tests-{name}-{pixel_mm}-{slice_mm}-{np.asarray(_layout(layout)).tolist()}"
    study_uid = study_uid or generate_uid(entropy_srcs=[seed, "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[seed, "series", str(series_number)])
    frame_uid = generate_uid(entropy_srcs=[seed, "frame"])
    datasets = []
    for k in range(stored.shape[2]):
        ds = _ct_slice(stored[:, :, k].T, plane)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=[seed, series_uid, "instance", str(k)]
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.SeriesDescription = series_description
        ds.ImagePositionPatient = [float(v) for v in (lps @ (0, 0, k, 1))[:3]]
        ds.SliceLocation = float(
            np.dot(ds.ImagePositionPatient, np.cross(*np.reshape(plane["ImageOrientationPatient"], (2, 3))))
        )
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if patient_id is not None:
            ds.PatientID = patient_id
        if study_date is not None:
            ds.StudyDate = study_date.strftime("%Y%m%d")
        datasets.append(ds)
    return datasets


def liver_dicom_series(
    first: int = 20,
    count: int = 24,
    *,
    reverse: bool = False,
    transfer_syntax: str | None = None,
    **kwargs,
) -> list[tuple[str, bytes]]:
    """The liver volume as the files of one CT series: [(file name, bytes)], in z order (``reverse``: the
    files listed from the top slice down). ``transfer_syntax``: a UID pydicom can encode (RLE Lossless
    always; JPEG-LS / JPEG 2000 with their encoder plugins). Keywords as ``ct_datasets``."""
    return series_files(
        liver_dicom_datasets(first, count, **kwargs), reverse=reverse, transfer_syntax=transfer_syntax
    )


def series_files(
    datasets: Sequence[Dataset], *, reverse: bool = False, transfer_syntax: str | None = None
) -> list[tuple[str, bytes]]:
    """Datasets as the files of a series, [(IM0001.dcm, bytes), …] (``reverse``: listed last first)."""
    files = [(f"IM{n + 1:04d}.dcm", dicom_file_bytes(ds, transfer_syntax)) for n, ds in enumerate(datasets)]
    return files[::-1] if reverse else files


def ct_slice_bytes(hu: np.ndarray, *, pixel_mm: float = PIXEL_MM) -> bytes:
    """One axial CT slice (Hounsfield units, rows × columns, the front at the top) as the bytes of a DICOM
    file, the base grid's orientation ([1, 0, 0, 0, 1, 0]: columns run to the patient's left, rows to the
    back) and the scanner's intercept."""
    plane = {
        "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "PixelSpacing": [pixel_mm, pixel_mm],
        "ImagePositionPatient": [0.0, 0.0, Z0_MM],
    }
    ds = _ct_slice(np.rint(np.asarray(hu) - CT_INTERCEPT).astype(np.int16), plane)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, CT_INTERCEPT
    return dicom_file_bytes(ds)


def dicom_file_bytes(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """A dataset as the bytes of a DICOM Part 10 file, compressed with ``transfer_syntax`` if given."""
    if transfer_syntax is not None and transfer_syntax != ds.file_meta.TransferSyntaxUID:
        ds = copy_dataset(ds)
        ds.compress(transfer_syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def zipped(files: Sequence[tuple[str, bytes]], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Files as one .zip (the way a user uploads a series folder)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression, compresslevel=1) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buf.getvalue()


# --- internals ------------------------------------------------------------------------------------------


def _check_run(first: int, count: int) -> None:
    if count < 1 or first < 0:
        raise ValueError(f"a run needs first >= 0 and count >= 1, got first={first} count={count}")
    last = first + count - 1
    if first in FIRST_PATIENT_SLICES and last not in FIRST_PATIENT_SLICES:
        raise ValueError(f"slices {first}..{last} cross from the first patient (0..161) into the next")


def _layout(layout: str | Sequence) -> np.ndarray:
    """An orientation array for apply_orientation: row n says where base axis n goes and its direction.

    nibabel's convention: ``ornt[n] = (new_axis, flip)`` for base axis n. LAYOUTS are written that way."""
    if isinstance(layout, str):
        try:
            layout = LAYOUTS[layout]
        except KeyError:
            raise KeyError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)}") from None
    ornt = np.asarray(layout, dtype=float)
    if ornt.shape != (3, 2) or sorted(ornt[:, 0]) != [0, 1, 2] or not set(ornt[:, 1]) <= {-1, 1}:
        raise ValueError(f"a layout is three (axis, ±1) rows over axes 0, 1, 2; got {layout!r}")
    return ornt


def _on_layout(data: np.ndarray, layout, pixel_mm: float, slice_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Base-grid voxels stored in ``layout``'s order, with the affine that keeps each in its place."""
    ornt = _layout(layout)
    affine = base_affine(data.shape, pixel_mm=pixel_mm, slice_mm=slice_mm) @ inv_ornt_aff(ornt, data.shape)
    return np.asfortranarray(apply_orientation(data, ornt)), affine  # slices [:, :, k] contiguous


def _lps_to_ras() -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0])


def _lps_affine(shape_ijk: Sequence[int], *, pixel_mm: float, slice_mm: float) -> np.ndarray:
    """LPS affine of (column, row, slice): rows run +x (patient left), columns +y (back), slices +z (up),
    the grid centred in x/y like a scanner's field of view."""
    ni, nj, _ = shape_ijk
    affine = np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])
    affine[:3, 3] = (-(ni - 1) * pixel_mm / 2, -(nj - 1) * pixel_mm / 2, Z0_MM)
    return affine


def _cast(hu: np.ndarray, dtype: str) -> np.ndarray:
    if np.dtype(dtype).kind in "iu":
        return np.rint(hu).astype(dtype)
    return hu.astype(dtype)


def _ct_slice(pixels_rc: np.ndarray, plane: dict) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName = "Liver^Test"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyTime = "093000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "MedSeg tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for keyword, value in plane.items():
        setattr(ds, keyword, value)
    ds.PositionReferenceIndicator = ""
    ds.Rows, ds.Columns = pixels_rc.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.KVP = 120
    ds.WindowCenter, ds.WindowWidth = 60, 400
    ds.PixelData = np.ascontiguousarray(pixels_rc, dtype=np.int16).tobytes()
    return ds


def copy_dataset(ds: Dataset) -> Dataset:
    """A copy of a dataset and its file meta, to change without touching the original."""
    copy = Dataset(ds)
    copy.file_meta = FileMetaDataset(ds.file_meta)
    return copy
