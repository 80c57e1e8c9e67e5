"""Organ specs: one `services/<organ>/spec.yaml` per organ, read by the handler, gateway and trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVICES_DIR = Path(__file__).resolve().parent
INFERENCE_MODES = ("resize", "whole", "sliding")
TTA_MODES = ("none", "flips")
# What the organ server runs the network in (services.runtime); TorchScript is always in the .mar and is the
# fallback. The default for a spec that names none: the .mar files built before ONNX was packed.
RUNTIMES = ("torchscript", "onnxruntime", "openvino")


@dataclass(frozen=True)
class InferenceSpec:
    """How the served network sees an image. "resize": scaled to `size` and back; "whole": the whole
    image at native resolution, padded to `pad_multiple`; "sliding": at native resolution through windows
    of `size` that overlap by `overlap` of a window, blended with Gaussian weights (images no larger than
    a window go through whole). `tta` "flips": the probabilities are averaged over the image and its
    horizontal, vertical and both-way mirror images (four passes; for organs with no orientation)."""

    mode: str  # "resize" | "whole" | "sliding"
    size: tuple[int, int] | None
    pad_multiple: int = 16
    overlap: float = 0.25
    tta: str = "none"


@dataclass(frozen=True)
class OrganSpec:
    name: str
    display_name: str
    modality: str
    label: str
    channels: int
    inference: InferenceSpec
    window: dict | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_threshold: float
    extra: dict = field(default_factory=dict)
    runtime: str = "torchscript"

    @classmethod
    def from_dict(cls, raw: dict) -> OrganSpec:
        inf = raw.get("inference") or {}
        mode = inf.get("mode", "resize")
        if mode not in INFERENCE_MODES:
            raise ValueError(
                f"organ {raw.get('name')!r}: inference.mode must be one of {', '.join(INFERENCE_MODES)}, "
                f"not {mode!r}"
            )
        size = inf.get("size")
        if mode in ("resize", "sliding") and not size:
            raise ValueError(
                f"organ {raw.get('name')!r}: inference.mode {mode!r} needs inference.size [h, w]"
            )
        tta = inf.get("tta", "none")
        if tta not in TTA_MODES:
            raise ValueError(
                f"organ {raw.get('name')!r}: inference.tta must be one of {', '.join(TTA_MODES)}, not {tta!r}"
            )
        overlap = float(inf.get("overlap", 0.25))
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"organ {raw.get('name')!r}: inference.overlap must be in [0, 1), not {overlap}")
        runtime = raw.get("runtime", "torchscript")
        if runtime not in RUNTIMES:
            raise ValueError(
                f"organ {raw.get('name')!r}: runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}"
            )
        norm = raw.get("normalize") or {}
        channels = int(raw["channels"])
        mean = tuple(float(v) for v in norm.get("mean", [0.0] * channels))
        std = tuple(float(v) for v in norm.get("std", [1.0] * channels))
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"organ {raw['name']!r}: normalize.mean/std need {channels} values")
        known = {
            "name",
            "display_name",
            "modality",
            "label",
            "channels",
            "inference",
            "window",
            "normalize",
            "default_threshold",
            "runtime",
        }
        return cls(
            name=raw["name"],
            display_name=raw.get("display_name", raw["name"]),
            modality=raw.get("modality", ""),
            label=raw.get("label", raw["name"]),
            channels=channels,
            inference=InferenceSpec(
                mode=mode,
                size=tuple(size) if size else None,
                pad_multiple=int(inf.get("pad_multiple", 16)),
                overlap=overlap,
                tta=tta,
            ),
            window=raw.get("window"),
            mean=mean,
            std=std,
            default_threshold=float(raw.get("default_threshold", 0.5)),
            extra={k: v for k, v in raw.items() if k not in known},
            runtime=runtime,
        )

    def with_inference(
        self, mode: str, size: int | None = None, overlap: float = 0.25, tta: str | None = None
    ) -> OrganSpec:
        """This organ seen another way (square `size` for resize/sliding; `tta` default: as it is now),
        checked like a spec file."""
        inference = {**self.to_dict()["inference"], "mode": mode, "size": [size, size] if size else None}
        inference = {**inference, "overlap": overlap, "tta": tta or self.inference.tta}
        return OrganSpec.from_dict({**self.to_dict(), "inference": inference})

    def single_pass(self) -> OrganSpec:
        """This organ without test-time augmentation (what the trainer validates with while it trains)."""
        return dataclasses.replace(self, inference=dataclasses.replace(self.inference, tta="none"))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "modality": self.modality,
            "label": self.label,
            "channels": self.channels,
            "inference": {
                "mode": self.inference.mode,
                "size": list(self.inference.size) if self.inference.size else None,
                "pad_multiple": self.inference.pad_multiple,
                "overlap": self.inference.overlap,
                "tta": self.inference.tta,
            },
            "window": self.window,
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
            "default_threshold": self.default_threshold,
            "runtime": self.runtime,
            **self.extra,
        }


def load_spec(path: str | Path) -> OrganSpec:
    with open(path) as fh:
        return OrganSpec.from_dict(yaml.safe_load(fh))


def organ_dirs(services_dir: Path = SERVICES_DIR) -> dict[str, Path]:
    """Every folder under services/ with a spec.yaml is an organ: adding an organ is adding a folder."""
    return {p.parent.name: p.parent for p in sorted(services_dir.glob("*/spec.yaml"))}


def load_organ_spec(organ: str, services_dir: Path = SERVICES_DIR) -> OrganSpec:
    dirs = organ_dirs(services_dir)
    if organ not in dirs:
        raise KeyError(f"unknown organ {organ!r}; known organs: {', '.join(dirs) or 'none'}")
    return load_spec(dirs[organ] / "spec.yaml")
