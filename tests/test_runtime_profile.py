"""tools.runtime_profile: FLOP counted from an OpenVINO graph, the profile's figures from known numbers, and
one real run on the shipped liver network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools import runtime_profile

ov = pytest.importorskip("openvino")


def _conv_groupnorm_deconv():
    """2 → 4 channels by a 3×3 convolution on 16², a GroupNorm as the ONNX export writes it (Reshape → MVN →
    Reshape, 2 groups), back to 2 channels by a 2×2 transposed convolution of stride 2 (32²)."""
    from openvino import opset13 as ops

    x = ops.parameter([1, 2, 16, 16], np.float32)
    conv = ops.convolution(x, ops.constant(np.ones((4, 2, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1])
    grouped = ops.reshape(conv, ops.constant(np.array([1, 2, -1], np.int64)), False)
    normed = ops.mvn(grouped, ops.constant(np.array([2], np.int64)), True, 1e-5, "inside_sqrt")
    back = ops.reshape(normed, ops.constant(np.array([1, 4, 16, 16], np.int64)), False)
    weights = ops.constant(np.ones((4, 2, 2, 2), np.float32))
    up = ops.convolution_backprop_data(back, weights, [2, 2], [0, 0], [0, 0], [1, 1])
    return ov.Model([up], [x])


def test_convolution_flop_are_counted_from_the_graph():
    model = _conv_groupnorm_deconv()
    conv = 2 * (4 * 2 * 3 * 3) * 16 * 16  # each weight once per output pixel
    deconv = 2 * (4 * 2 * 2 * 2) * 16 * 16  # each weight once per input pixel
    assert runtime_profile.conv_gflop(model) == pytest.approx((conv + deconv) / 1e9)


def test_a_profile_times_the_network_by_layer_type():
    seconds, by_type = runtime_profile.profile(_conv_groupnorm_deconv(), "f32", 1, rounds=3)
    assert seconds > 0
    assert {"Convolution", "ConvolutionBackpropData", "MVN"} <= set(by_type)
    assert all(s >= 0 for s in by_type.values())


def test_figures_from_known_numbers():
    by_type = {"Convolution": 0.010, "Reorder": 0.005, "MVN": 0.002, "Input": 0.0}
    result = runtime_profile.summary(
        0.020, by_type, gflop=2.0, gemm={"f32": 100.0, "bf16": 200.0}, precision="bf16"
    )
    assert result["network"] == {"ms": 20.0, "gflops": 100.0, "of_f32_gemm": 1.0, "of_bf16_gemm": 0.5}
    assert result["convolutions"]["gflops"] == 200.0  # 2 GFLOP in their 10 ms
    assert result["without_reorders"]["ms"] == 15.0 and result["without_reorders"]["of_bf16_gemm"] == 0.667
    assert [(r["type"], r["share"]) for r in result["by_type"]] == [
        ("Convolution", 0.588),  # of the 17 ms profiled; a type that took no time is left out
        ("Reorder", 0.294),
        ("MVN", 0.118),
    ]
    text = runtime_profile.report("liver", 1, result)
    assert "| Reorder | 5.00 | 29.4% |" in text
    assert (
        "the network were its reorders free: 15.00 ms, 133.3 GFLOP/s = 133% of the f32 GEMM, 67% of" in text
    )


def test_the_shipped_liver_network_profiled(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert (
        runtime_profile.main(["--organ", "liver", "--rounds", "2", "--threads", "1", "--json", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    card = json.loads((runtime_profile.MODEL_STORE / "liver.json").read_text())
    assert result["gflop"] == pytest.approx(card["inference_gflops"], abs=0.01)  # as counted in training
    assert result["precision"] == "bf16"  # the spec's runtime is openvino-bf16
    assert {"Convolution", "Reorder", "MVN"} <= {r["type"] for r in result["by_type"]}
    assert 0 < result["network"]["gflops"] < result["without_reorders"]["gflops"]
    assert "| Convolution |" in capsys.readouterr().out
