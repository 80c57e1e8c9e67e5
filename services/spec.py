"""An organ is one folder, `services/<organ>/`: its serving spec (`spec.yaml`, read by the handler, the
gateway and the trainer), its training recipe (`recipe.yaml`, read by the trainer, `make train` and `make
cv`) and its TorchServe files (`config.properties`, `model-config.yaml`, `handler.py`). Both YAML files are
loaded and checked here, so an error names the file and what to write instead."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVICES_DIR = Path(__file__).resolve().parent
INFERENCE_MODES = ("resize", "whole", "sliding", "pad")
# A 3-D organ's network sees one whole volume: "pad" (resampled to `spacing_mm`, padded to `size`).
VOLUME_MODES = ("pad",)
# A 3-D organ's per-volume intensity normalisations, `normalize.per_volume` (preprocess.normalize_mr).
PER_VOLUME_NORMALIZATIONS = ("zscore",)
TTA_MODES = ("none", "flips", "rot180")
# What the organ server runs the network in (services.runtime); TorchScript is always in the .mar and is the
# fallback. The default for a spec that names none: the .mar files built before ONNX was packed.
# "openvino-bf16" is OpenVINO computing in bfloat16 where the CPU has it (AVX512-BF16, AMX; elsewhere f32);
# "openvino-int8": OpenVINO running the archive's int8 network (model-int8.onnx, made by trainer.quantize).
RUNTIMES = ("torchscript", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8")
# A volume is sent to the organ server in chunks of slices (services.handler_base, common.volume_inference):
# at most this many slices per request (the handler's max_volume_slices default; a 512² chunk of 64 int16
# slices is 32 MiB, half the 64 MiB message limit).
MAX_VOLUME_CHUNK = 64
DEFAULT_VOLUME_CHUNK = 16  # slices per request when a spec names none
DEFAULT_VOLUME_BATCH = 1  # slices per forward pass when a spec names none


@dataclass(frozen=True)
class InferenceSpec:
    """How the served network sees an image. "resize": scaled to `size` and back; "whole": the whole
    image at native resolution, padded to `pad_multiple`; "sliding": at native resolution through windows
    of `size` that overlap by `overlap` of a window, blended with Gaussian weights (images no larger than
    a window go through whole); "pad" (3-D organs): the whole volume, resampled to `spacing_mm` (z, y, x),
    padded to `size` (z, y, x), in one forward pass (a larger volume is refused). `tta` "flips": the
    probabilities are averaged over the image and its horizontal, vertical and both-way mirror images (four
    passes; for organs with no orientation); "rot180": over the image and its both-way mirror image, the
    image turned half a turn (two passes).
    A volume goes to the server `volume_chunk` slices per request, and the handler runs them through the
    network `volume_batch` slices per forward pass (both chosen by measurement: tools.runtime_bench
    --volume)."""

    mode: str  # "resize" | "whole" | "sliding"
    size: tuple[int, int] | None
    pad_multiple: int = 16
    overlap: float = 0.25
    tta: str = "none"
    volume_chunk: int = DEFAULT_VOLUME_CHUNK
    volume_batch: int = DEFAULT_VOLUME_BATCH
    spacing_mm: tuple[float, float, float] | None = None  # 3-D: the voxel size the network was trained at


@dataclass(frozen=True)
class Postprocess3D:
    """What is done to a binary mask volume (z, y, x) after thresholding (services.postprocess3d):
    keep only its largest 3-D connected component; fill holes enclosed within each axial slice."""

    largest_component: bool = False
    fill_holes: bool = False

    @property
    def enabled(self) -> bool:
        return self.largest_component or self.fill_holes


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
    # The gateway's deadline for one call to this organ's server (None: Settings.inference_timeout_s);
    # MEDSEG_ORGAN_INFERENCE_TIMEOUTS_S overrides it per organ.
    inference_deadline_s: float | None = None
    runtime: str = "torchscript"
    postprocess_3d: Postprocess3D = Postprocess3D()
    # 2: the network segments 2-D images (a volume slice by slice); 3: whole volumes (inference.mode "pad").
    dimensions: int = 2
    # The mask values 1..N name these (0 is background); one label, `label`, unless the spec lists several.
    # A 2-D organ's network answers one sigmoid channel; a 3-D organ's N + 1 softmax channels (background
    # first). Thresholds: see `labels_at` in gateway/service/masks.py and the README's API section.
    labels: tuple[str, ...] = ()
    per_volume: str | None = None  # 3-D: services.preprocess.normalize_mr's `how` (e.g. "zscore")
    # The organ's words in the web pages' other languages, kept in its folder: {lang: {"display_name": …,
    # "labels": {label: …}}} (the pages' catalogue wins where it has a word).
    translations: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.labels:
            object.__setattr__(self, "labels", (self.label,))

    @property
    def volumetric(self) -> bool:
        return self.dimensions == 3

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
        if not isinstance(norm, dict):
            raise ValueError(f"organ {raw.get('name')!r}: normalize must be a mapping, not {norm!r}")
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
            "inference_deadline_s",
            "runtime",
            "postprocess_3d",
            "dimensions",
            "labels",
            "translations",
        }
        dimensions, labels, spacing, per_volume = _volume_fields(raw, mode, size, norm)
        deadline = raw.get("inference_deadline_s")
        valid = isinstance(deadline, int | float) and not isinstance(deadline, bool) and deadline > 0
        if deadline is not None and not valid:
            raise ValueError(
                f"organ {raw.get('name')!r}: inference_deadline_s must be a positive number of seconds "
                f"(or left out for the gateway's default), not {deadline!r}"
            )
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
                volume_chunk=_slice_count(inf, "volume_chunk", DEFAULT_VOLUME_CHUNK, raw.get("name")),
                volume_batch=_slice_count(inf, "volume_batch", DEFAULT_VOLUME_BATCH, raw.get("name")),
                spacing_mm=spacing,
            ),
            window=raw.get("window"),
            mean=mean,
            std=std,
            default_threshold=float(raw.get("default_threshold", 0.5)),
            extra={k: v for k, v in raw.items() if k not in known},
            inference_deadline_s=None if deadline is None else float(deadline),
            runtime=runtime,
            postprocess_3d=_postprocess_3d(raw.get("postprocess_3d"), raw.get("name")),
            dimensions=dimensions,
            labels=labels,
            per_volume=per_volume,
            translations=_translations(raw.get("translations"), labels, raw.get("name")),
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
        # the fields of a 3-D or multi-label organ only when they differ from a 2-D one-label organ's, so the
        # specs (and run cards) of those keep their shape
        volume = {"dimensions": self.dimensions} if self.volumetric else {}
        labels = {"labels": list(self.labels)} if self.labels != (self.label,) else {}
        spacing = {"spacing_mm": list(self.inference.spacing_mm)} if self.inference.spacing_mm else {}
        per_volume = {"per_volume": self.per_volume} if self.per_volume else {}
        translations = {"translations": self.translations} if self.translations else {}
        return {
            "name": self.name,
            "display_name": self.display_name,
            "modality": self.modality,
            **volume,
            "label": self.label,
            **labels,
            "channels": self.channels,
            "inference": {
                "mode": self.inference.mode,
                "size": list(self.inference.size) if self.inference.size else None,
                "pad_multiple": self.inference.pad_multiple,
                "overlap": self.inference.overlap,
                "tta": self.inference.tta,
                "volume_chunk": self.inference.volume_chunk,
                "volume_batch": self.inference.volume_batch,
                **spacing,
            },
            "window": self.window,
            "normalize": {"mean": list(self.mean), "std": list(self.std), **per_volume},
            "default_threshold": self.default_threshold,
            # only when set, so the specs (and run cards) of organs without one keep their shape
            **({"inference_deadline_s": self.inference_deadline_s} if self.inference_deadline_s else {}),
            "runtime": self.runtime,
            **translations,
            # only when enabled, so the specs (and run cards) of organs without it keep their shape
            **(
                {"postprocess_3d": dataclasses.asdict(self.postprocess_3d)}
                if self.postprocess_3d.enabled
                else {}
            ),
            **self.extra,
        }


def _volume_fields(
    raw: dict, mode: str, size, norm: dict
) -> tuple[int, tuple[str, ...], tuple[float, float, float] | None, str | None]:
    """(dimensions, labels, inference.spacing_mm, normalize.per_volume), checked: a 3-D organ names the "pad"
    mode, a (z, y, x) size in multiples of 8 and the spacing it was trained at; labels are distinct names."""
    organ = raw.get("name")
    dimensions = raw.get("dimensions", 2)
    if dimensions not in (2, 3) or isinstance(dimensions, bool):
        raise ValueError(f"organ {organ!r}: dimensions must be 2 or 3, not {dimensions!r}")
    labels = raw.get("labels") or [raw.get("label", organ)]
    valid = isinstance(labels, list) and all(isinstance(v, str) and v.strip() for v in labels)
    if not valid or len(set(labels)) != len(labels) or len(labels) > 255:
        raise ValueError(
            f"organ {organ!r}: labels must be a list of distinct names (mask values 1..N), not {labels!r}"
        )
    inf = raw.get("inference") or {}
    spacing, per_volume = inf.get("spacing_mm"), norm.get("per_volume")
    if dimensions == 2:
        if mode in VOLUME_MODES or spacing is not None or per_volume is not None:
            raise ValueError(
                f"organ {organ!r}: inference.mode {mode!r}, inference.spacing_mm and normalize.per_volume "
                "are for 3-D organs (dimensions: 3)"
            )
        return 2, tuple(labels), None, None
    if mode not in VOLUME_MODES:
        raise ValueError(
            f"organ {organ!r}: a 3-D organ's inference.mode must be one of {', '.join(VOLUME_MODES)}"
        )
    if not (
        isinstance(size, list) and len(size) == 3 and all(_whole(v) and v > 0 and v % 8 == 0 for v in size)
    ):
        raise ValueError(
            f"organ {organ!r}: a 3-D organ needs inference.size [z, y, x], multiples of 8, not {size!r}"
        )
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(_number(v) and v > 0 for v in spacing)):
        raise ValueError(
            f"organ {organ!r}: a 3-D organ needs inference.spacing_mm [z, y, x] (the training voxel size), "
            f"not {spacing!r}"
        )
    if per_volume not in PER_VOLUME_NORMALIZATIONS:
        raise ValueError(
            f"organ {organ!r}: a 3-D organ needs normalize.per_volume, one of "
            f"{', '.join(PER_VOLUME_NORMALIZATIONS)}, not {per_volume!r}"
        )
    return 3, tuple(labels), tuple(float(v) for v in spacing), per_volume


def _translations(raw: object, labels: tuple[str, ...], organ: str | None) -> dict:
    """`translations` checked: {language: {"display_name": text, "labels": {one of `labels`: text}}}."""
    if raw is None:
        return {}
    form = "{language: {display_name: text, labels: {label: text}}}"
    if not isinstance(raw, dict):
        raise ValueError(f"organ {organ!r}: translations must map languages to words, {form}, not {raw!r}")
    for lang, words in raw.items():
        valid = (
            isinstance(lang, str) and isinstance(words, dict) and not set(words) - {"display_name", "labels"}
        )
        names = (words or {}).get("labels", {}) if isinstance(words, dict) else None
        valid = valid and isinstance(words.get("display_name", ""), str) and isinstance(names, dict)
        if not valid or set(names) - set(labels) or not all(isinstance(v, str) for v in names.values()):
            raise ValueError(
                f"organ {organ!r}: translations.{lang} must be {form} with labels among "
                f"{', '.join(labels)}, not {words!r}"
            )
    return raw


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _slice_count(inf: dict, key: str, default: int, organ: str | None) -> int:
    value = inf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VOLUME_CHUNK:
        raise ValueError(
            f"organ {organ!r}: inference.{key} must be a whole number of slices from 1 to "
            f"{MAX_VOLUME_CHUNK}, not {value!r}"
        )
    return value


def _postprocess_3d(raw: object, organ: str | None) -> Postprocess3D:
    fields = [f.name for f in dataclasses.fields(Postprocess3D)]
    if raw is None:
        return Postprocess3D()
    valid = (
        isinstance(raw, dict)
        and not set(raw) - set(fields)
        and all(isinstance(v, bool) for v in raw.values())
    )
    if not valid:
        raise ValueError(
            f"organ {organ!r}: postprocess_3d must map {' and/or '.join(fields)} to true or false, "
            f"not {raw!r}"
        )
    return Postprocess3D(**raw)


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


# the layouts trainer.data.find_pairs reads (see trainer/datasets.py), and "nifti" for a 3-D organ
# (images/X.nii.gz + labels/X.nii.gz, the Medical Segmentation Decathlon's: trainer.volumes)
DATA_LAYOUTS = ("paired", "split", "nifti")
# How the trainer groups pairs into patients when the dataset names no groups (trainer.data.pair_groups):
# "pairs": every pair is its own patient (one tile per patient); "volumes": the pairs are slices cut in order
# from a few volumes, found from the images (trainer.groups.volume_groups).
DATA_GROUPINGS = ("pairs", "volumes")
RECIPE_FIELDS = {
    "arch",
    "widths",
    "budget_minutes",
    "batch_size",
    "samples_per_epoch",
    "val_every",
    "augment",
    "data",
    "crop",
    "precision",
    "ema",
    "loss",
}
# Training forward-pass precision (trainer.loop.TrainConfig.precision): weights stay f32 either way.
PRECISIONS = ("f32", "bf16")
# Training loss (trainer.loop.TrainConfig.loss): "dicefocal" MONAI's DiceFocalLoss with the Dice term per
# image (crop), "dicefocal-batch" the same with the Dice term over the whole batch's pixels, "bce" alone.
LOSSES = ("dicefocal", "dicefocal-batch", "bce")


class RecipeError(ValueError):
    """A recipe.yaml that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class TrainingData:
    """The organ's default training data: `train` resolved against the repository (the folder holding
    services/), `layout` "paired" (`X.png` + `X_mask.png`) or "split" (`images/X` + `masks/X`), and `groups`
    (DATA_GROUPINGS): how its pairs group into patients when a dataset names no groups of its own."""

    train: Path
    layout: str
    groups: str = "pairs"


