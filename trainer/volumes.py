"""The 3-D path of the trainer (an organ whose spec says `dimensions: 3`, e.g. the hippocampus): NIfTI volumes
with label maps (mask values 1..N) → the network's softmax over background + N labels.

Data: `images/X.nii.gz` + `labels/X.nii.gz` (the Medical Segmentation Decathlon layout, the recipe's
`data.layout: nifti`), each volume one subject, so folds are by file. Every volume is read the way the organ
server sees it: reoriented to the network's (z, y, x) orientation (services.volumes.Volume.canonical),
normalised per volume (services.preprocess.normalize_mr with the spec's `normalize.per_volume`) and padded to
the spec's `inference.size` (services.preprocess.pad_volume, edge voxels repeated).

Training: random crops of `crop` voxels inside the volume, small rotations and scales (one trilinear resample
of the image, nearest for the labels), intensity scale/shift and noise; loss MONAI DiceFocalLoss (softmax,
Dice over the labels, not the background; chosen over DiceCELoss by measurement, docs/hippocampus.md).
Validation: the whole padded volume in one pass, as served, Dice per label (MONAI DiceMetric) at every
threshold of the grid by the serving rule (a voxel is labelled when 1 − p(background) ≥ t and takes the
label of largest p), their mean the run's figure.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss
from monai.metrics import DiceMetric
from torch import nn

from services.networks import create_model
from services.preprocess import normalize_mr, pad_volume
from services.spec import OrganSpec
from services.volumes import Volume
from trainer.augment import AugmentConfig
from trainer.loop import THRESHOLDS, Trainer

log = logging.getLogger(__name__)

NIFTI_SUFFIX = ".nii.gz"


@dataclass
class VolumeSet:
    """Volumes normalised and padded to the network's input (N, 1, *size) float32, their label maps padded
    alike (N, *size) int64, and each volume's own (z, y, x) shape (the voxels beyond it are padding)."""

    names: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    shapes: list[tuple[int, int, int]]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx) -> VolumeSet:
        idx = [int(i) for i in idx]
        return VolumeSet(
            [self.names[i] for i in idx], self.images[idx], self.labels[idx], [self.shapes[i] for i in idx]
        )


def find_volumes(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, image, label map) of every `images/X.nii.gz` with its `labels/X.nii.gz`."""
    root = Path(root)
    images = sorted((root / "images").glob(f"*{NIFTI_SUFFIX}"))
    found = [(p.name[: -len(NIFTI_SUFFIX)], p, root / "labels" / p.name) for p in images]
    missing = [str(label) for _, _, label in found if not label.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} volume(s) without a label map, e.g. {missing[0]}")
    if not found:
        raise FileNotFoundError(f"no images/*{NIFTI_SUFFIX} with labels/*{NIFTI_SUFFIX} under {root}")
    return found


def canonical_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A volume and its label map in the network's (z, y, x) orientation, as the organ server gets them."""
    image = nib.load(image_path)
    labels = nib.load(label_path)
    if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise ValueError(f"{label_path.name}: the label map is not on its image's grid")
    volume = Volume(np.asarray(image.dataobj, dtype=np.float32), image.affine, source="nifti")
    label_volume = Volume(np.asarray(labels.dataobj, dtype=np.float32), labels.affine, source="nifti")
    return volume.canonical(), np.rint(label_volume.canonical()).astype(np.int64)


def load_volumes(root: str | Path, spec: OrganSpec, limit: int | None = None) -> VolumeSet:
    """Every volume of `root` (the first `limit`), prepared as the organ server prepares it."""
    size = tuple(spec.inference.size)
    n_labels = len(spec.labels)
    names, images, labels, shapes = [], [], [], []
    for name, image_path, label_path in find_volumes(root)[:limit]:
        image, label = canonical_pair(image_path, label_path)
        if any(n > s for n, s in zip(image.shape, size, strict=True)):
            raise ValueError(f"{name}: {image.shape} is larger than the network's input {size} (spec)")
        if label.min() < 0 or label.max() > n_labels:
            raise ValueError(f"{name}: label values {np.unique(label).tolist()} are not 0..{n_labels}")
        x = torch.from_numpy(normalize_mr(image, spec.per_volume))[None, None]
        images.append(pad_volume(x, size)[0])
        labels.append(F.pad(torch.from_numpy(label), _far_end_pads(label.shape, size)))
        names.append(name)
        shapes.append(tuple(int(n) for n in image.shape))
    return VolumeSet(names, torch.stack(images), torch.stack(labels), shapes)


def _far_end_pads(shape, size) -> tuple[int, ...]:
    """F.pad's pads (last axis first) padding `shape` at the far end of each axis to `size`."""
    pads: list[int] = []
    for n, s in reversed(list(zip(shape, size, strict=True))):
        pads += [0, s - n]
    return tuple(pads)


