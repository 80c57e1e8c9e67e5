"""The one TorchServe handler every organ server runs: decode → normalise → batch → infer → encode.

An organ's `services/<organ>/handler.py` subclasses `SegmentationHandler` and overrides only the hook that
differs for it (and says why). Everything organ-specific that is data — channels, input size, intensity
window, normalisation — comes from the organ spec `spec.yaml` packed in the .mar, not from code.

Request:  one image per request (PNG/JPEG/TIFF/DICOM bytes, see services.imaging), under any input name
          (the gRPC client sends it as `data`; HTTP `curl -T` sends it as `body`).
Response: an 8-bit grey PNG at the input's size; pixel value = round(255 · P(foreground)).
          The network returns logits (N, 1, h, w); the handler applies the sigmoid.

Volume chunk (common.volume_inference sends a volume this way): the request is an .npy (n, H, W) of float32
or int16 slice intensities in the network's orientation, n ≤ the handler setting `max_volume_slices`.
Hounsfield units go through the spec's window exactly as a DICOM's pixels do; without a window each slice
is scaled as a float image is (services.imaging.decode_volume_chunk). Each slice then takes the 2-D path
(prepare → network → restore), `inference.volume_batch` slices per forward pass, and the answer is an .npy
uint8 (n, H, W) of probabilities (content type application/x-npy). A bad chunk is refused like a bad image.
TorchServe's own batching (model-config.yaml batchSize) combines requests; a chunk is already a batch.

Errors — what TorchServe 0.12 can carry back (read from its frontend: BatchAggregator.sendResponse and
GRPCJob.response/sendError):
* An exception out of the handler fails the *whole batch*: every request gets the same status and message
  (PredictionException(message, 400) → HTTP 400 / gRPC INVALID_ARGUMENT with that message).
* A per-request status (`context.set_response_status(code, phrase, idx)`) reaches HTTP clients as that
  status, but the gRPC frontend ignores it: a gRPC client gets OK and the body.
So: when every request of a batch is bad for the same reason (always the case for a batch of one) the
handler raises PredictionException(message, 400). Otherwise each bad request gets its own 400 status and a
JSON body `{"error": {"code": "invalid_input", "message": ...}}` while the good ones in the same batch get
their PNG; `common.torchserve_client.predict` turns such a body into InvalidInput, so over gRPC too a bad
image fails only itself.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# TorchServe's base handler imports `openvino.torch`, OpenVINO's torch.compile backend, whenever OpenVINO is
# installed: torch._dynamo and more at every start of every model worker (`import
# ts.torch_handler.base_handler` took 38 s with it and 12-13 s without on the busy 2-core test machine), the
# largest part of an organ server's recovery after a crash (docs/operations.md). MedSeg never torch.compiles
# (services/runtime.py drives OpenVINO through its own API, not this module), so it is marked absent for that
# import, which then takes TorchServe's own "OpenVINO is not enabled" path.
sys.modules.setdefault("openvino.torch", None)

from ts.torch_handler.base_handler import BaseHandler  # noqa: E402  (after the line above)
from ts.utils.util import PredictionException  # noqa: E402

from services.imaging import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SLICES,
    NPY_CONTENT_TYPE,
    ImageDecodeError,
    decode_image,
    decode_volume_chunk,
    decode_whole_volume,
    encode_npy,
    encode_png,
    is_npy,
)
from services.preprocess import (  # noqa: E402
    BATCH_VIEWS_PIXELS,
    Restore,
    prepare,
    prepare_volume,
    probabilities,
    restore,
    volume_probabilities,
)
from services.runtime import load_runtime  # noqa: E402
from services.spec import OrganSpec, load_spec  # noqa: E402

logger = logging.getLogger(__name__)

INPUT_KEYS = ("data", "body")  # gRPC client / HTTP raw body; anything else: the first bytes value
PNG_CONTENT_TYPE = "image/png"
ERROR_CONTENT_TYPE = "application/json"


@dataclass
class _Item:
    """One request on its way through the pipeline: either a model input or the reason it was refused.
    A volume chunk's `tensor` holds its n prepared slices (n, C, h, w), all restored the same `how`."""

    tensor: torch.Tensor | None = None
    how: Restore | None = None
    error: str | None = None
    prob: torch.Tensor | None = None
    volume: bool = False
    shape: tuple[int, int, int] | None = None  # a 3-D organ's volume (z, y, x) before padding


