"""SegmentationHandler with a fake TorchServe context (no server): decode → batch → infer → PNG, errors."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from ts.context import Context, RequestProcessor
from ts.metrics.metrics_store import MetricsStore
from ts.utils.util import PredictionException

from services import handler_base
from services.cells.handler import CellsHandler
from services.imaging import decode_image
from services.liver.handler import LiverHandler
from services.preprocess import prepare, restore
from services.spec import OrganSpec, load_organ_spec
from tests.data import LIVER_SLICE

RNG = np.random.default_rng(1)


class ChannelMean(nn.Module):
    """Deterministic stand-in network: logits = mean over channels of the normalised input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


class WrongShape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2].mean(dim=1, keepdim=True)


class CountingModel:
    """Wraps the loaded TorchScript module to count forward passes."""

    def __init__(self, model):
        self.model, self.calls, self.shapes = model, 0, []

    def __call__(self, x):
        self.calls += 1
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def make_model_dir(tmp_path: Path, organ: str, net: nn.Module, spec: OrganSpec | None = None) -> Path:
    model_dir = tmp_path / organ
    model_dir.mkdir()
    torch.jit.script(net).save(str(model_dir / "model.pt"))
    (model_dir / "spec.yaml").write_text(yaml.safe_dump((spec or load_organ_spec(organ)).to_dict()))
    return model_dir


def make_context(model_dir: Path, organ: str, handler_settings: dict | None = None) -> Context:
    """A real ts.context.Context as TorchServe's worker builds it, without a server."""
    manifest = {
        "model": {"modelName": organ, "modelVersion": "1", "serializedFile": "model.pt", "handler": "h.py"}
    }
    settings = {"torch_threads": 1, "warmup": False, **(handler_settings or {})}
    ctx = Context(organ, str(model_dir), manifest, 4, None, "0.12.0", model_yaml_config={"handler": settings})
    ctx.metrics = MetricsStore(uuid.uuid4(), organ)
    return ctx


def run(handler, ctx: Context, bodies: list) -> list[bytes]:
    """What ts.service.Service.predict does per batch: request processors, then handle()."""
    rows = [b if isinstance(b, dict) else {"data": b} for b in bodies]
    ctx.request_processor = [RequestProcessor({}) for _ in rows]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(rows))}
    return handler.handle(rows, ctx)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def expected_probability_png(data: bytes, organ: str) -> np.ndarray:
    spec = load_organ_spec(organ)
    x, how = prepare(decode_image(data, window=spec.window).array, spec)
    prob = restore(torch.sigmoid(x.mean(dim=1, keepdim=True)), how)
    return (prob * 255).round().to(torch.uint8).numpy()


def decode_png(body: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(body))
    assert im.format == "PNG" and im.mode == "L"
    return np.asarray(im)


HANDLERS = {"liver": LiverHandler, "cells": CellsHandler}


def initialized(tmp_path: Path, organ: str, net: nn.Module, spec: OrganSpec | None = None, config=None):
    """The organ's handler initialised on a model dir holding `net` (and `spec`), with its fake context."""
    ctx = make_context(make_model_dir(tmp_path, organ, net, spec), organ, config)
    handler = HANDLERS[organ]()
    handler.initialize(ctx)
    return handler, ctx


@pytest.fixture
def liver(tmp_path):
    return initialized(tmp_path, "liver", ChannelMean())


@pytest.fixture
def cells(tmp_path):
    return initialized(tmp_path, "cells", ChannelMean())


def test_initialize_reads_spec_and_threads(liver):
    handler, _ = liver
    assert handler.spec.name == "liver" and handler.spec.inference.size == (256, 256)
    assert torch.get_num_threads() == 1
    assert isinstance(handler.model, torch.jit.ScriptModule)


def test_initialize_without_spec_fails_clearly(tmp_path):
    model_dir = make_model_dir(tmp_path, "liver", ChannelMean())
    (model_dir / "spec.yaml").unlink()
    with pytest.raises(RuntimeError, match="organ spec"):
        LiverHandler().initialize(make_context(model_dir, "liver"))


