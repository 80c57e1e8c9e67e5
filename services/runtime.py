"""The inference runtime an organ server runs its network in: OpenVINO, ONNX Runtime or TorchScript.

The .mar carries the TorchScript network (`model.pt`, always) and, from trainer.export, the same network
exported to ONNX (`model.onnx`, dynamic batch and spatial axes), and where it holds its int8 quantisation
(`model-int8.onnx`, trainer.quantize). The organ spec names the runtime (`runtime: openvino |
openvino-bf16 | openvino-int8 | onnxruntime | torchscript`, chosen per organ by measurement: trainer.export
and trainer.quantize print the tables); `load_runtime` builds it with the threads the worker was given and
falls back to TorchScript, logging why, when the runtime's package or file is missing or fails to load.

A runtime is a callable (N, C, h, w) float32 tensor → logits (N, 1, h, w) float32 tensor, so
services.preprocess.probabilities (windows, mirror images) runs any of them unchanged.
"""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.spec import RUNTIMES

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
# The same network quantised after training (trainer.quantize: NNCF, int8 weights and activations as QDQ
# pairs), kept only where its validation Dice holds; OpenVINO runs its quantised layers in int8.
INT8_FILE = "model-int8.onnx"
TORCHSCRIPT_FILE = "model.pt"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# OpenVINO's precision hint per runtime name. Its CPU plugin would otherwise run in bf16/f16 where the CPU
# has it: a max logit difference of 0.46 against TorchScript was measured that way (liver). f32 keeps it
# within 1e-3 of TorchScript; "openvino-bf16" asks for bf16 on purpose, for an organ whose validation shows
# that it holds (trainer.export measures every runtime).
# "openvino-int8": the int8 network's layers that are not quantised stay f32.
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
NETWORK_FILES = {"openvino-int8": INT8_FILE}  # the runtimes that run another file than model.onnx
# OpenVINO runs a network compiled for one exact input shape faster, and in less memory, than the same
# network compiled for any shape (its layouts and buffers are planned once; README "Inference runtimes"):
# the liver network in bf16 at 256² ~7 % faster, the cells int8 network at 1008² ~12 % with a third less peak
# memory. Compiling for a shape took 0.18 s (liver) and 0.75 s (cells). A server sees few shapes (a slice at
# the served size, a volume's chunks, a tile and its views), so it keeps the last few compiled.
STATIC_SHAPES = 3


class RuntimeUnavailable(RuntimeError):
    """The runtime's package or model file is missing, or the model did not load in it."""


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())


def _runtime_package(name: str):
    """Import a runtime's package when it is asked for (each is an optional speed-up: a server without it
    falls back to TorchScript, with this reason logged)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeUnavailable(f"{name} is not installed ({exc})") from exc


class OnnxRuntimeModel:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        ort = _runtime_package("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... classes
            raise RuntimeUnavailable(f"onnxruntime could not load {path.name}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: _as_numpy(x)})[:1]
        return torch.from_numpy(logits)


class OpenVinoModel:
    """A network in OpenVINO. Every image runs on one thread: a single image in a one-thread request, a batch
    (a tile's mirror views, a volume chunk's slices) image by image over as many streams as the worker has
    threads, one thread each, side by side; each compiled for the shape it runs (STATIC_SHAPES). The two
    views of a 1008² cells tile took 1.53 s that way against 1.97 s as one request of two on both threads
    (int8, 2026-12-03); a single liver slice cost 0.074-0.079 CPU-s on one thread against 0.097-0.099 on two
    (python -m tools.organ_cpu --organ liver)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int, precision: str = "f32"):
        self._ov = _runtime_package("openvino")
        self._core = self._ov.Core()
        self._path, self._precision = path, precision
        self.streams = max(1, threads)
        try:
            self._network = self._core.read_model(str(path))
        except Exception as exc:
            raise RuntimeUnavailable(f"openvino could not read {path.name}: {exc}") from exc
        self.compiled = self._compile(self._network, streams=1, threads=1)  # any shape: the file runs here
        self._by_shape: OrderedDict[tuple, object] = OrderedDict()  # (shape, streams) → request or queue
        self.queue = None  # the AsyncInferQueue of the last batch run side by side
        self._out: list[np.ndarray | None] = []

    def _compile(self, network, streams: int, threads: int):
        config = {
            "INFERENCE_PRECISION_HINT": self._precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": streams,
        }
        try:
            return self._core.compile_model(network, "CPU", config)
        except Exception as exc:
            raise RuntimeUnavailable(f"openvino could not compile {self._path.name}: {exc}") from exc

    def _for_shape(self, shape: tuple[int, ...], streams: int):
        """The network compiled for exactly `shape` (STATIC_SHAPES): an infer request on one stream, an
        AsyncInferQueue over several; the least recently used shape is dropped beyond STATIC_SHAPES."""
        key = (shape, streams)
        if key in self._by_shape:
            self._by_shape.move_to_end(key)
            return self._by_shape[key]
        network = self._network.clone()
        network.reshape(list(shape))
        compiled = self._compile(network, streams, threads=streams)
        if streams == 1:
            runner = compiled.create_infer_request()
        else:
            runner = self._ov.AsyncInferQueue(compiled, streams)
            runner.set_callback(self._done)
        self._by_shape[key] = runner
        while len(self._by_shape) > STATIC_SHAPES:
            self._by_shape.popitem(last=False)
        return runner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.streams > 1 and x.shape[0] > 1:
            return self._side_by_side(_as_numpy(x))
        request = self._for_shape(tuple(x.shape), 1)
        request.infer({0: _as_numpy(x)})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def _side_by_side(self, x: np.ndarray) -> torch.Tensor:
        self.queue = self._for_shape((1, *x.shape[1:]), self.streams)
        # one image a request: the queue hands the next image to whichever stream is free, so a batch of
        # several per stream (a volume chunk's slices) has no stream waiting on the other at every pair
        self._out = [None] * len(x)
        for i in range(len(x)):
            self.queue.start_async({0: x[i : i + 1]}, i)
        self.queue.wait_all()
        return torch.from_numpy(np.concatenate(self._out))

    def _done(self, request, i: int) -> None:
        self._out[i] = request.get_output_tensor(0).data.copy()


