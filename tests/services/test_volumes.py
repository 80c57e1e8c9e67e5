"""services/volumes.py on real liver data (tests/studydata.py) and on every kind of bad input.

The liver PNGs were rendered with the patient's back at the top; the test studies are written as a scanner
writes them (front at the top, HU). ``canonical()`` must give back the PNGs themselves: that proves the
orientation, the window and the geometry in one comparison.
"""

from __future__ import annotations

import datetime
import gzip
import io
import tracemalloc
import zipfile

import dicom2nifti.convert_dicom
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from services.volumes import (
    StudyInputError,
    StudyLimits,
    dicom_seg,
    inspect_study,
    nifti_bytes,
    read_study,
)
from tests import studydata as sd

FIRST, COUNT = 20, 24


@pytest.fixture(scope="module")
def series() -> list[tuple[str, bytes]]:
    return sd.liver_dicom_series(FIRST, COUNT)


@pytest.fixture(scope="module")
def training() -> tuple[np.ndarray, np.ndarray]:
    return sd.training_slices(FIRST, COUNT)


@pytest.fixture(scope="module")
def dicom_volume(series):
    return read_study(series)


def as_grey(canonical_hu: np.ndarray) -> np.ndarray:
    return np.rint(sd.grey_from_hu(canonical_hu)).astype(np.uint8)


def refusal(files, **kwargs) -> StudyInputError:
    with pytest.raises(StudyInputError) as caught:
        read_study(files, **kwargs)
    return caught.value


def datasets(count: int = 6, **kwargs) -> list[pydicom.Dataset]:
    return sd.liver_dicom_datasets(FIRST, count, **kwargs)


def files_of(dss: list[pydicom.Dataset]) -> list[tuple[str, bytes]]:
    return [(f"IM{n + 1:04d}.dcm", sd.dicom_file_bytes(ds)) for n, ds in enumerate(dss)]