def test_real_liver_slice_gives_probability_png_at_input_size(liver):
    if not LIVER_SLICE.exists():
        pytest.skip(f"{LIVER_SLICE} missing (../shared/data)")
    handler, ctx = liver
    data = LIVER_SLICE.read_bytes()
    [body] = run(handler, ctx, [data])
    out = decode_png(body)
    assert out.shape == (512, 512)
    np.testing.assert_allclose(out.astype(int), expected_probability_png(data, "liver").astype(int), atol=1)
    assert ctx.get_response_content_type(0) == "image/png"


def test_same_shape_batch_is_one_forward_pass_in_request_order(liver):
    handler, ctx = liver
    handler.model = counting = CountingModel(handler.model)
    images = [png(RNG.integers(0, 256, size=(64 + 16 * i, 80), dtype=np.uint8)) for i in range(3)]
    outputs = run(handler, ctx, images)
    assert counting.calls == 1 and counting.shapes == [(3, 1, 256, 256)]
    for data, body in zip(images, outputs, strict=True):
        np.testing.assert_allclose(
            decode_png(body).astype(int), expected_probability_png(data, "liver"), atol=1
        )


def test_tiles_no_larger_than_a_window_go_whole_grouped_by_shape_with_padding_cropped(cells):
    handler, ctx = cells
    handler.model = counting = CountingModel(handler.model)
    sizes = [(50, 70), (50, 70), (33, 41)]
    images = [png(RNG.integers(0, 256, size=(*s, 3), dtype=np.uint8)) for s in sizes]
    outputs = run(handler, ctx, images)
    # two distinct padded shapes, each seen as itself and its three mirror images (cells: tta flips), all
    # of a shape's images and their mirror images in one forward pass (small enough: BATCH_VIEWS_PIXELS)
    assert handler.spec.inference.tta == "flips"
    assert sorted(counting.shapes) == [(4, 3, 48, 48), (8, 3, 64, 80)]
    for (h, w), data, body in zip(sizes, images, outputs, strict=True):
        out = decode_png(body)
        assert out.shape == (h, w)
        np.testing.assert_allclose(out.astype(int), expected_probability_png(data, "cells"), atol=1)


def test_sliding_mode_runs_larger_tiles_through_overlapping_windows(tmp_path):
    spec = load_organ_spec("cells").with_inference("sliding", 256, 0.25, tta="none")
    handler, ctx = initialized(tmp_path, "cells", ChannelMean(), spec)
    handler.model = counting = CountingModel(handler.model)
    data = png(RNG.integers(0, 256, size=(300, 520, 3), dtype=np.uint8))
    small = png(RNG.integers(0, 256, size=(200, 230, 3), dtype=np.uint8))
    body, small_body = run(handler, ctx, [data, small])
    # padded to 304×528; windows every 192 px (overlap 0.25): 2 rows × 3 columns, four per forward pass;
    # a tile no larger than a window goes through in one pass
    assert counting.shapes == [(4, 3, 256, 256), (2, 3, 256, 256), (1, 3, 208, 240)]
    # the stand-in network is pointwise, so the blended windows must give the whole-image map
    for image, out, size in ((data, body, (300, 520)), (small, small_body, (200, 230))):
        out = decode_png(out)
        assert out.shape == size
        np.testing.assert_allclose(out.astype(int), expected_probability_png(image, "cells"), atol=1)


