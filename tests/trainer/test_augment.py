"""Augmentation: shapes and ranges kept, masks untouched by colour, stain jitter acting in H&E space, blur
spreading each image by its own σ, elastic deformation moving an organ's outline smoothly and boundedly."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data import CELLS_TRAIN
from trainer.augment import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    AugmentConfig,
    augment,
    elastic_field,
    gaussian_blur,
    hed_jitter,
)


def tile(size: int = 128) -> torch.Tensor:
    path = sorted((CELLS_TRAIN / "images").glob("*.png"))[0]
    rgb = np.array(Image.open(path).convert("RGB"))[:size, :size]
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def test_the_stain_matrices_invert_each_other():
    torch.testing.assert_close(RGB_FROM_HED @ HED_FROM_RGB, torch.eye(3), atol=1e-5, rtol=0)


def test_hed_jitter_of_zero_changes_nothing_and_stays_in_range():
    x = tile()
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(hed_jitter(x, 0.0, gen), x, atol=2e-3, rtol=0)  # 1/255 = 4e-3
    y = hed_jitter(x.repeat(4, 1, 1, 1), 0.2, gen)
    assert y.shape == (4, 3, 128, 128) and 0 <= float(y.min()) and float(y.max()) <= 1


def test_hed_jitter_scales_each_stain_not_each_rgb_channel():
    """In stain space the change of a jittered tile is a per-stain scale and shift, the same for every
    pixel (up to the clamping of near-white pixels): fit it back per stain."""
    x = tile()
    y = hed_jitter(x, 0.1, torch.Generator().manual_seed(3))

    def stains(img):
        return (-torch.log(img.clamp(min=1e-3))).permute(0, 2, 3, 1).reshape(-1, 3) @ HED_FROM_RGB

    before, after = stains(x), stains(y)
    keep = (y > 1e-3).all(1).flatten() & (y < 1).all(1).flatten()  # pixels the clamp did not touch
    for s in range(2):  # haematoxylin, eosin
        a = before[keep, s]
        design = torch.stack([a, torch.ones_like(a)], 1)
        alpha, beta = torch.linalg.lstsq(design, after[keep, s, None]).solution.flatten()
        residual = after[keep, s] - (alpha * a + beta)
        assert 0.9 <= float(alpha) <= 1.1 and abs(float(beta)) <= 0.1 + 1e-4
        assert float(residual.abs().max()) < 1e-3
    assert not torch.allclose(x, y, atol=1e-3)


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(crop=64, flips=True, rot90=True, hed_jitter=0.05),
        AugmentConfig(),
        AugmentConfig(scale=(0.75, 1.3), contrast=(0.75, 1.3), noise_std=0.05, blur_sigma=1.0),
        AugmentConfig(elastic=0.08),
    ],
)
def test_augment_keeps_shapes_ranges_and_binary_masks(cfg):
    x = tile().repeat(3, 1, 1, 1)
    masks = (x[:, :1] < 0.5).float()
    img, msk = augment(x.clone(), masks.clone(), cfg, torch.Generator().manual_seed(1))
    side = cfg.crop or 128
    assert img.shape == (3, 3, side, side) and msk.shape == (3, 1, side, side)
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    assert set(msk.unique().tolist()) <= {0.0, 1.0}


def test_blur_spreads_a_point_by_each_images_own_sigma_and_keeps_flat_images_flat():
    point = torch.zeros(4, 1, 33, 33)
    point[:, :, 16, 16] = 1.0
    sigmas = torch.rand(4, generator=torch.Generator().manual_seed(5)) * 1.5  # what gaussian_blur draws
    out = gaussian_blur(point, 1.5, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(4))
    offsets = (torch.arange(33) - 16.0) ** 2
    variance = (out[:, 0].sum(1) * offsets).sum(1)  # along x
    wide = sigmas >= 0.6  # a sampled Gaussian narrower than a pixel has less than σ² of variance
    assert wide.any() and not wide.all()
    torch.testing.assert_close(variance[wide], sigmas[wide] ** 2, atol=0.02, rtol=0.05)
    assert (variance[~wide] <= sigmas[~wide] ** 2 + 1e-4).all()
    assert len({round(float(v), 3) for v in variance}) == 4  # one σ per image
    flat = torch.full((2, 3, 16, 16), 0.4)
    torch.testing.assert_close(gaussian_blur(flat, 2.0, torch.Generator().manual_seed(0)), flat)


def test_elastic_fields_are_smooth_bounded_and_one_per_image():
    field = elastic_field(6, (96, 80), 0.1, 5, torch.Generator().manual_seed(2))
    assert field.shape == (6, 96, 80, 2)
    assert float(field.abs().max()) <= 0.1 * 1.3  # bicubic overshoots its control points a little
    step = max(
        float((field[:, 1:] - field[:, :-1]).abs().max()),
        float((field[:, :, 1:] - field[:, :, :-1]).abs().max()),
    )
    assert step < 0.1 * 2 / 5  # neighbouring pixels move alike: no tearing
    spans = [float(f.abs().max()) for f in field]
    assert len({round(s, 4) for s in spans}) == 6 and max(spans) > 0.03  # each image its own strength


def test_elastic_deforms_an_outline_by_a_few_pixels_and_leaves_the_rest():
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    disc = (((yy - 64) ** 2 + (xx - 60) ** 2) < 35**2).float()[None, None].repeat(4, 1, 1, 1)
    image = disc * 0.6 + 0.2
    still = {"rotate_deg": 0, "scale": (1.0, 1.0), "translate": 0, "brightness": 0, "contrast": (1, 1)}
    cfg = AugmentConfig(**still, gamma=(1, 1), noise_std=0, elastic=0.06)
    img, msk = augment(image.clone(), disc.clone(), cfg, torch.Generator().manual_seed(4))
    changed = msk != disc
    assert changed.any()  # the outline moved
    dice = 2 * (msk * disc).sum() / (msk.sum() + disc.sum())
    assert 0.85 < float(dice) < 0.999
    # only near the outline: 0.06 half-widths of 128 px is ~4 px (bicubic overshoot allowed)
    radius = ((yy - 64) ** 2 + (xx - 60) ** 2).sqrt()
    assert float((radius - 35).abs()[changed[0, 0]].max()) <= 6
    inside = (img - (msk * 0.6 + 0.2)).abs() > 0.05  # the image moved with its mask
    assert float(inside.float().mean()) < 0.02
    again = augment(image.clone(), disc.clone(), cfg, torch.Generator().manual_seed(4))
    assert torch.equal(again[1], msk)