def nifti_of(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    image = nib.Nifti1Image(data, np.diag([0.75, 0.75, 2.5, 1.0]) if affine is None else affine)
    return image.to_bytes()


# --- real data: orientation, window, geometry ---------------------------------------------------------------


def test_dicom_series_canonical_is_the_training_png(dicom_volume, training):
    grey, _ = training
    canonical = dicom_volume.canonical()
    assert canonical.dtype == np.float32 and canonical.shape == (COUNT, 512, 512)
    assert np.array_equal(as_grey(canonical), grey)  # back at the top, liver on the left, HU window undone
    assert dicom_volume.canonical_spacing() == pytest.approx((2.5, 0.75, 0.75))
    assert dicom_volume.voxel_volume_ml == pytest.approx(0.75 * 0.75 * 2.5 / 1000)


def test_dicom_series_headers_and_series_info(dicom_volume, series):
    assert dicom_volume.source == "dicom" and dicom_volume.modality == "CT"
    assert dicom_volume.patient_id == sd.PATIENT_ID
    assert dicom_volume.study_date == sd.STUDY_DATE
    info = dicom_volume.series
    first = pydicom.dcmread(io.BytesIO(series[0][1]))
    assert info.series_instance_uid == first.SeriesInstanceUID
    assert info.study_instance_uid == first.StudyInstanceUID
    assert info.frame_of_reference_uid == first.FrameOfReferenceUID
    expected = [pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for _, data in series]
    assert list(info.sop_instance_uids) == expected  # inferior to superior, as the files were written


def test_dicom_hu_applies_rescale_slope_and_intercept(training):
    grey, _ = training
    files = sd.liver_dicom_series(FIRST, 4, slope=0.5, intercept=-2048.0)
    volume = read_study(files)
    assert np.array_equal(as_grey(volume.canonical()), grey[:4])
    assert volume.data.min() >= -1024 - 0.5  # HU, not stored values


@pytest.mark.parametrize(
    "slope, intercept, unsigned",
    [
        (1.0, -1024.0, False),
        (1.0, -1024.0, True),
        (1.0, 0.0, False),
        (0.5, -2048.0, False),
        (1.0, -0.5, False),
    ],
)
def test_dicom_hu_are_pydicoms_modality_lut_whichever_way_they_are_decoded(slope, intercept, unsigned):
    """An integer rescale is applied in place (the fast way), anything else by pydicom: both give pydicom's
    HU, exactly, for signed and unsigned stored values."""
    hu = np.linspace(-1024, 1500, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    datasets = sd.ct_datasets(hu, name="lut", slope=slope, intercept=intercept)
    if unsigned:  # stored values of 0..2524 as uint16 (PixelRepresentation 0)
        for ds in datasets:
            ds.PixelData = ds.pixel_array.astype(np.uint16).tobytes()
            ds.PixelRepresentation = 0
    expected = np.stack([pydicom.pixels.apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
    volume = read_study(sd.series_files(datasets))
    assert volume.data.dtype == np.float32
    assert np.array_equal(volume.data.transpose(2, 1, 0), expected.astype(np.float32))


def test_dicom_geometry_matches_dicom2nifti(series, dicom_volume):
    reference = dicom2nifti.convert_dicom.dicom_array_to_nifti(
        [pydicom.dcmread(io.BytesIO(data)) for _, data in series], None, reorient_nifti=False
    )["NII"]
    assert reference.shape == dicom_volume.shape
    assert np.allclose(reference.affine, dicom_volume.affine, atol=1e-4)
    assert np.allclose(np.asarray(reference.dataobj, dtype=np.float32), dicom_volume.data)


def test_dicom2nifti_las_output_reads_to_the_same_canonical(series, dicom_volume, tmp_path):
    out = tmp_path / "las.nii.gz"
    dicom2nifti.convert_dicom.dicom_array_to_nifti(
        [pydicom.dcmread(io.BytesIO(data)) for _, data in series], str(out), reorient_nifti=True
    )
    converted = read_study([("las.nii.gz", out.read_bytes())])
    assert nib.aff2axcodes(converted.affine) != nib.aff2axcodes(dicom_volume.affine)
    assert np.array_equal(converted.canonical(), dicom_volume.canonical())


def test_reversed_file_order_gives_the_same_volume(series, dicom_volume):
    reversed_volume = read_study(sd.liver_dicom_series(FIRST, COUNT, reverse=True))
    assert np.array_equal(reversed_volume.canonical(), dicom_volume.canonical())
    assert np.array_equal(reversed_volume.affine, dicom_volume.affine)
    assert reversed_volume.series.sop_instance_uids == dicom_volume.series.sop_instance_uids


@pytest.mark.parametrize("layout", sorted(sd.LAYOUTS))
def test_nifti_layouts_give_the_same_canonical_and_masks_land_on_their_grid(layout, dicom_volume, training):
    _, mask = training
    volume = read_study([(f"{layout}.nii.gz", sd.liver_nifti(FIRST, COUNT, layout=layout))])
    assert volume.source == "nifti"
    assert np.array_equal(volume.canonical(), dicom_volume.canonical())
    assert volume.canonical_spacing() == pytest.approx((2.5, 0.75, 0.75))
    assert np.array_equal(volume.from_canonical(volume.canonical()), volume.data)
    assert not np.shares_memory(volume.canonical(), volume.data)
    # the training mask (canonical) goes back onto this file's own grid, where the labels are
    assert np.array_equal(volume.from_canonical(mask), sd.liver_labels(FIRST, COUNT, layout=layout))


@pytest.mark.parametrize(
    ("layout", "count"),
    [("flip_i", COUNT), ("flip_jk", COUNT), ("las", COUNT), ("permuted_flipped", 6)],
    ids=["rows-to-right", "back-at-top-slices-down", "las-normal-down", "coronal-planes"],
)
def test_dicom_series_in_other_orientations_give_the_same_canonical(layout, count, dicom_volume, training):
    grey, mask = training
    volume = read_study(sd.liver_dicom_series(FIRST, count, layout=layout))
    assert np.array_equal(as_grey(volume.canonical()), grey[:count])
    assert volume.canonical_spacing() == pytest.approx((2.5, 0.75, 0.75))
    assert np.array_equal(
        volume.from_canonical(mask[:count]), sd.liver_dicom_labels(FIRST, count, layout=layout)
    )


def test_oblique_series_keeps_its_geometry_and_reads_to_the_nearest_axes(dicom_volume, training):
    grey, _ = training
    angle = np.deg2rad(12.0)  # a tilted acquisition: the planes turned about the patient's left-right axis
    turn = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    dss = datasets(COUNT)
    for ds in dss:
        iop = np.reshape(ds.ImageOrientationPatient, (2, 3))
        ds.ImageOrientationPatient = [float(v) for v in (turn @ iop.T).T.ravel()]
        ds.ImagePositionPatient = [float(v) for v in turn @ np.asarray(ds.ImagePositionPatient)]
    volume = read_study(files_of(list(reversed(dss))))
    reference = dicom2nifti.convert_dicom.dicom_array_to_nifti(dss, None, reorient_nifti=False)["NII"]
    assert np.allclose(volume.affine, reference.affine, atol=1e-4)
    rotation = np.eye(4)
    rotation[:3, :3] = np.diag([-1, -1, 1]) @ turn @ np.diag([-1, -1, 1])  # the turn in RAS
    assert np.allclose(volume.affine, rotation @ dicom_volume.affine, atol=1e-4)
    assert np.array_equal(as_grey(volume.canonical()), grey)  # no resampling: the nearest axes


def test_from_canonical_carries_leading_axes_and_keeps_dtype(dicom_volume, training):
    _, mask = training
    probabilities = np.stack([1.0 - mask, mask]).astype(np.float16)  # (class, z, y, x)
    back = dicom_volume.from_canonical(probabilities)
    assert back.dtype == np.float16 and back.shape == (2, *dicom_volume.shape)
    assert np.array_equal(back[1], sd.liver_labels(FIRST, COUNT).astype(np.float16))
    with pytest.raises(ValueError, match="expected an array"):
        dicom_volume.from_canonical(mask[:, :, :-1])


def test_other_axcodes_are_a_parameter(dicom_volume, training):
    grey, _ = training
    front_at_top = dicom_volume.canonical(axcodes=("L", "P", "S"))
    assert np.array_equal(as_grey(front_at_top), grey[:, ::-1, :])
    assert np.array_equal(
        dicom_volume.from_canonical(front_at_top, axcodes=("L", "P", "S")), dicom_volume.data
    )


def test_nifti_float_input_and_trailing_singleton_dim(training):
    grey, _ = training
    image = sd.liver_nifti_image(FIRST, 4, dtype="float32")
    four_d = nib.Nifti1Image(np.asarray(image.dataobj)[..., None], image.affine)
    volume = read_study([("t.nii", four_d.to_bytes())])
    assert volume.shape == (512, 512, 4)
    assert np.array_equal(as_grey(volume.canonical()), grey[:4])


def test_nifti2_and_big_endian_nifti(dicom_volume):
    image = sd.liver_nifti_image(FIRST, COUNT, layout="las")
    nifti2 = nib.Nifti2Image(np.asarray(image.dataobj), image.affine)
    big_endian = nib.Nifti1Image(
        np.asarray(image.dataobj), image.affine, header=image.header.copy().as_byteswapped(">")
    )
    for name, raw in (("v2.nii", nifti2.to_bytes()), ("be.nii", big_endian.to_bytes())):
        volume = read_study([(name, raw)])
        assert np.array_equal(volume.canonical(), dicom_volume.canonical()), name
    volume = read_study([("v2.nii", nifti2.to_bytes())])
    written = nib.Nifti2Image.from_bytes(
        gzip.decompress(nifti_bytes(volume, np.ones(volume.shape, np.uint8)))
    )
    assert np.array_equal(written.affine, nifti2.affine) and written.shape == nifti2.shape


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=["rle", "jpeg-ls", "jpeg2000"]
)
def test_compressed_series_decode_to_the_same_hu(syntax):
    plain = read_study(sd.liver_dicom_series(FIRST, 3))
    files = sd.liver_dicom_series(FIRST, 3, transfer_syntax=syntax)
    assert pydicom.dcmread(io.BytesIO(files[0][1])).file_meta.TransferSyntaxUID == syntax
    compressed = read_study(files)
    assert compressed.series.transfer_syntax_uid == syntax
    assert np.array_equal(compressed.data, plain.data)


@pytest.mark.parametrize(
    ("syntax", "plugin"),
    [(RLELossless, "pylibjpeg"), (JPEGLSLossless, "pyjpegls"), (JPEG2000Lossless, "pylibjpeg")],
    ids=["rle", "jpeg-ls", "jpeg2000"],
)
def test_the_pinned_runtime_plugins_decode_the_compressed_syntaxes(syntax, plugin):
    # python-gdcm (test-only, dicom2nifti's) decodes these too, so the test above alone would not show that
    # the pinned runtime plugins do
    [(_, plain_bytes)] = sd.liver_dicom_series(FIRST, 1)
    [(_, packed_bytes)] = sd.liver_dicom_series(FIRST, 1, transfer_syntax=syntax)
    packed = pydicom.dcmread(io.BytesIO(packed_bytes))
    packed.pixel_array_options(decoding_plugin=plugin)
    assert np.array_equal(packed.pixel_array, pydicom.dcmread(io.BytesIO(plain_bytes)).pixel_array)


def test_zip_of_a_series_with_folder_litter_reads_like_the_files(series, dicom_volume):
    archive = sd.zipped(
        [(f"CT/{name}", data) for name, data in series]
        + [("__MACOSX/CT/._IM0001.dcm", b"\0\5\26\7"), ("CT/.DS_Store", b"bud1")]
    )
    volume = read_study([("study.zip", archive)])
    assert np.array_equal(volume.canonical(), dicom_volume.canonical())


def test_zip_of_a_nifti(dicom_volume):
    volume = read_study([("x.zip", sd.zipped([("liver.nii.gz", sd.liver_nifti(FIRST, COUNT))]))])
    assert np.array_equal(volume.canonical(), dicom_volume.canonical())


def test_inspect_study_reads_headers_only(series, dicom_volume):
    info = inspect_study(series)
    assert (info.source, info.shape, info.patient_id) == ("dicom", dicom_volume.shape, sd.PATIENT_ID)
    assert np.array_equal(info.affine, dicom_volume.affine) and info.series == dicom_volume.series
    nifti = inspect_study([("l.nii.gz", sd.liver_nifti(FIRST, COUNT, layout="permuted"))])
    assert nifti.source == "nifti" and nifti.shape == (512, COUNT, 512)
    undecodable = datasets(3)
    for ds in undecodable:
        ds.PixelData = b"\0\0"
    assert inspect_study(files_of(undecodable)).shape == (512, 512, 3)
    assert refusal(files_of(undecodable)).code == "unreadable_dicom"  # read_study decodes
    with pytest.raises(StudyInputError) as caught:
        inspect_study([("fmri.nii", nifti_of(np.zeros((8, 8, 4, 3), np.int16)))])
    assert caught.value.code == "nifti_not_3d"


# --- writing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["base", "permuted_flipped"])
def test_nifti_bytes_keeps_the_input_grid_and_codes(layout):
    source = sd.liver_nifti_image(FIRST, 6, layout=layout)
    source.set_qform(source.affine, code=1)
    source.set_sform(source.affine, code=2)  # aligned: a code the output must keep
    volume = read_study([("in.nii", source.to_bytes())])
    labels = sd.liver_labels(FIRST, 6, layout=layout)
    written = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_bytes(volume, labels)))
    assert written.shape == source.shape
    assert np.array_equal(written.affine, source.affine)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    assert np.allclose(written.header.get_qform(), source.header.get_qform())
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(written.dataobj), labels)