@dataclass(frozen=True)
class Recipe:
    """How the organ's shipped model is trained (`services/<organ>/recipe.yaml`). `augment` holds
    trainer.augment.AugmentConfig fields (the trainer checks their names); omitted fields take
    trainer.loop.TrainConfig's defaults."""

    organ: str
    arch: str
    budget_minutes: float
    batch_size: int
    data: TrainingData
    widths: tuple[int, ...] | None = None
    samples_per_epoch: int | None = None
    val_every: int = 1
    augment: dict = field(default_factory=dict)
    path: Path | None = None
    crop: tuple[int, ...] | None = None  # 3-D: the training crop (z, y, x); None: the spec's inference.size
    precision: str | None = None  # PRECISIONS; None: TrainConfig's default (f32)
    ema: float | None = None  # the weights' moving average per step (trainer.loop.TrainConfig.ema)
    loss: str | None = None  # LOSSES; None: TrainConfig's default (dicefocal)

    def train_config(self) -> dict:
        """The recipe as trainer.loop.TrainConfig keyword arguments (augment still a dict)."""
        config = {
            "arch": self.arch,
            "time_budget_min": self.budget_minutes,
            "batch_size": self.batch_size,
            "val_every": self.val_every,
            "widths": self.widths,
            "samples_per_epoch": self.samples_per_epoch,
            "precision": self.precision,
            "ema": self.ema,
            "loss": self.loss,
        }
        return {k: v for k, v in config.items() if v is not None}