class TorchScriptModel:
    name = "torchscript"

    def __init__(self, path: Path, threads: int | None = None, module: torch.nn.Module | None = None):
        if module is None:
            if not path.is_file():
                raise RuntimeUnavailable(f"{path} missing")
            module = torch.jit.load(str(path), map_location="cpu")
        self.module = module.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out[0] if isinstance(out, (tuple, list)) else out


@dataclass(frozen=True)
class Loaded:
    """The runtime a server ended up with, and why not the one asked for (None when it is)."""

    model: Callable[[torch.Tensor], torch.Tensor]
    name: str
    requested: str
    fallback_reason: str | None = None


def build(
    name: str, model_dir: Path, threads: int, onnx_file: str = ONNX_FILE
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The runtime `name` over the network files in `model_dir`; raises RuntimeUnavailable."""
    model_dir = Path(model_dir)
    if name == "torchscript":
        return TorchScriptModel(model_dir / TORCHSCRIPT_FILE)
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    onnx_file = NETWORK_FILES.get(name, onnx_file)
    path = model_dir / onnx_file
    if not path.is_file():
        how = "trainer.quantize" if name in NETWORK_FILES else "trainer.export"
        raise RuntimeUnavailable(f"{onnx_file} missing from {model_dir} (package with {how})")
    if name == "onnxruntime":
        return OnnxRuntimeModel(path, threads)
    return OpenVinoModel(path, threads, OPENVINO_PRECISIONS[name])


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX int8 tiles (Linux's `amx_int8` flag; False where that cannot be read)."""
    try:
        return "amx_int8" in cpuinfo.read_text().split()
    except OSError:
        return False


def runtime_for_this_cpu(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str | None]:
    """(the runtime to run for the spec's `name` on this CPU, why it is another one or None).

    OpenVINO 2026.4 runs the int8 networks right only where it was validated, a CPU with AMX: on an AMD EPYC
    without it (AVX-512 VNNI) a U-Net skip that is both pooled and concatenated came out with logits
    correlated r 0.79-0.89 with f32, where ONNX Runtime ran the same QDQ file at r 0.9997 (README, "Known
    problem: OpenVINO int8 on a CPU without AMX"). There the f32 network runs instead."""
    if name == "openvino-int8" and not cpu_has_amx(cpuinfo):
        return (
            "openvino",
            "OpenVINO int8 is validated only on CPUs with AMX, which this one lacks: running f32",
        )
    return name, None


def load_runtime(
    name: str,
    model_dir: Path,
    threads: int,
    torchscript: Callable[[], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> Loaded:
    """The runtime the spec names (or runtime_for_this_cpu's stand-in for it), or TorchScript (built by
    `torchscript()`, default model.pt in model_dir) with the reason logged as a warning when that runtime
    cannot be had."""
    runtime, why = runtime_for_this_cpu(name)
    if why is not None:
        logger.warning("runtime %s: %s", name, why)
    reason = None
    if runtime != "torchscript":
        try:
            return Loaded(build(runtime, model_dir, threads), runtime, name, why)
        except RuntimeUnavailable as exc:
            reason = f"{why}; {exc}" if why else str(exc)
            logger.warning("runtime %s unavailable, falling back to TorchScript: %s", runtime, exc)
    model = torchscript() if torchscript is not None else build("torchscript", model_dir, threads)
    return Loaded(model, "torchscript", name, reason)