def test_nifti_bytes_keeps_a_qform_only_input():
    source = sd.liver_nifti_image(FIRST, 4, layout="flip_i")
    source.set_sform(None, code=0)
    volume = read_study([("q.nii", source.to_bytes())])
    written = nib.Nifti1Image.from_bytes(
        gzip.decompress(nifti_bytes(volume, np.zeros(volume.shape, np.uint8)))
    )
    assert int(written.header["sform_code"]) == 0 and int(written.header["qform_code"]) == 1
    assert np.allclose(written.affine, source.header.get_qform())


def test_nifti_bytes_of_a_dicom_study_has_the_converters_geometry(dicom_volume, series):
    labels = sd.liver_labels(FIRST, COUNT)
    written = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_bytes(dicom_volume, labels)))
    reference = dicom2nifti.convert_dicom.dicom_array_to_nifti(
        [pydicom.dcmread(io.BytesIO(data)) for _, data in series], None, reorient_nifti=False
    )["NII"]
    assert np.allclose(written.affine, reference.affine, atol=1e-4)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 1
    assert np.array_equal(np.asarray(written.dataobj), labels)
    with pytest.raises(ValueError):
        nifti_bytes(dicom_volume, labels[:-1])


def test_dicom_seg_reads_back_with_highdicom(series, dicom_volume, training):
    _, mask = training
    labels = dicom_volume.from_canonical(mask).astype(np.uint8)
    labels[labels.shape[0] // 2 :, :, 3:5] *= 2  # a second organ on part of the liver: two segments
    seg_bytes = dicom_seg(
        list(reversed(series)), labels, ["liver", "tumour"], algorithm="eru-net", version="3", threshold=0.5
    )
    seg = hd.seg.segread(io.BytesIO(seg_bytes))
    assert seg.Modality == "SEG" and seg.PatientID == sd.PATIENT_ID
    assert list(seg.get_segment_numbers()) == [1, 2]
    liver = seg.get_segment_description(1)
    assert liver.segment_label == "liver" and liver.segmented_property_type == codes.SCT.Liver
    assert seg.get_segment_description(2).segment_label == "tumour"
    info = dicom_volume.series
    [(study_uid, series_uid, _)] = {(s, r, None) for s, r, _ in seg.get_source_image_uids()}
    assert (study_uid, series_uid) == (info.study_instance_uid, info.series_instance_uid)
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    assert referenced == {uid for k, uid in enumerate(info.sop_instance_uids) if labels[:, :, k].any()}
    positions = {
        tuple(float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert positions <= {tuple(sd.image_position(k, dicom_volume.shape)) for k in range(COUNT)}
    assert len(positions) == sum(labels[:, :, k].any() for k in range(COUNT))
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(info.sop_instance_uids), combine_segments=True, skip_overlap_checks=True
    )
    assert np.array_equal(frames, labels.transpose(2, 1, 0))


def test_dicom_seg_of_an_empty_mask_still_references_the_series(series, dicom_volume):
    seg = hd.seg.segread(
        io.BytesIO(
            dicom_seg(
                series,
                np.zeros(dicom_volume.shape, np.uint8),
                ["liver"],
                algorithm="a",
                version="1",
                threshold=0.8,
            )
        )
    )
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(dicom_volume.series.sop_instance_uids)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(dicom_volume.series.sop_instance_uids), combine_segments=True
    )
    assert not frames.any()


# --- bad input ----------------------------------------------------------------------------------------------


def test_dicom_without_pixel_data_is_named():
    dss = datasets()
    del dss[2].PixelData
    error = refusal(files_of(dss))
    assert (error.code, error.status) == ("not_an_image", 400) and "IM0003.dcm" in error.message


def test_dicom_seg_in_the_upload_is_not_an_image(series, dicom_volume):
    labels = sd.liver_labels(FIRST, COUNT)
    seg = dicom_seg(series, labels, ["liver"], algorithm="a", version="1", threshold=0.5)
    error = refusal([*series, ("seg.dcm", seg)])
    assert error.code == "not_an_image" and "seg.dcm" in error.message and "SEG" in error.message


def test_zip_with_two_series_is_a_conflict_listing_them():
    first = sd.liver_dicom_series(FIRST, 4)
    other = sd.liver_dicom_series(40, 3, series_number=3, series_description="Arterial phase")
    error = refusal([("two.zip", sd.zipped(first + [(f"B/{n}", d) for n, d in other]))])
    assert (error.code, error.status) == ("several_series", 409)
    listed = {(s["description"], s["count"]) for s in error.details["series"]}
    assert listed == {("Liver CT axial (test series from liver/train)", 4), ("Arterial phase", 3)}
    assert "Arterial phase" in error.message and "(3 files)" in error.message


def test_missing_slice_names_the_gap():
    files = files_of(datasets(8))
    error = refusal(files[:4] + files[5:])
    assert (error.code, error.status) == ("missing_slice", 400)
    assert "-112.50 mm" in error.message and "-107.50 mm" in error.message  # z of slices 4 and 6
    assert "IM0004.dcm" in error.message and "IM0006.dcm" in error.message
    assert error.details["missing"] == 1


def test_a_short_series_with_a_gap_is_a_missing_slice_not_uneven_spacing():
    files = files_of(datasets(4))
    error = refusal([files[0], files[1], files[3]])  # steps 2.5 and 5 mm: the median would be neither
    assert error.code == "missing_slice" and error.details["missing"] == 1


def test_unequal_spacing():
    dss = datasets(6)
    for ds in dss[3:]:
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], ds.ImagePositionPatient[2] + 1.0]
    error = refusal(files_of(dss))
    assert error.code == "unequal_spacing" and "3.50 mm" in error.message


