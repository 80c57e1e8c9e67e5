"""services.runtime: the spec's runtime with the worker's threads, TorchScript with a logged reason otherwise;
and the handler serving through it."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn

from services.liver.handler import LiverHandler
from services.runtime import STATIC_SHAPES, RuntimeUnavailable, build, load_runtime
from services.spec import OrganSpec, load_organ_spec
from tests.data import LIVER_SLICE
from tests.services.test_handler import decode_png, make_context, make_model_dir, run
from trainer.onnx_export import export_onnx


class SmallNet(nn.Module):
    """Convolutions (one dilated, one strided), GroupNorm, a transposed-convolution upsampling and a skip
    concatenation: the operations of the ERU-Net family, enough graph for an exporter to get wrong."""

    def __init__(self, channels: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(channels, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2, stride=2)
        self.norm = nn.GroupNorm(4, 8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.c = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = torch.relu(self.norm(self.b(a)))
        up = self.up(b)
        return self.c(torch.cat([a, up], dim=1))


@pytest.fixture
def model_dir(tmp_path):
    """model.pt and model.onnx of SmallNet, liver's spec asking for OpenVINO."""
    spec = dataclasses.replace(load_organ_spec("liver"), runtime="openvino")
    path = make_model_dir(tmp_path, "liver", SmallNet(), spec)
    export_onnx(path / "model.pt", 1, path / "model.onnx")
    return path


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_runtimes_match_torchscript_at_any_batch_and_size(model_dir, name):
    scripted = torch.jit.load(str(model_dir / "model.pt"))
    model = build(name, model_dir, threads=1)
    gen = torch.Generator().manual_seed(1)
    for shape in [(1, 1, 64, 64), (3, 1, 96, 128), (2, 1, 256, 256)]:  # none is the 64² export sample only
        x = torch.randn(*shape, generator=gen)
        out = model(x)
        assert out.dtype == torch.float32 and tuple(out.shape) == (shape[0], 1, *shape[2:])
        assert torch.allclose(out, scripted(x), atol=1e-4, rtol=0)


def test_runtimes_take_the_worker_threads(model_dir):
    ort_model = build("onnxruntime", model_dir, threads=2)
    assert ort_model.session.get_session_options().intra_op_num_threads == 2
    ov_model = build("openvino", model_dir, threads=2)
    assert int(ov_model.compiled.get_property("INFERENCE_NUM_THREADS")) == 1  # one image, one thread
    ov_model(torch.zeros(2, 1, 64, 64))  # a batch: the worker's threads, one stream each
    assert len(ov_model.queue) == 2
    precision = str(ov_model.compiled.get_property("INFERENCE_PRECISION_HINT"))  # "<Type: 'float32'>"
    assert "float32" in precision  # "openvino" is f32 whatever the CPU offers
    bf16 = build("openvino-bf16", model_dir, threads=2)  # bf16 where the CPU has it, else f32
    assert str(bf16.compiled.get_property("INFERENCE_PRECISION_HINT")) in (precision, "<Type: 'bfloat16'>")


def test_openvino_compiles_for_each_shape_it_runs_and_keeps_the_last_few(model_dir):
    scripted = torch.jit.load(str(model_dir / "model.pt"))
    model = build("openvino", model_dir, threads=1)
    gen = torch.Generator().manual_seed(2)
    shapes = [(1, 1, 64, 64), (2, 1, 64, 64), (1, 1, 96, 128), (1, 1, 32, 48), (1, 1, 64, 64)]
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        assert torch.allclose(model(x), scripted(x), atol=1e-4, rtol=0)
    kept = list(model._by_shape)
    # the first shape, dropped, came back
    assert len(kept) == STATIC_SHAPES and kept[-1] == ((1, 1, 64, 64), 1)
    for (shape, _streams), request in model._by_shape.items():
        compiled = request.get_compiled_model().input(0).get_partial_shape()
        assert compiled.is_static and tuple(compiled.to_shape()) == shape


