"""One contract every architecture passes: forward, backward, several input sizes, save/load, TorchScript
and ONNX export parity. 2-D networks on images (B, C, H, W); 3-D ones on volumes (B, C, D, H, W), with
background + two labels out (the hippocampus's softmax)."""

import io

import numpy as np
import pytest
import torch

from services.networks import MODELS, create_model, model_dims
from services.networks.eg_module import GEOMETRY_3D, EGModule, branch_geometry
from trainer.onnx_export import export_onnx

SMALL = {
    "unet": (6, 12),
    "unet-res": (6, 12),
    "unet-eg": (6, 12),
    "erunet": (6, 12, 24),
    "erunet-cells": (6, 12, 24),
    "eru_net_3d": (6, 12, 24),
    "unet_3d": (4, 8, 16),
}
# per dimensionality: (forward/backward sizes, the traced size, sizes the traced output must match at)
SIZES = {
    2: ([(32, 32), (48, 64), (96, 80)], (32, 32), [(32, 32), (64, 48)]),
    3: ([(16, 16, 16), (24, 32, 16), (8, 20, 12)], (16, 16, 16), [(16, 16, 16), (24, 12, 20)]),
}
OUT = {2: 1, 3: 3}  # 3-D: background + two labels


@pytest.fixture(params=sorted(MODELS))
def arch(request):
    return request.param


def small_model(arch, in_channels=1):
    torch.manual_seed(0)
    out = OUT[model_dims(arch)]
    return create_model(arch, in_channels=in_channels, out_channels=out, widths=SMALL[arch]).eval()


def test_every_registered_model_has_a_small_config():
    assert set(SMALL) == set(MODELS)


def test_the_3d_members_are_registered_as_agreed():
    assert model_dims("eru_net_3d") == model_dims("unet_3d") == 3
    assert model_dims("erunet") == 2
    model = create_model("eru_net_3d", out_channels=3)
    assert len(model.encoders) == 4  # four levels: 40×56×40 → 5×7×5 at the bottom
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert all(isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d) for m in convs)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_forward_keeps_size_and_backward_reaches_every_parameter(arch, case):
    size = SIZES[model_dims(arch)][0][case]
    model = small_model(arch, in_channels=3).train()
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert y.shape == (2, OUT[model_dims(arch)], *size)
    y.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_save_load_round_trip(arch):
    model = small_model(arch)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    dims = model_dims(arch)
    other = create_model(arch, in_channels=1, out_channels=OUT[dims], widths=SMALL[arch]).eval()
    other.load_state_dict(torch.load(buf))
    x = torch.randn(1, 1, *SIZES[dims][1])
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_torchscript_export_gives_the_same_output_at_other_sizes(arch, tmp_path):
    model = small_model(arch)
    _, traced_size, others = SIZES[model_dims(arch)]
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 1, *traced_size))
    traced.save(str(tmp_path / "m.ts"))
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    for size in others:
        x = torch.randn(1, 1, *size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_like_torchscript_at_another_batch_and_size(arch, tmp_path):
    import onnxruntime

    model = small_model(arch)
    _, traced_size, others = SIZES[model_dims(arch)]
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 1, *traced_size))
    # export_onnx itself refuses an export that differs from TorchScript at another batch and size
    path = export_onnx(traced, 1, tmp_path / "m.onnx", size=traced_size)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, *others[-1])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-3, atol=1e-3)


def test_input_size_not_a_multiple_of_the_stride_fails_with_the_fix():
    model = small_model("erunet")
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.randn(1, 1, 30, 32))
    volume_model = create_model("eru_net_3d", out_channels=3)
    with pytest.raises(ValueError, match=r"35×48×40 is not a multiple of 8: pad your volumes"):
        volume_model(torch.randn(1, 1, 35, 48, 40))


def test_3d_eg_module_branches_are_dilated_3d_convolutions():
    eg = EGModule(5, 12, branches=3, dims=3)
    assert isinstance(eg.reduce[0], torch.nn.Conv3d) and eg.reduce[0].kernel_size == (1, 1, 1)
    assert eg.reduce[0].out_channels == 4  # d = N / K
    geometry = [(b[0].kernel_size[0], b[0].dilation[0]) for b in eg.branches]
    assert geometry == list(GEOMETRY_3D) == [(1, 1), (3, 2), (3, 4)]
    assert eg(torch.randn(1, 5, 12, 16, 12)).shape == (1, 12, 12, 16, 12)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(KeyError, match="erunet-cells"):
        create_model("resnet")


def test_eg_module_branch_geometry_follows_the_paper():
    # branch i: kernel 2i-1, dilation 2^(i+1), effective size dilation*(kernel-1)+1
    assert branch_geometry(1) == (1, 1, 1)
    assert branch_geometry(2) == (3, 8, 17)
    assert branch_geometry(3) == (5, 16, 65)
    eg = EGModule(5, 12, branches=3)
    assert eg.reduce[0].out_channels == 4  # d = N / K
    assert [b[0].dilation for b in eg.branches] == [(1, 1), (8, 8), (16, 16)]
    assert eg(torch.randn(1, 5, 40, 40)).shape == (1, 12, 40, 40)


def test_eg_module_refuses_widths_not_divisible_by_k():
    with pytest.raises(ValueError, match="divisible"):
        EGModule(4, 10, branches=3)


def test_every_convolution_is_followed_by_group_norm_in_erunet():
    for arch in ("erunet", "eru_net_3d"):
        model = create_model(arch, in_channels=1, widths=(6, 12, 24))
        mods = [m for m in model.modules() if not list(m.children())]
        for i, m in enumerate(mods):
            if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d) and m is not model.head:
                assert isinstance(mods[i + 1], torch.nn.GroupNorm), f"{arch}: conv {i} without GroupNorm"