def test_duplicate_position():
    dss = datasets(5)
    twin = sd.copy_dataset(dss[2])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    error = refusal(files_of([*dss, twin]))
    assert error.code == "duplicate_slice" and "-115.00 mm" in error.message


def test_sheared_stack_is_refused():
    dss = datasets(4)
    ds = dss[3]
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0] + 3.0, *ds.ImagePositionPatient[1:]]
    assert refusal(files_of(dss)).code == "sheared_series"


@pytest.mark.parametrize(
    "change",
    [
        lambda ds: setattr(ds, "ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]),
        lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.8]),
    ],
    ids=["orientation", "pixel-spacing"],
)
def test_inconsistent_plane_names_the_instance(change):
    dss = datasets(4)
    change(dss[2])
    error = refusal(files_of(dss))
    assert error.code == "inconsistent_geometry" and "IM0003.dcm (instance 3)" in error.message


def test_inconsistent_matrix_size():
    dss = datasets(3)
    small = sd.liver_dicom_datasets(FIRST, 3)[2]
    small.Rows = small.Columns = 256
    small.PixelData = np.zeros((256, 256), np.int16).tobytes()
    error = refusal(files_of([*dss[:2], small]))
    assert error.code == "inconsistent_geometry" and "256×256" in error.message


def test_damaged_dicom_is_named():
    files = files_of(datasets(3))
    name, data = files[1]
    error = refusal([files[0], (name, data[:-1000]), files[2]])  # cut inside the pixel data
    assert (error.code, error.status) == ("unreadable_dicom", 400) and name in error.message


