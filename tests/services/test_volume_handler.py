"""VolumeSegmentationHandler (3-D organs, e.g. hippocampus) with a real TorchServe context and no server: one
whole volume per request → softmax over background + labels → uint8 (N + 1, z, y, x); bad input refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn
from ts.utils.util import PredictionException

from services.hippocampus.handler import HippocampusHandler
from services.imaging import decode_npy, encode_npy
from services.preprocess import normalize_mr, pad_volume
from services.spec import load_organ_spec
from tests.services.test_handler import make_context, make_model_dir, run

SPEC = load_organ_spec("hippocampus")


class IntensityClasses(nn.Module):
    """Deterministic 3-class network: background logit −x, label logits +x and 2x (a bright voxel is
    label 2, a dark one background), so the answer can be computed by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x, 2 * x], dim=1)


class OneChannel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture
def handler(tmp_path):
    ctx = make_context(make_model_dir(tmp_path, "hippocampus", IntensityClasses(), SPEC), "hippocampus")
    h = HippocampusHandler()
    h.initialize(ctx)
    return h, ctx


def test_a_volume_comes_back_as_class_probabilities_on_its_own_grid(handler):
    h, ctx = handler
    volume = np.random.default_rng(0).normal(100, 30, (35, 50, 33)).astype(np.float32)
    (body,) = run(h, ctx, [encode_npy(volume)])
    probs = decode_npy(body)
    assert probs.dtype == np.uint8 and probs.shape == (3, 35, 50, 33)
    z = torch.from_numpy(normalize_mr(volume, "zscore"))[None]
    expected = torch.softmax(torch.cat([-z, z, 2 * z]), dim=0)
    assert np.abs(probs.astype(int) - np.rint(expected.numpy() * 255)).max() <= 1
    assert np.abs(probs.astype(int).sum(axis=0) - 255).max() <= 2  # they sum to one


def test_int16_volumes_are_read_as_intensities_too(handler):
    h, ctx = handler
    volume = np.random.default_rng(1).integers(0, 900, (20, 30, 20)).astype(np.int16)
    as_float = decode_npy(run(h, ctx, [encode_npy(volume.astype(np.float32))])[0])
    assert np.array_equal(decode_npy(run(h, ctx, [encode_npy(volume)])[0]), as_float)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 40, 40), np.float32), "single image, not a volume"),
        (np.zeros((4, 20, 20, 20), np.float32), "not a volume: expected (z, y, x)"),
        (np.zeros((49, 40, 40), np.float32), "larger than the network's input (48, 64, 48)"),
        (np.full((10, 10, 10), np.nan, np.float32), "non-finite"),
        (np.zeros((10, 10, 10), np.float64), "dtype float64"),
    ],
)
def test_what_is_not_one_volume_that_fits_is_refused_naming_it(handler, array, message):
    h, ctx = handler
    with pytest.raises(PredictionException, match=re.escape(message)) as caught:
        run(h, ctx, [encode_npy(array)])
    assert caught.value.error_code == 400


def test_a_2d_image_is_refused_naming_what_to_send(handler):
    from tests.data import LIVER_SLICE

    h, ctx = handler
    with pytest.raises(PredictionException, match="is 3-D: send one whole volume") as caught:
        run(h, ctx, [LIVER_SLICE.read_bytes()])
    assert caught.value.error_code == 400


def test_in_a_batch_only_the_bad_volume_fails(handler):
    h, ctx = handler
    good = np.random.default_rng(2).normal(size=(12, 14, 16)).astype(np.float32)
    answers = run(h, ctx, [encode_npy(good), encode_npy(np.zeros((1, 4, 4), np.float32))])
    assert decode_npy(answers[0]).shape == (3, 12, 14, 16)
    assert "single image" in json.loads(answers[1])["error"]["message"]


def test_a_network_answering_other_classes_is_a_server_error(tmp_path):
    ctx = make_context(make_model_dir(tmp_path, "hippocampus", OneChannel(), SPEC), "hippocampus")
    h = HippocampusHandler()
    h.initialize(ctx)
    with pytest.raises(PredictionException, match="expected logits") as caught:
        run(h, ctx, [encode_npy(np.zeros((8, 8, 8), np.float32))])
    assert caught.value.error_code == 500


def test_padding_repeats_the_edges_and_crops_back():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 1, 2, 3, 4)
    padded = pad_volume(x, (8, 8, 8))
    assert padded.shape == (1, 1, 8, 8, 8) and torch.equal(padded[..., :2, :3, :4], x)
    assert torch.equal(padded[0, 0, 7, 2, 3], x[0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="larger than the network's input"):
        pad_volume(x, (1, 8, 8))


def test_zscore_is_per_volume_and_a_constant_volume_is_zeros():
    v = np.random.default_rng(3).normal(400, 80, (10, 10, 10))
    z = normalize_mr(v, "zscore")
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    assert np.array_equal(normalize_mr(np.full((4, 4, 4), 7.0), "zscore"), np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown per-volume normalisation"):
        normalize_mr(v, "minmax")
