"""TorchScript network → ONNX file, checked against TorchScript before it is used.

The one exporter for packaging (trainer.package puts model.onnx into every .mar) and for choosing an organ's
runtime by measurement (trainer.export)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from services.runtime import INPUT_NAME, OUTPUT_NAME, build

OPSET = 17
CHECK_ATOL = 1e-3  # |logit difference| an export may show on random input at a shape it was not traced at


class ExportError(RuntimeError):
    """The network did not export, or the export does not compute what TorchScript computes."""


def export_onnx(
    scripted: str | Path | torch.jit.ScriptModule,
    channels: int,
    out: str | Path,
    size: int | tuple[int, ...] = 64,
) -> Path:
    """TorchScript network → ONNX file with dynamic batch and spatial axes (the TorchScript exporter:
    it takes a ScriptModule as it is, with no Python class needed). `size`: the sample's side (a 2-D
    network) or its spatial shape ((H, W), or (D, H, W) for a 3-D network)."""
    module = torch.jit.load(str(scripted), map_location="cpu") if not hasattr(scripted, "graph") else scripted
    module = module.eval()
    out = Path(out)
    spatial = (size, size) if isinstance(size, int) else tuple(size)
    sample = torch.zeros(1, channels, *spatial)
    names = ("height", "width") if len(spatial) == 2 else ("depth", "height", "width")
    axes = {0: "batch", **{2 + i: name for i, name in enumerate(names)}}
    with warnings.catch_warnings():  # the exporter's deprecation note: this is the path for ScriptModules
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (sample,),
                str(out),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                opset_version=OPSET,
            )
        except Exception as exc:
            raise ExportError(f"ONNX export failed: {exc}") from exc
    # an export can succeed and still be wrong (shapes traced as constants, ops ORT refuses): run it at
    # another batch and size than the sample
    check = (2, *(n * 2 if i == 0 else n + 32 for i, n in enumerate(spatial)))
    try:
        diff = max_logit_difference(module, out, channels, [check], "onnxruntime")
    except Exception as exc:
        raise ExportError(f"the exported ONNX model does not run: {exc}") from exc
    if diff > CHECK_ATOL:
        raise ExportError(f"the exported ONNX model differs from TorchScript by {diff:.2e} at {check}")
    return out


def max_logit_difference(
    module: torch.nn.Module, onnx_path: Path, channels: int, shapes, runtime: str, threads: int = 1
) -> float:
    """Largest |logit difference| between the TorchScript network and the ONNX file run in `runtime`,
    over random inputs of `shapes` ((n, h, w) each, or (n, d, h, w) for a 3-D network)."""
    other = build(runtime, onnx_path.parent, threads, onnx_file=onnx_path.name)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.inference_mode():
        for n, *spatial in shapes:
            x = torch.randn(n, channels, *spatial, generator=gen)
            worst = max(worst, float((module(x) - other(x)).abs().max()))
    return worst