def test_a_dicomdir_beside_the_series_is_skipped(series, dicom_volume):
    index = sd.copy_dataset(datasets(1)[0])
    del index.PixelData
    index.SOPClassUID = index.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    volume = read_study([("DICOMDIR", sd.dicom_file_bytes(index)), *series])
    assert np.array_equal(volume.canonical(), dicom_volume.canonical())


def test_missing_geometry():
    dss = datasets(3)
    del dss[1].ImagePositionPatient
    error = refusal(files_of(dss))
    assert error.code == "missing_geometry" and "ImagePositionPatient" in error.message


def test_four_d_nifti():
    error = refusal([("fmri.nii", nifti_of(np.zeros((8, 8, 4, 3), np.int16)))])
    assert (error.code, error.status) == ("nifti_not_3d", 400) and "3 volumes" in error.message


def test_nifti_with_nans_names_the_first():
    data = np.zeros((8, 8, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[5, 5, 0] = np.inf
    error = refusal([("nan.nii", nifti_of(data))])
    assert error.code == "nifti_not_finite" and "2 voxel(s)" in error.message and "(1, 2, 3)" in error.message


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([0.75, 0.75, 0.0, 1.0]),
        np.diag([0.75, 0.75, 80.0, 1.0]),
        np.array([[1.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]),
    ],
    ids=["zero-size", "80mm", "singular"],
)
def test_insane_affine(affine):
    data = np.zeros((8, 8, 4), np.int16)
    header = nib.Nifti1Header()  # written field by field: nibabel's image would not keep such an affine
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    raw = header.binaryblock + b"\0" * 4 + data.tobytes(order="F")
    assert refusal([("a.nii", raw)]).code == "nifti_bad_affine"


def test_nifti_without_orientation():
    image = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    assert refusal([("a.nii", image.to_bytes())]).code == "nifti_bad_affine"


def test_two_gb_declared_nifti_is_refused_without_allocating():
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    data = header.binaryblock + b"\0" * 4 + b"\0" * 1024  # 2 GiB declared, 1 kB present
    tracemalloc.start()
    try:
        error = refusal([("big.nii", data)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (error.code, error.status) == ("too_many_voxels", 413)
    assert peak < 16 << 20
    gz_error = refusal([("big.nii.gz", gzip.compress(data))])
    assert gz_error.code == "too_many_voxels"


def test_declared_bytes_over_the_limit_within_the_voxel_limit():
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 600))
    header.set_data_dtype(np.float64)  # 1.2 GB
    header.set_qform(np.eye(4), code=1)
    assert refusal([("f64.nii", header.binaryblock + b"\0" * 4)]).code == "study_too_large"


def test_truncated_nifti():
    assert refusal([("cut.nii", nifti_of(np.zeros((8, 8, 4), np.int16))[:-10])]).code == "nifti_truncated"


def test_zip_bomb_is_refused_before_extraction(monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("IM0001.dcm", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))
    bomb = buf.getvalue()
    assert len(bomb) < 1 << 20

    def no_extraction(*args, **kwargs):
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_extraction)
    error = refusal([("bomb.zip", bomb)])
    assert (error.code, error.status) == ("zip_bomb", 413)
    small = refusal([("bomb.zip", bomb)], limits=StudyLimits(max_bytes=32 << 20))
    assert (small.code, small.status) == ("study_too_large", 413)


