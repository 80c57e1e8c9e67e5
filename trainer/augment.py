"""Batch augmentation on tensors (cheap on a CPU): random crop, geometry, blur, colour jitter, Gaussian noise.

For CT slices stored already windowed (8-bit PNG), contrast × brightness with the clamp to [0, 1] is a window
jitter: a narrower window saturates at both ends, a wider one flattens the grey levels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    crop: int | None = None  # random crop side (for organs trained on crops of large tiles)
    flips: bool = False  # histology has no orientation; CT anatomy has one (no flips)
    rot90: bool = False
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)  # zoom > 1 is a random crop resized back
    translate: float = 0.06
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.8, 1.25)
    per_channel_jitter: float = 0.0  # stain variation for H&E
    hed_jitter: float = 0.0  # stain variation for H&E in haematoxylin/eosin/DAB space (Tellez et al. 2018)
    noise_std: float = 0.03
    blur_sigma: float = 0.0  # Gaussian blur of σ ~ U(0, blur_sigma) pixels per image (scanner sharpness)
    # Elastic deformation (another patient's organ shape): a smooth displacement of up to `elastic`
    # half-widths (0.05 at 256²: ~6 px) per image, interpolated from an `elastic_grid`² lattice of points
    elastic: float = 0.0
    elastic_grid: int = 5


def random_crop(images: torch.Tensor, masks: torch.Tensor, size: int, gen: torch.Generator):
    n, _, h, w = images.shape
    ys = torch.randint(0, h - size + 1, (n,), generator=gen)
    xs = torch.randint(0, w - size + 1, (n,), generator=gen)
    img = torch.stack(
        [images[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys, xs, strict=True))]
    )
    msk = torch.stack(
        [masks[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys, xs, strict=True))]
    )
    return img, msk


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) as optical density per RGB channel,
# the matrix scikit-image's rgb2hed inverts.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def hed_jitter(images: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Scale each stain's optical density by U(1-σ, 1+σ) and shift it by U(-σ, σ), per image: the stain
    variation between labs and scanners, which a per-RGB-channel jitter only approximates."""
    n = images.shape[0]
    od = -torch.log(images.clamp(min=1e-3)).permute(0, 2, 3, 1)  # (N, H, W, RGB) optical density
    stains = od @ HED_FROM_RGB
    alpha = 1 + sigma * (2 * torch.rand(n, 1, 1, 3, generator=gen) - 1)
    beta = sigma * (2 * torch.rand(n, 1, 1, 3, generator=gen) - 1)
    od = (stains * alpha + beta) @ RGB_FROM_HED
    return torch.exp(-od).permute(0, 3, 1, 2).clamp(0, 1).contiguous()


def gaussian_blur(images: torch.Tensor, sigma_max: float, gen: torch.Generator) -> torch.Tensor:
    """Blur each image with its own σ ~ U(0, sigma_max) pixels (separable kernel, mirrored edges); σ near 0
    leaves an image as it was."""
    n, c, h, w = images.shape
    radius = max(1, math.ceil(3 * sigma_max))
    sigma = (torch.rand(n, generator=gen) * sigma_max).clamp(min=1e-3)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n·c, 2r+1)
    flat = images.reshape(1, n * c, h, w)
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c
    )
    return flat.reshape(n, c, h, w)


def elastic_field(
    n: int, size: tuple[int, int], amplitude: float, lattice: int, gen: torch.Generator
) -> torch.Tensor:
    """(n, H, W, 2) smooth displacements for F.grid_sample's normalised grid: per image, control points on
    a `lattice`² grid drawn from U(−1, 1), scaled by U(0, amplitude), interpolated bicubically."""
    points = (2 * torch.rand(n, 2, lattice, lattice, generator=gen) - 1) * amplitude
    points = points * torch.rand(n, 1, 1, 1, generator=gen)
    field = F.interpolate(points, size=tuple(size), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def augment(images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator):
    """images float (N, C, H, W) in [0, 1], masks float (N, 1, H, W) → augmented copies."""
    n = images.shape[0]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    if cfg.crop:
        images, masks = random_crop(images, masks, cfg.crop, gen)
    if cfg.flips:
        flip = torch.rand(n, generator=gen) < 0.5
        images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
        flip = torch.rand(n, generator=gen) < 0.5
        images[flip], masks[flip] = images[flip].flip(-2), masks[flip].flip(-2)
    if cfg.rot90:
        k = int(torch.randint(0, 4, (1,), generator=gen))
        images, masks = images.rot90(k, (-2, -1)), masks.rot90(k, (-2, -1))
    if cfg.rotate_deg or cfg.scale != (1.0, 1.0) or cfg.translate or cfg.elastic:
        angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
        zoom = uniform(*cfg.scale)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        tx, ty = uniform(-cfg.translate, cfg.translate), uniform(-cfg.translate, cfg.translate)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        if cfg.elastic:
            grid = grid + elastic_field(n, images.shape[-2:], cfg.elastic, cfg.elastic_grid, gen)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        masks = (
            F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5
        ).float()
    if cfg.blur_sigma:
        images = gaussian_blur(images, cfg.blur_sigma, gen)
    if cfg.hed_jitter:
        images = hed_jitter(images, cfg.hed_jitter, gen)
    images = images * uniform(*cfg.contrast, 1, 1, 1) + uniform(-cfg.brightness, cfg.brightness, 1, 1, 1)
    if cfg.per_channel_jitter:
        c = images.shape[1]
        images = images * (1 + uniform(-cfg.per_channel_jitter, cfg.per_channel_jitter, c, 1, 1))
    images = images.clamp(0, 1) ** uniform(*cfg.gamma, 1, 1, 1)
    if cfg.noise_std:
        images = images + torch.randn(images.shape, generator=gen) * uniform(0, cfg.noise_std, 1, 1, 1)
    return images.clamp(0, 1), masks
