"""Array-level preprocessing shared by the organ handler, the trainer and the benchmarks.

One implementation so that what the model saw in training is exactly what it sees in serving.
Images arrive here already decoded (see `services.imaging`) as float32 arrays scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from services.spec import OrganSpec

WINDOW_BATCH = 4  # windows per forward pass in "sliding" inference


def to_channels(img01: np.ndarray, channels: int) -> np.ndarray:
    """Return a float32 H×W×C array with the organ's channel count (grey↔RGB, alpha dropped)."""
    arr = np.asarray(img01, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected a 2-D image (H×W or H×W×C), got shape {arr.shape}")
    if arr.shape[2] in (2, 4):  # grey+alpha, RGBA: drop alpha
        arr = arr[:, :, :-1]
    have = arr.shape[2]
    if have == channels:
        return arr
    if channels == 1:
        # the channel mean, summed plane by plane: bit-identical to arr.mean(axis=2) (same float32 order of
        # additions) and 20x faster than numpy's reduction over the short last axis
        total = arr[:, :, 0].copy()
        for c in range(1, have):
            total += arr[:, :, c]
        return (total / np.float32(have))[:, :, None]
    if have == 1:
        return np.repeat(arr, channels, axis=2)
    raise ValueError(f"cannot convert a {have}-channel image to {channels} channels")


def normalize(x: torch.Tensor, spec: OrganSpec) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] → standardised with the organ's mean/std."""
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class Restore:
    """How to map a model-sized probability map back onto the input image."""

    height: int
    width: int
    pad_h: int = 0
    pad_w: int = 0
    resized: bool = False


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def prepare(img01: np.ndarray, spec: OrganSpec) -> tuple[torch.Tensor, Restore]:
    """H×W[×C] image in [0, 1] → normalised (1, C, h, w) model input and the way back."""
    arr = to_channels(img01, spec.channels)
    height, width = arr.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    if spec.inference.mode == "resize":
        x = resize(x, spec.inference.size)
        return normalize(x, spec), Restore(height, width, resized=True)
    return pad_to_multiple(normalize(x, spec), spec.inference.pad_multiple)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Restore]:
    """Pad an (N, C, H, W) model input on the bottom and right to a multiple of the network's total stride
    (reflected; replicated when the image is smaller than the padding) and say how to crop back."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, Restore(height, width, pad_h, pad_w)


def forward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, spec: OrganSpec) -> torch.Tensor:
    """Logits (N, 1, h, w) for a prepared input (N, C, h, w), the way the organ's spec says the network
    sees it: in one pass, or ("sliding") through MONAI's sliding window over windows of `inference.size`
    overlapping by `inference.overlap`, blended with Gaussian weights, so each pixel is predicted with the
    context the network was trained with. An input no larger than one window goes through in one pass."""
    inf = spec.inference
    if inf.mode != "sliding" or (x.shape[-2] <= inf.size[0] and x.shape[-1] <= inf.size[1]):
        return model(x)
    from monai.inferers import sliding_window_inference  # only sliding-window organs pay for the import

    return sliding_window_inference(
        x, inf.size, WINDOW_BATCH, model, overlap=inf.overlap, mode="gaussian", padding_mode="replicate"
    )


# The mirror images of an input (spec inference.tta) go through the network as one batch when together they
# hold at most this many pixels: the four of a 1000² H&E tile (1008² padded, tta flips), which OpenVINO runs
# side by side, one image a stream at a time (services.runtime.OpenVinoModel), so a batch of four holds no
# more images in flight than one of two. Two tiles in one TorchServe batch pass one after the other. (When
# each stream still took half a batch at once, a batch of four grew the worker from 1.0 to 1.6 GiB: python -m
# tools.organ_cpu --organ cells, 2026-12-03; README "Benchmarks" has the worker's size with four views.)
BATCH_VIEWS_PIXELS = 4 * 1008 * 1008

# the dims each view mirrors: "flips" the image and its three mirror images; "rot180" the image and the one
# mirrored both ways (a half turn), half the passes of "flips"
TTA_FLIPS = {"none": ((),), "flips": ((), (-1,), (-2,), (-2, -1)), "rot180": ((), (-2, -1))}


def probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    spec: OrganSpec,
    batch_views_pixels: int = 0,
) -> torch.Tensor:
    """Sigmoid probabilities (N, 1, h, w) for a prepared input (N, C, h, w): forward() once, or with
    `inference.tta` "flips" / "rot180" the mean over the input and its mirror images (TTA_FLIPS), each
    mirrored back.
    `batch_views_pixels`: the mirror images go through the network as one batch (one call instead of four:
    the same arithmetic per image, less overhead per pass; the organ server's choice) when all of them
    together hold at most this many pixels, so memory stays bounded; 0 (the default) runs them one by one."""
    views = TTA_FLIPS[spec.inference.tta]

    def mirror(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return t.flip(dims) if dims else t

    together = len(views) * x.shape[0] * x.shape[-2] * x.shape[-1]
    if len(views) > 1 and spec.inference.mode != "sliding" and together <= batch_views_pixels:
        logits = forward(model, torch.cat([mirror(x, d) for d in views]), spec).float()
        per_view = torch.sigmoid(logits).split(x.shape[0])
        return sum(mirror(p, d) for p, d in zip(per_view, views, strict=True)) / len(views)
    views_back = (mirror(torch.sigmoid(forward(model, mirror(x, d), spec).float()), d) for d in views)
    return sum(views_back) / len(views)


def restore(prob: torch.Tensor, how: Restore) -> torch.Tensor:
    """(1, 1, h, w) probabilities at model size → (H, W) at the input's size."""
    if how.resized:
        prob = F.interpolate(prob, size=(how.height, how.width), mode="bilinear", align_corners=False)
    else:
        prob = prob[..., : how.height, : how.width]
    return prob[0, 0].clamp_(0.0, 1.0)


# --- 3-D organs (spec dimensions: 3) ------------------------------------------------------------------------


def normalize_mr(volume: np.ndarray, how: str) -> np.ndarray:
    """An MR volume's intensities (any scale: MR has no physical unit) → float32 on a per-volume scale, the
    way the organ's network was trained (spec `normalize.per_volume`). "zscore": (v − mean) / std over the
    whole volume (std 0, a constant volume: all zeros). The one implementation the trainer and the handler
    share; the trainer's cross-validation picks `how`."""
    v = np.asarray(volume, dtype=np.float32)
    if how == "zscore":
        mean, std = float(v.mean(dtype=np.float64)), float(v.std(dtype=np.float64))
        return ((v - np.float32(mean)) / np.float32(std if std > 0 else 1.0)).astype(np.float32, copy=False)
    raise ValueError(f"unknown per-volume normalisation {how!r}")


def pad_volume(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """(N, C, z, y, x) → (N, C, *size), padded at the far end of each axis by repeating the edge voxels (so
    the padding holds no intensity the volume does not have); crop back with [..., :z, :y, :x]. A volume
    larger than `size` along any axis is a ValueError (the caller refuses it before it gets here)."""
    shape = tuple(int(n) for n in x.shape[-3:])
    if any(n > s for n, s in zip(shape, size, strict=True)):
        raise ValueError(f"volume {shape} is larger than the network's input {tuple(size)}")
    pads = [s - n for n, s in zip(shape, size, strict=True)]
    if not any(pads):
        return x
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")


def prepare_volume(volume_zyx: np.ndarray, spec: OrganSpec) -> torch.Tensor:
    """A canonical volume (z, y, x) at the spec's spacing → the normalised, padded (1, 1, *size) input."""
    arr = normalize_mr(volume_zyx, spec.per_volume)
    return pad_volume(torch.from_numpy(np.ascontiguousarray(arr))[None, None], spec.inference.size)


def volume_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shape: tuple[int, int, int]
) -> torch.Tensor:
    """Softmax probabilities (N + 1 classes, background first) of a prepared (1, 1, *size) input, cropped
    back to the volume's `shape` (z, y, x): (N + 1, z, y, x) float."""
    probs = torch.softmax(model(x).float(), dim=1)
    z, y, w = shape
    return probs[0, :, :z, :y, :w]
