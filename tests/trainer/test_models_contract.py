"""One contract every architecture passes: forward, backward, several input sizes, save/load, TorchScript."""

import io

import pytest
import torch

from services.networks import MODELS, create_model
from services.networks.eg_module import EGModule, branch_geometry

SMALL = {
    "unet": (6, 12),
    "unet-res": (6, 12),
    "unet-eg": (6, 12),
    "erunet": (6, 12, 24),
    "erunet-cells": (6, 12, 24),
}


@pytest.fixture(params=sorted(MODELS))
def arch(request):
    return request.param


def small_model(arch, in_channels=1):
    torch.manual_seed(0)
    return create_model(arch, in_channels=in_channels, out_channels=1, widths=SMALL[arch]).eval()


def test_every_registered_model_has_a_small_config():
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("size", [(32, 32), (48, 64), (96, 80)])
def test_forward_keeps_size_and_backward_reaches_every_parameter(arch, size):
    model = small_model(arch, in_channels=3).train()
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert y.shape == (2, 1, *size)
    y.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_save_load_round_trip(arch):
    model = small_model(arch)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = create_model(arch, in_channels=1, out_channels=1, widths=SMALL[arch]).eval()
    other.load_state_dict(torch.load(buf))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_torchscript_export_gives_the_same_output_at_other_sizes(arch, tmp_path):
    model = small_model(arch)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 1, 32, 32))
    traced.save(str(tmp_path / "m.ts"))
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    for size in [(32, 32), (64, 48)]:
        x = torch.randn(1, 1, *size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


def test_input_size_not_a_multiple_of_the_stride_fails_with_the_fix():
    model = small_model("erunet")
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.randn(1, 1, 30, 32))


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
    model = create_model("erunet", in_channels=1, widths=(6, 12, 24))
    mods = [m for m in model.modules() if not list(m.children())]
    for i, m in enumerate(mods):
        if isinstance(m, torch.nn.Conv2d) and m is not model.head:
            assert isinstance(mods[i + 1], torch.nn.GroupNorm), f"conv {i} not followed by GroupNorm"