def test_zip_member_count_limit(series):
    error = refusal([("s.zip", sd.zipped(series))], limits=StudyLimits(max_files=10))
    assert (error.code, error.status) == ("too_many_files", 413)


def test_nested_zip():
    inner = sd.zipped(sd.liver_dicom_series(FIRST, 2))
    assert refusal([("outer.zip", sd.zipped([("inner.zip", inner)]))]).code == "nested_zip"


def test_voxel_limit_is_checked_before_decoding():
    dss = datasets(6)
    for ds in dss:
        ds.PixelData = b"\0\0"  # would fail to decode: the limit must come first
    error = refusal(files_of(dss), limits=StudyLimits(max_voxels=512 * 512 * 5))
    assert (error.code, error.status) == ("too_many_voxels", 413)


def test_total_bytes_limit(series):
    error = refusal(series, limits=StudyLimits(max_bytes=1 << 20))
    assert (error.code, error.status) == ("study_too_large", 413)


def test_other_files_and_mixtures():
    png = sd.LIVER_TRAIN.joinpath("020.png").read_bytes()
    assert (refusal([("slice.png", png)]).code, refusal([("slice.png", png)]).status) == (
        "unsupported_file",
        415,
    )
    nifti = nifti_of(np.zeros((8, 8, 4), np.int16))
    mixed = refusal([("a.nii", nifti), *sd.liver_dicom_series(FIRST, 2)])
    assert mixed.code == "mixed_inputs"
    assert refusal([("a.zip", sd.zipped([("a.nii", nifti)])), ("b.nii", nifti)]).code == "mixed_inputs"
    assert refusal([]).code == "empty_study"


def test_study_date_and_patient_are_optional():
    volume = read_study(sd.liver_dicom_series(FIRST, 2, patient_id=None, study_date=None))
    assert volume.patient_id is None and volume.study_date is None
    assert read_study(sd.liver_dicom_series(FIRST, 2, study_date=datetime.date(2023, 1, 31))).study_date == (
        datetime.date(2023, 1, 31)
    )
