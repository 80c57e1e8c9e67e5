"""A 3-D organ's network on one volume (spec `dimensions: 3`): the studies' job and the evaluation of labelled
volumes (at once, `POST /api/v1/evaluate`, and kept, gateway.service.evaluations) all run this, so a study's
mask and an evaluation's prediction are the same voxels.

    foreground, label = infer_3d(client, spec, volume, version=...)   # uint8 (z, y, x) each, canonical grid

The volume in the network's orientation (`Volume.canonical()`) is resampled (trilinear) to the spec's
`inference.spacing_mm` when its voxels differ, sent whole (common.volume_inference.segment_whole_volume), and
the softmax answer comes back onto the canonical grid as the foreground probability 1 − p(background)
(trilinear) and the label of largest probability (nearest) — what masks.labels_at thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import InvalidInput
from common.torchserve_client import InferenceClient
from common.volume_inference import segment_whole_volume
from gateway.service.masks import THRESHOLDS, labels_at, split_classes
from services import imaging, volumes

AXCODES = volumes.CANONICAL_AXCODES
TWO_D_FORMATS = ("PNG", "JPEG", "TIFF")


def infer_3d(
    client: InferenceClient,
    spec,
    volume: volumes.Volume,
    *,
    version: str | None,
    timeout: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(foreground probability, label of largest probability), uint8 (z, y, x) on the volume's canonical
    grid (see the module docstring)."""
    canonical = volume.canonical(AXCODES)
    target = volumes.resampled_shape(
        canonical.shape, volume.canonical_spacing(AXCODES), spec.inference.spacing_mm
    )
    probs = segment_whole_volume(
        client,
        spec.name,
        volumes.resample_zyx(canonical, target, order=1),
        version=version,
        classes=len(spec.labels) + 1,
        timeout=timeout,
    )
    foreground, label = split_classes(probs)
    shape = canonical.shape
    return volumes.resample_zyx(foreground, shape, order=1), volumes.resample_zyx(label, shape, order=0)


def check_fits(spec, volume: volumes.Volume) -> None:
    """A 3-D organ's network takes a volume of at most `inference.size` voxels at `inference.spacing_mm`
    (a crop around the organ): a single image (or a slab one voxel thick at that spacing), or a volume
    larger than that once resampled, is a 400 naming both shapes. Checked before anything is stored or
    sent."""
    shape = volume.canonical_shape(AXCODES)
    spacing = volume.canonical_spacing(AXCODES)
    target = volumes.resampled_shape(shape, spacing, spec.inference.spacing_mm)
    if min(shape) < 2 or min(target) < 2:
        raise InvalidInput(
            f"the upload is a single image ({'×'.join(map(str, shape))} voxels, z×y×x, "
            f"{'×'.join(map(str, target))} at the network's voxel size); organ {spec.name!r} segments whole "
            "volumes",
            code="not_a_volume",
            params={"organ": spec.name},
        )
    if any(n > m for n, m in zip(target, spec.inference.size, strict=True)):
        at = "×".join(f"{s:g}" for s in spec.inference.spacing_mm)
        raise InvalidInput(
            f"the volume is {'×'.join(map(str, target))} voxels (z×y×x) at {at} mm; organ {spec.name!r} "
            f"takes at most {'×'.join(map(str, spec.inference.size))} (a crop around the {spec.label}): "
            "crop the volume around it",
            code="volume_too_large_for_organ",
            params={"organ": spec.name},
        )


@dataclass(frozen=True)
class AxialSlice:
    """The axial slice (canonical z) of a scored volume with the most label voxels (any label), for its
    overlay: the image as grey [0, 1] (the spec's window, else the volume's 1st-99th percentile), the label
    and the prediction at the evaluation's threshold as foreground (any label), bool (y, x)."""

    z: int
    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray


@dataclass(frozen=True)
class VolumeScore:
    """One labelled volume scored at the evaluation's threshold: per label {"dice", "iou", "hd95_mm"}, their
    means, the mean Dice / IoU over labels at every grid threshold, sizes (x, y of the input grid) and the
    axial slice an overlay draws."""

    per_label: dict[str, dict[str, float | None]]
    dice: float
    iou: float
    at: dict[float, tuple[float, float]]
    width: int
    height: int
    predicted_voxels: int
    label_voxels: int
    axial: AxialSlice


