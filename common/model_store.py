"""The model-store protocol: how a packaged model (.mar + card) is stored in the models bucket and
registered as a new version with its organ's TorchServe. Shared by the trainer (uploads and registers
what it packaged), the gateway (training jobs' candidates, rollouts) and the organ servers' init container
(k8s/base/organ-server/pull_model.py), so it lives in common/ and none of them imports another.

    with management_client("liver") as mgmt:
        register_version(store, mgmt, "model-store/liver.mar", "liver", "20250101.120000", set_default=True)

The archive (and the card JSON beside it) goes to the models bucket as `<organ>/<model>-<version>.mar`
(+ `.json`): TorchServe downloads a URL into its model store under the URL's last path segment and
refuses a name it already holds, so the name carries the version. The organ server then fetches it from
a presigned URL (its `allowed_urls` admit the models bucket) through the management API over gRPC.

Versions are immutable: a version TorchServe already serves, or a different archive already stored
under the same version, is a `Conflict`; re-running after a failed registration re-uses the identical
stored archive. An organ server or object store that does not answer is `ServiceUnavailable`.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from datetime import timedelta
from pathlib import Path

from common.errors import Conflict, InvalidInput, MedSegError, NotFound, ServiceUnavailable
from common.launcher import KEY_FILE, LauncherError, configured_ports, read_keys, server_dir
from common.objectstore import sha256_file, sha256_of
from common.settings import get_settings
from common.torchserve_client import ManagementClient
from services.spec import organ_dirs

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
URL_LIFETIME = timedelta(minutes=30)  # TorchServe downloads at once; the margin covers a busy server


def mar_manifest(mar_path: str | Path) -> dict:
    """The `model` section of the archive's MAR-INF/MANIFEST.json (modelName, modelVersion, handler...)."""
    path = Path(mar_path)
    try:
        with zipfile.ZipFile(path) as mar:
            return json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such .mar file") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise InvalidInput(f"{path}: not a TorchServe .mar archive ({exc})") from None


def store_keys(organ: str, model_name: str, version: str) -> tuple[str, str]:
    """Object keys of the archive and its card in the models bucket, unique per version."""
    stem = f"{organ}/{model_name}-{version}"
    return f"{stem}.mar", f"{stem}.json"


def register_version(
    store,
    mgmt_client,
    mar_path: str | Path,
    organ: str,
    version: str,
    *,
    set_default: bool = False,
    model_name: str | None = None,
) -> dict:
    """Upload `mar_path` (+ its card) to the models bucket and register it as `version` of the organ's model.

    `version` must be the version packed in the archive (TorchServe registers that one). The model is
    made the default only with `set_default`. Returns what was done: organ, model_name, version, default,
    bucket, mar_key, card_key (None without a card), sha256, message (TorchServe's).
    Raises InvalidInput (bad archive, version or card), Conflict (version exists), ServiceUnavailable.
    """
    mar_path = Path(mar_path)
    model_name = model_name or organ
    digest, card = _checked_archive(mar_path, organ, version, model_name)
    # Ask the organ server first: nothing is uploaded for a version it already serves or when it is down.
    _refuse_served_version(mgmt_client, organ, model_name, version)
    bucket = store.buckets.models
    mar_key, card_key = _store_archive(store, mar_path, organ, model_name, version, digest, card)
    url = store.presigned_get_url(bucket, mar_key, expires=URL_LIFETIME)
    message = _register_url(mgmt_client, url, organ, model_name, version)
    logger.info("registered %s version %s with the %s organ server: %s", model_name, version, organ, message)
    if set_default:
        _make_default(mgmt_client, organ, model_name, version)
    return {
        "organ": organ,
        "model_name": model_name,
        "version": version,
        "default": set_default,
        "bucket": bucket,
        "mar_key": mar_key,
        "card_key": card_key if card is not None else None,
        "sha256": digest,
        "message": message,
    }


def _refuse_served_version(mgmt_client, organ: str, model_name: str, version: str) -> None:
    """Conflict when the organ server already has `version` (versions are immutable); ServiceUnavailable
    when it cannot say."""
    try:
        mgmt_client.describe(model_name, version)
    except NotFound:
        pass
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(f"cannot register {model_name} {version}: {exc.message}") from exc
    else:
        raise Conflict(
            f"{model_name} version {version} is already registered with the {organ} organ server; "
            "versions are immutable, package the model under a new --version",
            code="version_exists",
        )


def _register_url(mgmt_client, url: str, organ: str, model_name: str, version: str) -> str:
    """Register the archive at `url` (not as the default); returns the organ server's message."""
    try:
        return mgmt_client.register(url, model_name, version=version, set_default=False)
    except Conflict as exc:  # registered by someone else between our check and now
        raise Conflict(
            f"{model_name} version {version} is already registered with the {organ} organ server "
            f"({exc.message})",
            code="version_exists",
        ) from exc
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(f"cannot register {model_name} {version}: {exc.message}") from exc


def _make_default(mgmt_client, organ: str, model_name: str, version: str) -> None:
    # a separate call after the registration: when it fails, the error says what is left to do
    try:
        mgmt_client.set_default(model_name, version)
    except MedSegError as exc:
        raise type(exc)(
            f"{model_name} version {version} is registered but NOT the default ({exc.message}); "
            f"retry with `medseg model register --organ {organ} --set-default` or the management API",
            code=exc.code,
        ) from exc
    logger.info("%s version %s is now the default of the %s organ server", model_name, version, organ)


