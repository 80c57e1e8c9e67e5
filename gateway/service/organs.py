"""Organ registry: every `services/<organ>/` folder with a spec.yaml is an organ.

Where its server listens comes from the folder's TorchServe `config.properties` (gRPC inference
port, on `Settings.organ_host`), unless `Settings.organ_addresses` names an address for it
(Kubernetes: one Service per organ).

Which model an organ serves is the default version in the model registry (the database, see
gateway/service/model_registry.py) once `model_source` is set; the shipped card seeds it. Without a registry
entry it is read from the model card beside its archive, `model-store/<organ>.json`
(`{"name": ..., "version": ...}`), falling back to the archive's own MAR-INF/MANIFEST.json. The card is
what the trainer writes when it publishes a model, so the gateway reports the version it shipped without
needing TorchServe's management API (which stays disabled on serving-only organ servers). Both files are
re-read when they change on disk.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidInput, NotFound
from services.spec import OrganSpec, load_spec, organ_dirs

logger = logging.getLogger(__name__)

ORGAN_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DEFAULT_GRPC_INFERENCE_PORT = 7070  # TorchServe's default when config.properties says nothing


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    default_threshold: float | None = None  # the threshold the model's card recommends (validation Dice)


@dataclass(frozen=True)
class Organ:
    name: str
    spec: OrganSpec
    directory: Path
    address: str  # host:port of the organ server's gRPC inference API


def read_properties(path: Path) -> dict[str, str]:
    """Java .properties subset TorchServe uses: key=value lines, # and ! comments."""
    props: dict[str, str] = {}
    if not path.is_file():
        return props
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#!" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def grpc_inference_port(props: dict[str, str]) -> int:
    address = props.get("grpc_inference_address")  # TorchServe ≥0.10 may give host:port
    if address and ":" in address:
        return int(address.rsplit(":", 1)[1])
    return int(props.get("grpc_inference_port", DEFAULT_GRPC_INFERENCE_PORT))


def validate_organ_name(name: str) -> str:
    if not isinstance(name, str) or not ORGAN_NAME.match(name):
        shown = name if isinstance(name, str) and len(name) <= 64 else f"{str(name)[:64]}…"
        raise InvalidInput(
            f"malformed organ name {shown!r}: use lower-case letters, digits, '-' or '_' (e.g. 'liver')",
            code="invalid_organ",
            params={"organ": shown},
        )
    return name


class OrganRegistry:
    """Organs known to this gateway, their addresses and current model."""

    def __init__(
        self,
        services_dir: Path,
        model_store_dir: Path,
        *,
        host: str = "127.0.0.1",
        addresses: dict[str, str] | None = None,
    ):
        self.model_store_dir = model_store_dir
        self._organs: dict[str, Organ] = {}
        for name, directory in organ_dirs(services_dir).items():
            props = read_properties(directory / "config.properties")
            address = (addresses or {}).get(name) or f"{host}:{grpc_inference_port(props)}"
            self._organs[name] = Organ(name, load_spec(directory / "spec.yaml"), directory, address)
        unknown = set(addresses or {}) - set(self._organs)
        if unknown:
            logger.warning("organ addresses given for organs without a services/ folder: %s", sorted(unknown))
        self._model_cache: dict[str, tuple[tuple, ModelInfo]] = {}
        # The model registry in the database (gateway.service.model_registry.ModelDirectory.get): when it
        # names a default for the organ, that is what the gateway serves and labels; the card is the seed.
        self.model_source: Callable[[str], ModelInfo | None] | None = None

    def names(self) -> list[str]:
        return list(self._organs)

    def all(self) -> list[Organ]:
        return list(self._organs.values())

    def get(self, name: str) -> Organ:
        """The organ, or InvalidInput (malformed name) / NotFound (no such organ, listing the known ones)."""
        validate_organ_name(name)
        try:
            return self._organs[name]
        except KeyError:
            raise NotFound(
                f"unknown organ {name!r}; known organs: {', '.join(self._organs) or 'none'}",
                code="unknown_organ",
                params={"organ": name},
            ) from None

    def default_threshold(self, name: str) -> float:
        """The published model's recommended threshold, else the organ spec's."""
        threshold = self.model(name).default_threshold
        return self.get(name).spec.default_threshold if threshold is None else threshold

    def model(self, name: str) -> ModelInfo:
        """Model currently served for the organ: the registry's default when there is one, else the card,
        else the .mar manifest, else name=organ/'unknown'."""
        if self.model_source is not None and (registered := self.model_source(name)) is not None:
            return registered
        card = self.model_store_dir / f"{name}.json"
        mar = self.model_store_dir / f"{name}.mar"
        stamp = tuple(p.stat().st_mtime_ns if p.exists() else None for p in (card, mar))
        cached = self._model_cache.get(name)
        if cached and cached[0] == stamp:
            return cached[1]
        info = _model_from_card(card, _model_from_mar(mar) or ModelInfo(name, "unknown"))
        self._model_cache[name] = (stamp, info)
        return info


def _model_from_card(path: Path, fallback: ModelInfo) -> ModelInfo:
    """The card's name/version (`model_name`/`version`, or a nested `model` object), each field
    falling back to the archive's manifest."""
    if not path.is_file():
        return fallback
    try:
        card = json.loads(path.read_text())
        model = card.get("model") if isinstance(card.get("model"), dict) else card
        name = model.get("model_name") or model.get("name") or fallback.name
        version = model.get("version") or model.get("model_version") or fallback.version
        threshold = card.get("default_threshold")
        return ModelInfo(str(name), str(version), None if threshold is None else float(threshold))
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("unreadable model card %s: %s", path, exc)
        return fallback


def _model_from_mar(path: Path) -> ModelInfo | None:
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        model = manifest["model"]
        return ModelInfo(str(model["modelName"]), str(model.get("modelVersion", "unknown")))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        logger.warning("cannot read the manifest of %s: %s", path, exc)
        return None