class LeftNeighbour(nn.Module):
    """A network with an orientation: each pixel's logit is its left neighbour's channel mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        return torch.cat([mean[..., :1], mean[..., :-1]], dim=-1)


@pytest.mark.parametrize("bound", [4 * 48 * 64, 4 * 48 * 64 - 1])
def test_mirror_images_are_averaged_when_the_spec_asks(tmp_path, monkeypatch, bound):
    monkeypatch.setattr(handler_base, "BATCH_VIEWS_PIXELS", bound)
    spec = load_organ_spec("cells").with_inference("whole", tta="flips")
    handler, ctx = initialized(tmp_path, "cells", LeftNeighbour(), spec)
    handler.model = counting = CountingModel(handler.model)
    data = png(RNG.integers(0, 256, size=(40, 56, 3), dtype=np.uint8))
    (body,) = run(handler, ctx, [data])
    # the image and three mirror images: one batch while they fit the bound, else one pass each
    assert counting.shapes == ([(4, 3, 48, 64)] if bound >= 4 * 48 * 64 else [(1, 3, 48, 64)] * 4)
    x, how = prepare(decode_image(data).array, spec)
    net = LeftNeighbour()
    views = [net(x), net(x.flip(-1)).flip(-1), net(x.flip(-2)).flip(-2), net(x.flip((-2, -1))).flip((-2, -1))]
    expected = restore(torch.stack([torch.sigmoid(v) for v in views]).mean(0), how)
    np.testing.assert_allclose(
        decode_png(body).astype(int), (expected * 255).round().numpy().astype(int), atol=1
    )
    single = restore(torch.sigmoid(views[0]), how)
    assert (expected - single).abs().max() > 0.02  # the mirrored views do change the answer


def test_single_bad_image_raises_400_with_the_reason(liver):
    handler, ctx = liver
    with pytest.raises(PredictionException) as info:
        run(handler, ctx, [b"not an image"])
    assert info.value.error_code == 400
    assert "unrecognised image format" in info.value.message and "PNG, JPEG, TIFF" in info.value.message


def test_bad_image_in_a_batch_fails_only_itself(liver):
    handler, ctx = liver
    good = png(RNG.integers(0, 256, size=(40, 40), dtype=np.uint8))
    tiny = png(np.zeros((8, 8), dtype=np.uint8))
    outputs = run(handler, ctx, [good, tiny, good])
    assert decode_png(outputs[0]).shape == (40, 40) and decode_png(outputs[2]).shape == (40, 40)
    error = json.loads(outputs[1])["error"]
    assert error["code"] == "invalid_input" and "at least 16 pixels" in error["message"]
    assert ctx.get_response_status(1)[0] == 400
    assert ctx.get_response_content_type(1) == "application/json"
    assert ctx.get_response_status(0)[0] == 200 and ctx.get_response_status(2)[0] == 200


def test_batch_of_differently_bad_images_answers_each(liver):
    handler, ctx = liver
    outputs = run(handler, ctx, [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
    messages = [json.loads(o)["error"]["message"] for o in outputs]
    assert "empty upload" in messages[0] and "corrupt or truncated PNG" in messages[1]


@pytest.mark.parametrize("key", ["data", "body", "file"])
def test_image_under_any_input_name(liver, key):
    handler, ctx = liver
    [body] = run(handler, ctx, [{key: bytearray(png(np.zeros((20, 30), dtype=np.uint8)))}])
    assert decode_png(body).shape == (20, 30)


def test_text_input_is_refused(liver):
    handler, ctx = liver
    with pytest.raises(PredictionException, match="not image bytes"):
        run(handler, ctx, [{"data": "a string, e.g. JSON"}])


def test_dicom_input_uses_the_organ_window(liver):
    from tests.services.test_imaging import dicom_bytes

    handler, ctx = liver
    hu = np.full((64, 48), 60, dtype=np.int16)  # the window centre: 0.5 after windowing
    [body] = run(handler, ctx, [dicom_bytes(hu)])
    out = decode_png(body)
    assert out.shape == (64, 48)
    assert np.all(out == round(255 / (1 + np.exp(-0.5))))  # sigmoid(0.5) with mean 0 / std 1


def test_wrong_model_output_shape_is_a_server_error(tmp_path):
    handler, ctx = initialized(tmp_path, "liver", WrongShape())
    with pytest.raises(PredictionException) as info:
        run(handler, ctx, [png(np.zeros((32, 32), dtype=np.uint8))])
    assert info.value.error_code == 500 and "expected logits" in info.value.message


def test_image_pixel_cap_from_model_config(tmp_path):
    handler, ctx = initialized(tmp_path, "cells", ChannelMean(), config={"max_image_pixels": 1000})
    with pytest.raises(PredictionException, match="megapixel limit"):
        run(handler, ctx, [png(np.zeros((40, 40, 3), dtype=np.uint8))])


@pytest.mark.parametrize("shape", [(40, 50, 3), (17, 19, 3), (16, 16, 2), (16, 16, 4)])
def test_grey_conversion_is_exactly_the_channel_mean(shape):
    """Serving and training share to_channels: its fast path must give numpy's mean bit for bit."""
    from services.preprocess import to_channels

    rgb = np.random.default_rng(1).random(shape, dtype=np.float32)
    colour = rgb[:, :, :3] if shape[2] != 2 else rgb[:, :, :1]
    np.testing.assert_array_equal(to_channels(rgb, 1), colour.mean(axis=2, keepdims=True))