def _positive(raw: dict, key: str, kind: type, where: str, *, required: bool = True):
    value = raw.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise RecipeError(f"{where}: `{key}` must be a positive {kind.__name__}, not {value!r}")
    if kind is int and int(value) != value:
        raise RecipeError(f"{where}: `{key}` must be a whole number, not {value!r}")
    return kind(value)


def _one_of(raw: dict, key: str, choices: tuple[str, ...], where: str) -> str | None:
    """raw[key] where it is one of choices, None where it is absent."""
    value = raw.get(key)
    if value is not None and value not in choices:
        raise RecipeError(f"{where}: `{key}` must be one of {', '.join(choices)}, not {value!r}")
    return value


def _training_data(raw: object, repo: Path, where: str) -> TrainingData:
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), str):
        raise RecipeError(
            f"{where}: `data` needs `train:` (a folder relative to the repository, e.g. "
            f"../shared/data/<organ>/train) and `layout:` ({' or '.join(DATA_LAYOUTS)})"
        )
    layout = raw.get("layout")
    if layout not in DATA_LAYOUTS:
        raise RecipeError(f"{where}: data.layout must be one of {', '.join(DATA_LAYOUTS)}, not {layout!r}")
    groups = raw.get("groups", "pairs")
    if groups not in DATA_GROUPINGS:
        raise RecipeError(f"{where}: data.groups must be one of {', '.join(DATA_GROUPINGS)}, not {groups!r}")
    return TrainingData(train=(repo / raw["train"]).resolve(), layout=layout, groups=groups)