def augment_volumes(
    images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 1, z, y, x) normalised, labels (N, z, y, x) → a random rotation (± cfg.rotate_deg about
    each axis) and scale (cfg.scale) about the centre, one resample (trilinear, nearest for labels, edge
    voxels beyond the volume); then intensity × U(contrast) + U(±brightness) and noise. No flips unless
    cfg.flips (mirroring swaps a left hippocampus for a right one)."""
    n = images.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    angles = uniform(-math.radians(cfg.rotate_deg), math.radians(cfg.rotate_deg), n, 3)
    zoom = uniform(*cfg.scale, n)
    theta = torch.zeros(n, 3, 4)
    for i in range(n):
        theta[i, :, :3] = _rotation(angles[i]) / zoom[i]
    if cfg.flips:
        mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        theta[:, :, 0] *= mirror[:, None]  # x: the patient's left-right axis
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    labels = F.grid_sample(
        labels[:, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False
    )[:, 0].long()
    images = images * uniform(*cfg.contrast, n, 1, 1, 1, 1) + uniform(
        -cfg.brightness, cfg.brightness, n, 1, 1, 1, 1
    )
    if cfg.noise_std:
        images = images + torch.randn(images.shape, generator=gen) * uniform(0, cfg.noise_std, n, 1, 1, 1, 1)
    return images, labels


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """The 3×3 rotation about the three axes by `angles` (radians)."""
    matrices = []
    for axis, a in enumerate(angles.tolist()):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = torch.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        matrices.append(m)
    return matrices[0] @ matrices[1] @ matrices[2]


def label_map_at(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """The serving rule (gateway.service.masks.labels_at) on float probabilities (N + 1, z, y, x): a voxel
    takes the label of largest p when 1 − p(background) ≥ threshold, else 0."""
    label = probs[1:].argmax(0) + 1
    return torch.where(1.0 - probs[0] >= threshold, label, torch.zeros_like(label))


def per_label_dice(pred: torch.Tensor, truth: torch.Tensor, n_labels: int) -> list[float]:
    """Dice of each label 1..N (MONAI DiceMetric on one-hot maps; a label absent from both scores 1)."""
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    one_hot = [F.one_hot(m.long(), n_labels + 1).permute(3, 0, 1, 2)[None].float() for m in (pred, truth)]
    return [float(v) for v in metric(*one_hot)[0]]


class VolumeTrainer(Trainer):
    """The training loop's hooks for a 3-D multi-label organ (the loop itself is trainer.loop.Trainer's)."""

    def __init__(self, spec, train: VolumeSet, val: VolumeSet, config, run_dir, crop=None):
        self.crop = tuple(crop or spec.inference.size)
        super().__init__(spec, train, val, config, run_dir)

    def build_model(self) -> nn.Module:
        kw = {"in_channels": self.spec.channels, "out_channels": len(self.spec.labels) + 1}
        if self.cfg.widths:
            kw["widths"] = tuple(self.cfg.widths)
        return create_model(self.cfg.arch, **kw).to(memory_format=torch.channels_last_3d)

    def build_loss(self) -> nn.Module:
        """Dice over the labels (the background would dominate it) + focal loss (the default: fold 0 of the
        hippocampus, 344 epochs each, 0.8729 vs 0.8697 at 0.5 and flat over 0.2–0.8) or cross-entropy."""
        if self.cfg.loss == "dicefocal":
            return DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=False)
        if self.cfg.loss == "dicece":
            return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
        raise KeyError(f"unknown loss {self.cfg.loss!r} for a 3-D organ; valid: dicefocal, dicece")

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self._crops(idx)
        images, labels = augment_volumes(images, labels, self.cfg.augment, self.gen)
        return images.contiguous(memory_format=torch.channels_last_3d), labels[:, None]

    def _crops(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random `crop` of each volume, inside its own voxels where it is large enough."""
        images, labels = [], []
        for i in idx.tolist():
            starts = [
                int(torch.randint(0, max(n - c, 0) + 1, (1,), generator=self.gen))
                for n, c in zip(self.train_set.shapes[i], self.crop, strict=True)
            ]
            window = tuple(slice(s, s + c) for s, c in zip(starts, self.crop, strict=True))
            images.append(self.train_set.images[i][(slice(None), *window)])
            labels.append(self.train_set.labels[i][window])
        return torch.stack(images), torch.stack(labels)

    @torch.no_grad()
    def predict_val(self, i: int) -> torch.Tensor:
        """Softmax probabilities (N + 1, z, y, x) of validation volume i, cropped to its own voxels."""
        x = self.val_set.images[i : i + 1].contiguous(memory_format=torch.channels_last_3d)
        z, y, w = self.val_set.shapes[i]
        return torch.softmax(self.served(x).float(), dim=1)[0, :, :z, :y, :w]

    @torch.no_grad()
    def validate(self) -> dict:
        """Per-label Dice of every validation volume at every threshold; the run's figure is the mean over
        labels and volumes at 0.5."""
        if len(self.val_set) == 0:
            return {"val_dice": None, "val_loss": None, "val_dice_at": {}, "val_dice_pooled_at": {},
                    "val_dice_per_case": {}, "val_dice_per_label_at": {}}  # fmt: skip
        self.served.eval()
        n_labels = len(self.spec.labels)
        scores = {t: [] for t in THRESHOLDS}  # per volume: [dice of label 1, …, label N]
        losses = []
        for i in range(len(self.val_set)):
            probs = self.predict_val(i)
            z, y, w = self.val_set.shapes[i]
            truth = self.val_set.labels[i, :z, :y, :w]
            for t in THRESHOLDS:
                scores[t].append(per_label_dice(label_map_at(probs, t), truth, n_labels))
            logits = torch.log(probs.clamp(1e-6, 1.0))[None]
            losses.append(float(self.loss_fn(logits, truth[None, None])))
        per_label_at = {
            f"{t:.1f}": {name: float(np.mean([s[k] for s in v])) for k, name in enumerate(self.spec.labels)}
            for t, v in scores.items()
        }
        dice_at = {t: float(np.mean(list(d.values()))) for t, d in per_label_at.items()}
        return {
            "val_dice": dice_at["0.5"],
            "val_loss": float(np.mean(losses)),
            "val_dice_at": dice_at,
            "val_dice_pooled_at": None,
            "val_dice_per_label_at": per_label_at,
            "val_dice_per_case": {
                name: dict(zip(self.spec.labels, s, strict=True))
                for name, s in zip(self.val_set.names, scores[0.5], strict=True)
            },
        }