class SegmentationHandler(BaseHandler):
    """Binary segmentation of one image per request; see the module docstring for the wire format."""

    def __init__(self):
        super().__init__()
        self.spec: OrganSpec | None = None
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.max_slices = DEFAULT_MAX_SLICES
        # the network in the spec's runtime (services.runtime); None: the TorchScript module self.model
        self.runtime = None
        self.runtime_name = "torchscript"

    # --- lifecycle --------------------------------------------------------------------------

    def initialize(self, context):
        """Read the organ spec and handler settings, size torch's thread pools, load the TorchScript net."""
        model_dir = Path(context.system_properties["model_dir"])
        spec_path = model_dir / "spec.yaml"
        if not spec_path.is_file():
            raise RuntimeError(f"{spec_path} missing: the .mar must carry the organ spec (trainer.package)")
        self.spec = load_spec(spec_path)
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        self.max_pixels = int(settings.get("max_image_pixels", DEFAULT_MAX_PIXELS))
        self.max_slices = int(settings.get("max_volume_slices", DEFAULT_MAX_SLICES))
        self._set_threads(settings)
        super().initialize(context)  # device, manifest, torch.jit.load(serializedFile)
        # the spec's runtime with the worker's threads; TorchScript (self.model) with a logged reason if
        # its package or file is missing or fails to load
        # the runtime's threads (model-config handler.runtime_threads, default torch_threads): OpenVINO runs
        # one image on one of them and a batch's images side by side (services.runtime.OpenVinoModel)
        runtime_threads = int(settings.get("runtime_threads") or torch.get_num_threads())
        loaded = load_runtime(self.spec.runtime, model_dir, runtime_threads, torchscript=lambda: self.model)
        self.runtime = None if loaded.name == "torchscript" else loaded.model
        self.runtime_name = loaded.name
        logger.info(
            "organ %s: model %s loaded (runtime %s%s, %d runtime / %d torch intra-op threads, inference %s)",
            self.spec.name,
            self.model_pt_path,
            loaded.name,
            f", not {loaded.requested}: {loaded.fallback_reason}" if loaded.fallback_reason else "",
            runtime_threads,
            torch.get_num_threads(),
            self.spec.inference.mode,
        )
        if settings.get("warmup", True):
            self._warmup(settings.get("warmup_image"))

    @staticmethod
    def _set_threads(settings: dict) -> None:
        threads = settings.get("torch_threads")
        if threads:
            torch.set_num_threads(int(threads))
        interop = settings.get("torch_interop_threads")
        if interop:
            try:
                torch.set_num_interop_threads(int(interop))
            except RuntimeError:  # only settable before the first parallel work in the process
                logger.warning("torch interop threads already fixed at %d", torch.get_num_interop_threads())

    def _warmup(self, image: list[int] | None = None) -> None:
        """One forward pass on zeros, so the TorchScript profiling passes (or the runtime's first-call
        allocations) do not land on the first patient. With `image` (model-config `handler.warmup_image`,
        [height, width]: the size this organ's images come in) a zero image of that size goes the whole
        served way (padding, test-time views), so the networks a runtime compiles per input shape
        (services.runtime.STATIC_SHAPES) are ready before the first patient's image of that size."""
        with torch.inference_mode():
            if image:
                height, width = (int(n) for n in image)
                self._probabilities(prepare(np.zeros((height, width), np.float32), self.spec)[0])
                return
            size = self.spec.inference.size or (256, 256)
            self._logits(torch.zeros((1, self.spec.channels, *size), device=self.device))

    # --- the four hooks ---------------------------------------------------------------------

    def preprocess(self, data):
        """Decode each request body and prepare the model input; a bad image marks only its own item."""
        items = [self._prepare_one(row) for row in data]
        errors = [item.error for item in items]
        if all(errors) and len(set(errors)) == 1:
            # the whole batch is bad for one reason (always so for a batch of one): a real error status
            raise PredictionException(errors[0], 400)
        return items

    def inference(self, data, *args, **kwargs):
        """Run the network once per group of same-shaped images (over windows and mirror images when the
        spec says so), and a volume chunk's slices `inference.volume_batch` at a time; store sigmoid
        probabilities per item."""
        groups: dict[tuple[int, ...], list[_Item]] = defaultdict(list)
        for item in data:
            if item.error is None and not item.volume:
                groups[tuple(item.tensor.shape)].append(item)
        with torch.inference_mode():
            for members in groups.values():
                probs = self._probabilities(torch.cat([m.tensor for m in members]), *args, **kwargs)
                for i, member in enumerate(members):
                    member.prob = probs[i : i + 1]
            step = self.spec.inference.volume_batch
            for item in data:
                if item.error is None and item.volume:
                    slices = item.tensor.split(step)
                    item.prob = torch.cat([self._probabilities(x, *args, **kwargs) for x in slices])
        return data

    def _probabilities(self, batch: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = batch.to(self.device)
        return probabilities(
            lambda t: self._logits(t, *args, **kwargs), x, self.spec, batch_views_pixels=BATCH_VIEWS_PIXELS
        ).cpu()

    def _logits(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """One forward pass, checked: a network answering another shape is a server error, not a mask."""
        if self.runtime is not None:
            logits = self.runtime(x)
        else:
            logits = self.model(x, *args, **kwargs)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        expected = self._expected_logits(x)
        if tuple(logits.shape) != expected:
            raise PredictionException(
                f"model returned shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
                f"expected logits {expected}",
                500,
            )
        return logits

    def _expected_logits(self, x: torch.Tensor) -> tuple[int, ...]:
        """The logits' shape the network must answer for input `x`: one sigmoid channel here."""
        return (x.shape[0], 1, *x.shape[2:])

    def _refused(self, idx: int, error: str) -> bytes:
        self._set_status(idx, 400, "Bad Request")  # an HTTP reason phrase: keep it ASCII
        self._set_content_type(idx, ERROR_CONTENT_TYPE)
        return json.dumps({"error": {"code": "invalid_input", "message": error}}).encode()

    def postprocess(self, data):
        """Probabilities back at the input's size → 8-bit PNG bytes (a volume chunk: one .npy of uint8
        (n, H, W)); refused items → JSON error + 400."""
        out = []
        for idx, item in enumerate(data):
            if item.error is not None:
                out.append(self._refused(idx, item.error))
                continue
            if item.volume:
                grey = np.stack([_grey(p, item.how) for p in item.prob.split(1)])
                self._set_content_type(idx, NPY_CONTENT_TYPE)
                out.append(encode_npy(grey))
            else:
                self._set_content_type(idx, PNG_CONTENT_TYPE)
                out.append(encode_png(_grey(item.prob, item.how)))
        return out

    # --- helpers an organ may override --------------------------------------------------------

    def decode(self, body: bytes) -> np.ndarray:
        """Request bytes → float32 [0, 1] H×W[×C]. Raises ImageDecodeError for bad input."""
        return decode_image(body, window=self.spec.window, max_pixels=self.max_pixels).array

    def decode_volume(self, body: bytes) -> np.ndarray:
        """A volume chunk's .npy bytes → float32 [0, 1] (n, H, W). Raises ImageDecodeError for bad input."""
        return decode_volume_chunk(
            body, window=self.spec.window, max_slices=self.max_slices, max_pixels=self.max_pixels
        )

    def _prepare_one(self, row) -> _Item:
        try:
            body = self._body(row)
            if is_npy(body):
                prepared = [prepare(plane, self.spec) for plane in self.decode_volume(body)]
                return _Item(torch.cat([t for t, _ in prepared]), prepared[0][1], volume=True)
            tensor, how = prepare(self.decode(body), self.spec)
        except (ImageDecodeError, ValueError) as exc:  # to_channels / shape checks raise ValueError
            logger.info("request refused: %s", exc)
            return _Item(error=str(exc))
        return _Item(tensor=tensor, how=how)

    @staticmethod
    def _body(row) -> bytes:
        if isinstance(row, (bytes, bytearray)):
            return bytes(row)
        if not isinstance(row, dict) or not row:
            raise ImageDecodeError("request carries no image: send the image bytes as the request body")
        value = next((row[k] for k in INPUT_KEYS if k in row), None)
        if value is None:
            value = next((v for v in row.values() if isinstance(v, (bytes, bytearray))), None)
        if not isinstance(value, (bytes, bytearray)):
            raise ImageDecodeError(
                f"request input is {type(value).__name__}, not image bytes: send the file itself, "
                "not JSON or a form field with text"
            )
        return bytes(value)

    def _set_status(self, idx: int, code: int, phrase: str) -> None:
        if self.context is not None and self.context.request_processor:
            self.context.set_response_status(code, phrase, idx)

    def _set_content_type(self, idx: int, content_type: str) -> None:
        if self.context is not None and self.context.request_processor:
            self.context.set_response_content_type(idx, content_type)


def _grey(prob: torch.Tensor, how: Restore) -> np.ndarray:
    """(1, 1, h, w) probabilities at model size → uint8 (H, W) = round(255 · p) at the input's size."""
    with torch.inference_mode():  # restore() clamps in place; probs are inference tensors
        return (restore(prob, how) * 255.0).round_().to(torch.uint8).numpy()


class VolumeSegmentationHandler(SegmentationHandler):
    """A 3-D organ (spec `dimensions: 3`): one whole volume per request, several labels.

    Request: an .npy of one (z, y, x) float32 or int16 volume of raw intensities in the network's
    orientation, already resampled to the spec's `inference.spacing_mm` (common.volume_inference sends it;
    services.volumes.resample_zyx). It is normalised per volume (services.preprocess.normalize_mr, the
    spec's `normalize.per_volume`), padded to `inference.size` and run in one forward pass; the network's
    (1, N + 1, *size) logits are softmaxed over background + the N labels and cropped back.
    Response: an .npy uint8 (N + 1, z, y, x), round(255 · p) per class, background first. A 2-D image, a
    4-D array or a volume larger than `inference.size` is refused (400) naming what was sent."""

    def _warmup(self, image: list[int] | None = None) -> None:  # a volume is always padded to one size
        x = torch.zeros((1, self.spec.channels, *self.spec.inference.size), device=self.device)
        with torch.inference_mode():
            self._logits(x)

    def _prepare_one(self, row) -> _Item:
        try:
            body = self._body(row)
            if not is_npy(body):
                raise ImageDecodeError(
                    f"organ {self.spec.name!r} is 3-D: send one whole volume as an .npy (z, y, x), "
                    "not a 2-D image"
                )
            volume = decode_whole_volume(body, max_shape=self.spec.inference.size)
            tensor = prepare_volume(volume, self.spec)
        except (ImageDecodeError, ValueError) as exc:
            logger.info("request refused: %s", exc)
            return _Item(error=str(exc))
        return _Item(tensor=tensor, volume=True, shape=volume.shape)

    def inference(self, data, *args, **kwargs):
        """One forward pass per volume (they differ in size before padding, not after: each is its own)."""
        with torch.inference_mode():
            for item in data:
                if item.error is None:
                    x = item.tensor.to(self.device)
                    item.prob = volume_probabilities(
                        lambda t: self._logits(t, *args, **kwargs), x, item.shape
                    )
                    item.prob = item.prob.cpu()
        return data

    def _expected_logits(self, x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[0], len(self.spec.labels) + 1, *x.shape[2:])

    def postprocess(self, data):
        out = []
        for idx, item in enumerate(data):
            if item.error is not None:
                out.append(self._refused(idx, item.error))
                continue
            self._set_content_type(idx, NPY_CONTENT_TYPE)
            out.append(encode_npy((item.prob * 255.0).round_().to(torch.uint8).numpy()))
        return out