def test_missing_onnx_falls_back_to_torchscript_with_the_reason(model_dir, caplog):
    (model_dir / "model.onnx").unlink()
    with caplog.at_level(logging.WARNING, logger="services.runtime"):
        loaded = load_runtime("openvino", model_dir, 1)
    assert loaded.name == "torchscript" and loaded.requested == "openvino"
    assert "model.onnx missing" in loaded.fallback_reason
    assert "falling back to TorchScript" in caplog.text and "model.onnx missing" in caplog.text
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(loaded.model(x), torch.jit.load(str(model_dir / "model.pt"))(x))


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_a_broken_onnx_file_falls_back(model_dir, name):
    (model_dir / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeUnavailable, match=name):
        build(name, model_dir, 1)
    loaded = load_runtime(name, model_dir, 1)
    assert loaded.name == "torchscript" and name in loaded.fallback_reason


def test_torchscript_needs_no_onnx(model_dir):
    loaded = load_runtime("torchscript", model_dir, 1)
    assert loaded.name == "torchscript" and loaded.fallback_reason is None


def test_spec_refuses_an_unknown_runtime():
    raw = load_organ_spec("liver").to_dict()
    with pytest.raises(ValueError, match="runtime must be one of"):
        OrganSpec.from_dict({**raw, "runtime": "tensorrt"})
    assert OrganSpec.from_dict({k: v for k, v in raw.items() if k != "runtime"}).runtime == "torchscript"
    assert OrganSpec.from_dict({**raw, "runtime": "openvino"}).to_dict()["runtime"] == "openvino"


def test_handler_serves_through_the_spec_runtime(model_dir, tmp_path, caplog):
    """The same request through OpenVINO and through TorchScript (no model.onnx) gives the same PNG."""
    body = LIVER_SLICE.read_bytes()
    handler = LiverHandler()
    ctx = make_context(model_dir, "liver", {"torch_threads": 1, "warmup": True})
    handler.initialize(ctx)
    assert handler.runtime_name == "openvino" and handler.runtime is not None
    served = decode_png(run(handler, ctx, [body])[0])

    fallback_dir = tmp_path / "fallback"
    fallback_dir.mkdir()
    for name in ("model.pt", "spec.yaml"):
        (fallback_dir / name).write_bytes((model_dir / name).read_bytes())
    fallback = LiverHandler()
    ctx2 = make_context(fallback_dir, "liver")
    with caplog.at_level(logging.WARNING, logger="services.runtime"):
        fallback.initialize(ctx2)
    assert fallback.runtime_name == "torchscript" and "model.onnx missing" in caplog.text
    reference = decode_png(run(fallback, ctx2, [body])[0])
    assert served.shape == reference.shape
    assert np.abs(served.astype(int) - reference.astype(int)).max() <= 1  # 8-bit rounding of equal logits


def test_a_warm_up_at_the_organs_image_size_compiles_what_its_first_image_runs(tmp_path):
    """model-config `handler.warmup_image`: a whole-tile organ served with its half turn (as cells) warms
    up at the size its images come in, so its first image runs networks already compiled; the default
    warm-up (one pass at 256²) compiles another shape."""
    liver = load_organ_spec("liver")
    whole = dataclasses.replace(liver.inference, mode="whole", size=None, tta="rot180")
    spec = dataclasses.replace(liver, runtime="openvino", inference=whole)
    path = make_model_dir(tmp_path, "liver", SmallNet(), spec)
    export_onnx(path / "model.pt", 1, path / "model.onnx")
    body = LIVER_SLICE.read_bytes()  # 512×512
    compiled = {}
    for image in ([512, 512], None):
        handler = LiverHandler()
        context = make_context(path, "liver", {"torch_threads": 1, "warmup": True, "warmup_image": image})
        handler.initialize(context)
        before = list(handler.runtime._by_shape)
        run(handler, context, [body])
        compiled[str(image)] = before, list(handler.runtime._by_shape)
    before, after = compiled["[512, 512]"]
    assert before == after == [((2, 1, 512, 512), 1)]  # the slice and its half turn, one batch
    before, after = compiled["None"]
    assert before == [((1, 1, 256, 256), 1)] and after == [*before, ((2, 1, 512, 512), 1)]


@pytest.mark.parametrize(
    ("settings", "streams"), [({"torch_threads": 1}, 1), ({"torch_threads": 1, "runtime_threads": 2}, 2)]
)
def test_the_runtime_takes_its_own_threads_where_the_model_config_gives_them(model_dir, settings, streams):
    handler = LiverHandler()
    handler.initialize(make_context(model_dir, "liver", {**settings, "warmup": False}))
    assert handler.runtime_name == "openvino" and handler.runtime.streams == streams
    assert torch.get_num_threads() == 1  # torch's own work keeps torch_threads
