"""The mirror images of an input through the network as one batch (services.preprocess.probabilities,
`batch_views_pixels`, what the organ server does for a cells tile) give the probabilities the four passes one
by one give, in every runtime; an input above the pixel bound still passes one by one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from services.preprocess import probabilities
from services.runtime import RuntimeUnavailable, build
from services.spec import load_organ_spec
from trainer.onnx_export import export_onnx


class Counting(torch.nn.Module):
    """A small fully convolutional net that is not mirror-symmetric, counting its calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 5, padding=2)
        )
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.fixture(scope="module")
def spec():
    return load_organ_spec("cells").with_inference("whole", tta="flips")  # the tile and 3 mirror images


def test_one_batch_of_mirror_images_is_the_four_passes(spec):
    model = Counting().eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        one_by_one = probabilities(model, x, spec)
        assert model.calls == 4
        batched = probabilities(model, x, spec, batch_views_pixels=4 * 48 * 64)
        assert model.calls == 5
        too_big = probabilities(model, x, spec, batch_views_pixels=4 * 48 * 64 - 1)
        assert model.calls == 9
    assert torch.allclose(batched, one_by_one, atol=1e-6)
    assert torch.equal(too_big, one_by_one)
    mirrored = probabilities(model, x.flip(-1), spec, batch_views_pixels=10**7)  # the views' mean is
    assert torch.allclose(mirrored.flip(-1), batched, atol=1e-6)  # mirror-symmetric, as it should be


def test_no_mirror_images_means_one_pass_either_way(spec):
    model = Counting().eval()
    plain = dataclasses.replace(spec, inference=dataclasses.replace(spec.inference, tta="none"))
    with torch.inference_mode():
        probabilities(model, torch.randn(1, 3, 32, 32), plain, batch_views_pixels=10**7)
    assert model.calls == 1


def test_a_half_turn_is_two_passes_and_its_mean_does_not_depend_on_the_turn(spec):
    half = spec.with_inference("whole", tta="rot180")
    model = Counting().eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        batched = probabilities(model, x, half, batch_views_pixels=2 * 48 * 64)
        assert model.calls == 1
        one_by_one = probabilities(model, x, half)
        assert model.calls == 3
        expected = (
            torch.sigmoid(model.net(x)) + torch.sigmoid(model.net(x.flip((-2, -1)))).flip((-2, -1))
        ) / 2
        turned = probabilities(model, x.flip((-2, -1)), half, batch_views_pixels=10**7)
    assert torch.allclose(batched, one_by_one, atol=1e-6) and torch.allclose(batched, expected, atol=1e-6)
    assert torch.allclose(turned.flip((-2, -1)), batched, atol=1e-6)
    assert not torch.allclose(batched, probabilities(model, x, spec), atol=1e-4)  # not the four views' mean


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "openvino-bf16"])
def test_every_runtime_takes_the_batch_of_mirror_images(spec, runtime, tmp_path):
    model = Counting().eval()
    scripted = torch.jit.script(model.net)
    scripted.save(str(tmp_path / "model.pt"))
    export_onnx(tmp_path / "model.pt", 3, tmp_path / "model.onnx")
    try:
        run = build(runtime, tmp_path, threads=1)
    except RuntimeUnavailable as exc:
        pytest.fail(f"{runtime}: {exc}")
    x = torch.randn(1, 3, 48, 48)
    with torch.inference_mode():
        reference = probabilities(scripted, x, spec)
        batched = probabilities(run, x, spec, batch_views_pixels=10**7)
    tolerance = 2e-2 if runtime == "openvino-bf16" else 1e-4  # bf16 keeps 8 bits of mantissa
    assert (batched - reference).abs().max() < tolerance


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_openvino_spreads_a_batch_over_one_stream_a_thread(tmp_path, n):
    scripted = torch.jit.script(Counting().eval().net)
    scripted.save(str(tmp_path / "model.pt"))
    export_onnx(tmp_path / "model.pt", 3, tmp_path / "model.onnx")
    run = build("openvino", tmp_path, threads=2)
    assert run.compiled.get_property("INFERENCE_NUM_THREADS") == 1  # one image: one thread
    x = torch.randn(n, 3, 40, 56)
    with torch.inference_mode():
        alone = run(x[-1:])
        assert run.queue is None
        together = run(x)
        reference = scripted(x)
    if n > 1:  # a batch: two streams of one thread each, side by side
        assert run.queue is not None and len(run.queue) == 2
    else:
        assert run.queue is None
    assert together.shape == (n, 1, 40, 56)
    assert (together - reference).abs().max() < 1e-4  # every image in its place
    assert (together[-1:] - alone).abs().max() < 1e-4