def recipe_from_dict(raw: object, organ: str, path: Path, repo: Path) -> Recipe:
    """Check a parsed recipe.yaml (`path` is only named in errors); data paths resolve against `repo`."""
    where = str(path)
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping with {', '.join(sorted(RECIPE_FIELDS))}")
    unknown = set(raw) - RECIPE_FIELDS
    if unknown:
        raise RecipeError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"a recipe has {', '.join(sorted(RECIPE_FIELDS))}"
        )
    if not isinstance(raw.get("arch"), str) or not raw["arch"]:
        raise RecipeError(f"{where}: `arch` must name an architecture of services.networks, e.g. erunet")
    widths = raw.get("widths")
    if widths is not None and not (
        isinstance(widths, list) and widths and all(isinstance(w, int) and w > 0 for w in widths)
    ):
        raise RecipeError(f"{where}: `widths` must be a list of positive channel counts, e.g. [12, 24, 48]")
    crop = raw.get("crop")
    if crop is not None and not (
        isinstance(crop, list) and len(crop) == 3 and all(_whole(v) and v > 0 and v % 8 == 0 for v in crop)
    ):
        raise RecipeError(
            f"{where}: `crop` (3-D organs) must be [z, y, x] in multiples of 8, e.g. [32, 48, 32]"
        )
    precision = _one_of(raw, "precision", PRECISIONS, where)
    ema = raw.get("ema")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, int | float) or not 0 < ema < 1):
        raise RecipeError(f"{where}: `ema` must be a decay per step between 0 and 1 (e.g. 0.99), not {ema!r}")
    loss = _one_of(raw, "loss", LOSSES, where)
    augment = raw.get("augment") or {}
    if not isinstance(augment, dict):
        raise RecipeError(f"{where}: `augment` must be a mapping of trainer.augment.AugmentConfig fields")
    return Recipe(
        organ=organ,
        arch=raw["arch"],
        budget_minutes=_positive(raw, "budget_minutes", float, where),
        batch_size=_positive(raw, "batch_size", int, where),
        data=_training_data(raw.get("data"), repo, where),
        widths=tuple(widths) if widths else None,
        samples_per_epoch=_positive(raw, "samples_per_epoch", int, where, required=False),
        val_every=_positive(raw, "val_every", int, where, required=False) or 1,
        augment=augment,
        path=path,
        crop=tuple(crop) if crop else None,
        precision=precision,
        ema=float(ema) if ema is not None else None,
        loss=loss,
    )


def load_recipe(organ: str, services_dir: Path = SERVICES_DIR) -> Recipe:
    """The organ's training recipe, `services/<organ>/recipe.yaml`; data paths resolve against the folder
    holding services/ (the repository)."""
    dirs = organ_dirs(services_dir)
    if organ not in dirs:
        raise KeyError(f"unknown organ {organ!r}; known organs: {', '.join(dirs) or 'none'}")
    path = dirs[organ] / "recipe.yaml"
    if not path.is_file():
        raise RecipeError(
            f"{path} is missing: an organ folder needs a training recipe (copy services/liver/recipe.yaml "
            "and adapt arch, budget_minutes, batch_size and data)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from exc
    return recipe_from_dict(raw, organ, path, Path(services_dir).resolve().parent)
