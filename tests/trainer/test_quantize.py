"""The int8 path (trainer.quantize, issue 16 item 3): NNCF quantises an ONNX network into QDQ pairs that
OpenVINO runs in int8, the archive carries it as model-int8.onnx beside the f32 networks (kept by a
repackage), an organ whose spec says `openvino-int8` runs it, and one that lacks it falls back to TorchScript
saying why. The shipped networks' int8 agreement is tests/services/test_runtime_parity.py's."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pytest
import torch
import yaml

from services.networks import create_model
from services.runtime import INT8_FILE, build, load_runtime, runtime_for_this_cpu
from services.spec import load_organ_spec
from trainer.onnx_export import export_onnx
from trainer.package import PackageError, build_mar, repackage
from trainer.quantize import quantize_nncf

# OpenVINO's int8 is run only on CPUs where it was validated (services.runtime.runtime_for_this_cpu): on
# others it diverged from f32 (README, "Known problem: OpenVINO int8 on a CPU without AMX")
INT8_HERE, NOT_HERE = runtime_for_this_cpu("openvino-int8")
runs_int8_here = pytest.mark.skipif(INT8_HERE != "openvino-int8", reason=str(NOT_HERE))


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """A small ERU-Net (untrained, seeded) as TorchScript, ONNX and NNCF int8 ONNX, and its inputs."""
    work = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    net = create_model("erunet", in_channels=3, out_channels=1, widths=(6, 12, 24)).eval()
    torch.jit.script(net).save(str(work / "model.pt"))
    export_onnx(work / "model.pt", 3, work / "model.onnx")
    rng = np.random.default_rng(0)
    calibration = [rng.normal(size=(1, 3, 64, 64)).astype(np.float32) for _ in range(8)]
    quantize_nncf(work / "model.onnx", work / INT8_FILE, calibration)
    return work, calibration


@runs_int8_here
def test_nncf_writes_qdq_pairs_that_openvino_runs_close_to_f32(networks):
    import onnx

    work, calibration = networks
    ops = {node.op_type for node in onnx.load(str(work / INT8_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # int8 weights and activations, as QDQ pairs
    f32, int8 = build("openvino", work, 1), build("openvino-int8", work, 1)
    x = torch.from_numpy(calibration[0])
    a, b = f32(x), int8(x)
    assert a.shape == b.shape == (1, 1, 64, 64)
    assert not torch.equal(a, b)  # it is another network, not model.onnx again
    # the same network with quantisation noise: an untrained one's logits follow f32's closely (r 0.98 here)
    r = float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])
    print(f"int8 vs f32 logits: r {r:.4f}")
    assert r > 0.95, r


def _zero_points(path) -> set[int]:
    """The zero points of a QDQ network's quantisers (QuantizeLinear's third input)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    values |= {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
    }
    quantisers = [n for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    return {int(v) for n in quantisers for v in np.asarray(values[n.input[2]]).ravel()}


@runs_int8_here
def test_the_mixed_preset_quantises_activations_asymmetrically(networks, tmp_path):
    """`--preset mixed`: a zero point per activation (a ReLU's output gets all 256 levels); the default
    (performance) keeps every quantiser symmetric, zero point 0."""
    work, calibration = networks
    assert _zero_points(work / INT8_FILE) == {0}
    mixed = quantize_nncf(work / "model.onnx", tmp_path / "model.onnx", calibration, preset="mixed")
    assert len(_zero_points(mixed) - {0}) > 1
    x = torch.from_numpy(calibration[0])
    f32, int8 = build("openvino", work, 1)(x), build("openvino", tmp_path, 1)(x)  # tmp_path/model.onnx
    assert float(np.corrcoef(f32.flatten().numpy(), int8.flatten().numpy())[0, 1]) > 0.95


def test_the_archive_carries_it_and_the_spec_runs_it(networks, tmp_path):
    work, _ = networks
    spec = dataclasses.replace(load_organ_spec("cells"), runtime="openvino-int8")
    with pytest.raises(PackageError, match="openvino-int8"):
        build_mar(work / "model.pt", "cells", spec, tmp_path, "no-int8", "1", onnx=work / "model.onnx")
    mar = build_mar(
        work / "model.pt", "cells", spec, tmp_path / "a", "cells", "1", onnx=work / "model.onnx",
        int8=work / INT8_FILE,
    )  # fmt: skip
    again = repackage(mar, tmp_path / "b", "cells", "2")
    for archive in (mar, again):
        with zipfile.ZipFile(archive) as zf:
            assert zf.read(INT8_FILE) == (work / INT8_FILE).read_bytes()
            assert yaml.safe_load(zf.read("spec.yaml"))["runtime"] == "openvino-int8"
    served = tmp_path / "served"
    zipfile.ZipFile(again).extractall(served)
    loaded = load_runtime("openvino-int8", served, 1)
    assert (loaded.name, loaded.fallback_reason) == (INT8_HERE, NOT_HERE)


@pytest.mark.parametrize(
    "flags, runtime",
    [
        ("fpu avx512f avx512_vnni avx512_bf16", "openvino"),
        ("fpu avx512f amx_bf16 amx_tile amx_int8", "openvino-int8"),
    ],
)
def test_int8_runs_only_on_a_cpu_with_amx_and_f32_stands_in_saying_why(tmp_path, flags, runtime):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    chosen, why = runtime_for_this_cpu("openvino-int8", cpuinfo)
    assert chosen == runtime and (why is None) == (runtime == "openvino-int8")
    assert runtime_for_this_cpu("openvino-int8", tmp_path / "missing")[0] == "openvino"  # unknown: f32
    for other in ("openvino", "openvino-bf16", "onnxruntime", "torchscript"):
        assert runtime_for_this_cpu(other, cpuinfo) == (other, None)


def test_without_amx_the_server_loads_the_f32_network_and_says_why(networks, tmp_path, monkeypatch):
    import services.runtime as runtime

    work, calibration = networks
    for name in ("model.pt", "model.onnx", INT8_FILE):
        (tmp_path / name).write_bytes((work / name).read_bytes())
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda cpuinfo=None: False)
    loaded = load_runtime("openvino-int8", tmp_path, 1)
    assert (loaded.name, loaded.requested) == (
        "openvino",
        "openvino-int8",
    ) and "AMX" in loaded.fallback_reason
    x = torch.from_numpy(calibration[0])
    assert torch.equal(loaded.model(x), build("openvino", tmp_path, 1)(x))  # model.onnx, not the int8 file


def test_without_its_file_the_server_falls_back_to_torchscript_saying_why(networks, tmp_path, monkeypatch):
    import services.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_amx", lambda cpuinfo=None: True)  # a CPU that would run int8
    work, _ = networks
    for name in ("model.pt", "model.onnx"):
        (tmp_path / name).write_bytes((work / name).read_bytes())
    loaded = load_runtime("openvino-int8", tmp_path, 1)
    assert loaded.name == "torchscript" and INT8_FILE in loaded.fallback_reason
    assert "trainer.quantize" in loaded.fallback_reason