def upload_version(
    store, mar_path: str | Path, organ: str, version: str, model_name: str | None = None
) -> dict:
    """Upload `mar_path` (+ its card) to the models bucket as `version`, without an organ server (a training
    job's candidate: `register_version` registers it with TorchServe later). Returns organ, model_name,
    version, bucket, mar_key, card_key (None without a card), sha256, card.
    Raises InvalidInput (bad archive, version or card), Conflict (another archive under the version)."""
    mar_path = Path(mar_path)
    model_name = model_name or organ
    digest, card = _checked_archive(mar_path, organ, version, model_name)
    mar_key, card_key = _store_archive(store, mar_path, organ, model_name, version, digest, card)
    return {
        "organ": organ,
        "model_name": model_name,
        "version": version,
        "bucket": store.buckets.models,
        "mar_key": mar_key,
        "card_key": card_key if card is not None else None,
        "sha256": digest,
        "card": card,
    }


def _checked_archive(mar_path: Path, organ: str, version: str, model_name: str) -> tuple[str, dict | None]:
    """(sha256, card or None) of an archive packaged as `version` of a known organ's model."""
    if organ not in organ_dirs():
        raise InvalidInput(f"unknown organ {organ!r}; known organs: {', '.join(organ_dirs())}")
    for what, value in (("model name", model_name), ("version", version)):
        if not isinstance(value, str) or not NAME.match(value):
            raise InvalidInput(
                f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (at most 64, e.g. 2025.1)"
            )
    packed = str(mar_manifest(mar_path).get("modelVersion", ""))
    if packed != version:
        raise InvalidInput(
            f"{mar_path.name} was packaged as version {packed!r}, not {version!r}; TorchServe registers the "
            f"packaged version, so re-package with --version {version} or register it as {packed}"
        )
    digest = sha256_file(mar_path)
    card_path = mar_path.with_suffix(".json")
    return digest, (_read_card(card_path, digest) if card_path.is_file() else None)


def _store_archive(
    store, mar_path: Path, organ: str, model_name: str, version: str, digest: str, card: dict | None
) -> tuple[str, str]:
    """Upload the archive (and the card) under the version's keys in the models bucket."""
    bucket = store.buckets.models
    mar_key, card_key = store_keys(organ, model_name, version)
    _upload_archive(store, bucket, mar_key, mar_path, digest)
    if card is not None:
        store.put_bytes(
            bucket, card_key, json.dumps(card, indent=2, sort_keys=True).encode(), "application/json"
        )
    return mar_key, card_key


def management_client(
    organ: str, settings=None, *, address: str | None = None, key: str | None = None, timeout: float = 30.0
):
    """A ManagementClient for the organ's TorchServe.

    Address: `address`, else `Settings.organ_management_addresses[organ]` (Kubernetes, without a key), else
    `Settings.organ_host` at the organ's configured gRPC management port (services/<organ>/config.properties).
    Key: `key`, else the management key in the key_file.json the local launcher's TorchServe wrote under the
    state dir (re-read on every call, so renewed keys work).
    """
    settings = settings or get_settings()
    if address is None and organ in settings.organ_management_addresses:
        # Kubernetes: the organ's Service. TorchServe token auth is off there (NetworkPolicies admit only
        # trainer pods to the management port), so no key unless one is given.
        return ManagementClient(settings.organ_management_addresses[organ], key, timeout=timeout)
    if address is None:
        try:
            port = configured_ports(organ, Path(settings.services_dir)).grpc_management
        except (FileNotFoundError, KeyError) as exc:
            raise InvalidInput(
                f"no gRPC management port for organ {organ!r} in services/{organ}/config.properties ({exc})"
            ) from exc
        address = f"{settings.organ_host}:{port}"
    if key is None:
        key_file = server_dir(settings.state_dir, organ) / KEY_FILE
        try:
            read_keys(key_file)
        except LauncherError as exc:
            raise ServiceUnavailable(
                f"no management key for the {organ} organ server: {exc} "
                "(start it with `make up`, or pass --management-key-file)"
            ) from exc
        return ManagementClient(address, lambda: read_keys(key_file).management, timeout=timeout)
    return ManagementClient(address, key, timeout=timeout)


def pull_archive(store, mar_key: str, dest: Path, sha256: str | None = None) -> Path:
    """The archive `mar_key` of the models bucket as the file `dest` (an organ server's model store): kept
    when `dest` already holds it (the same sha256, when known), downloaded otherwise. What an organ server's
    start step does for each version it serves (tools/stack.py locally, k8s/base/organ-server/pull_model.py
    in Kubernetes). Raises NotFound (no such archive) or ServiceUnavailable (the store is down)."""
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    store.download(store.buckets.models, mar_key, dest)
    if sha256 is not None and sha256_file(dest) != sha256:
        dest.unlink(missing_ok=True)
        raise Conflict(
            f"{store.buckets.models}/{mar_key} is not the archive that was recorded (sha256 "
            f"{sha256[:12]}…); versions are immutable: register the model under a new version",
            code="version_exists",
        )
    return dest


def _read_card(path: Path, digest: str) -> dict:
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: unreadable model card ({exc})") from None
    if card.get("mar_sha256") not in (None, digest):
        raise InvalidInput(
            f"{path} describes a different archive (sha256 {card['mar_sha256'][:12]}…, the .mar is "
            f"{digest[:12]}…): re-package the model so the card matches"
        )
    return card


def _upload_archive(store, bucket: str, key: str, path: Path, digest: str) -> None:
    """Upload unless the identical archive is already stored; a different one under the key is a Conflict."""
    if store.exists(bucket, key):
        if sha256_of(store.stream(bucket, key)) != digest:
            raise Conflict(
                f"{bucket}/{key} already holds a different archive for this version; versions are "
                "immutable, package the model under a new --version",
                code="version_exists",
            )
        logger.info("%s/%s already stored (same sha256), re-using it", bucket, key)
        return
    store.put_file(bucket, key, path, content_type="application/octet-stream")