def read_case(spec, case, limits: volumes.StudyLimits) -> tuple[volumes.Volume, np.ndarray]:
    """(the image volume, its label values on the input grid) of `case.image` (a NIfTI, or a zip of one DICOM
    series) and `case.label` (a NIfTI label volume, 0 background and i for the spec's i-th label, on exactly
    the image's grid), checked as a 3-D organ's network takes them; bad input is a 400 naming the file."""
    image = _read(spec, case.image, limits, "image")
    if image.modality and spec.modality and image.modality.upper() not in modalities(spec):
        raise InvalidInput(
            f"image {case.image.filename!r} is {image.modality}; organ {spec.name!r} segments "
            f"{spec.modality}",
            code="wrong_modality",
        )
    label_volume = _read(spec, case.label, limits, "label")
    if label_volume.shape != image.shape or not np.allclose(label_volume.affine, image.affine, atol=1e-3):
        raise InvalidInput(
            f"label {case.label.filename!r} ({'×'.join(map(str, label_volume.shape))}) is not on the grid "
            f"of image {case.image.filename!r} ({'×'.join(map(str, image.shape))}): the same shape and "
            "affine are needed",
            code="size_mismatch",
            params={"label": case.label.filename, "image": case.image.filename},
        )
    truth = np.rint(label_volume.data)
    if truth.min() < 0 or truth.max() > len(spec.labels):
        raise InvalidInput(
            f"label {case.label.filename!r} holds values {int(truth.min())}..{int(truth.max())}; organ "
            f"{spec.name!r} has labels 1..{len(spec.labels)} ({', '.join(spec.labels)}) and 0 for background",
            code="invalid_label",
            params={"label": case.label.filename},
        )
    check_fits(spec, image)
    return image, truth


def score_volume(
    client: InferenceClient,
    spec,
    case,
    threshold: float,
    *,
    version: str | None,
    limits: volumes.StudyLimits,
) -> VolumeScore:
    """`case` (read and checked by `read_case`) segmented as a study is and scored against its label."""
    from gateway.service import scoring

    image, truth = read_case(spec, case, limits)
    foreground, label = infer_3d(client, spec, image, version=version)
    fg_ijk, label_ijk = image.from_canonical(foreground, AXCODES), image.from_canonical(label, AXCODES)
    values = range(1, len(spec.labels) + 1)

    def scores_at(t: float) -> list[tuple[float, float]]:  # (Dice, IoU) per label
        predicted = labels_at(fg_ijk, label_ijk, t)
        return [scoring.dice_iou_hd95(predicted == v, truth == v, with_hd95=False)[:2] for v in values]

    at = {t: scores_at(t) for t in {threshold, *THRESHOLDS}}
    predicted = labels_at(fg_ijk, label_ijk, threshold)
    per_label = {
        name: {"dice": d, "iou": i, "hd95_mm": scoring.hd95(predicted == v, truth == v, image.spacing)}
        for name, v, (d, i) in zip(spec.labels, values, at[threshold], strict=True)
    }
    means = {t: (float(np.mean([d for d, _ in s])), float(np.mean([i for _, i in s]))) for t, s in at.items()}
    return VolumeScore(
        per_label=per_label,
        dice=means[threshold][0],
        iou=means[threshold][1],
        at=means,
        width=image.shape[0],
        height=image.shape[1],
        predicted_voxels=int(np.count_nonzero(predicted)),
        label_voxels=int(np.count_nonzero(truth)),
        axial=axial_slice(spec, image, truth, labels_at(foreground, label, threshold)),
    )


def axial_slice(spec, image: volumes.Volume, truth_ijk: np.ndarray, predicted_zyx: np.ndarray) -> AxialSlice:
    """The `AxialSlice` of a scored volume: `truth_ijk` on the image's grid, `predicted_zyx` (the label map
    at the threshold) on its canonical grid. Ties (or no label at all): the lowest such slice."""
    truth = volumes.Volume(truth_ijk, image.affine, image.source).canonical(AXCODES) > 0
    z = int(np.argmax(np.count_nonzero(truth, axis=(1, 2))))
    plane = image.canonical(AXCODES)[z]
    if spec.window:
        grey = imaging.apply_window(plane, spec.window)
    else:
        lo, hi = np.percentile(image.data, (1, 99))
        grey = imaging.scale_to_unit(plane, float(lo), float(hi))
    return AxialSlice(z, grey, truth[z], predicted_zyx[z] > 0)


def _read(spec, upload, limits: volumes.StudyLimits, what: str) -> volumes.Volume:
    if imaging.sniff_format(upload.data) in TWO_D_FORMATS:
        raise InvalidInput(
            f"{what} {upload.filename!r} is a 2-D image; organ {spec.name!r} is 3-D: send its cases as "
            "volumes (a NIfTI, or a zip of one DICOM series, and a NIfTI label volume on the same grid)",
            code="organ_needs_volume",
            params={"organ": spec.name},
        )
    try:
        return volumes.read_study([(upload.filename, upload.data)], limits=limits)
    except volumes.StudyInputError as exc:
        raise InvalidInput(f"{what} {upload.filename!r}: {exc.message}", code=exc.code) from None


def modalities(spec) -> set[str]:
    """The DICOM modalities an organ's spec accepts (its `modality`, e.g. CT, or "MR" for MRI)."""
    value = spec.modality.upper()
    return {"MR", "MRI"} if value in ("MR", "MRI") else {value}
