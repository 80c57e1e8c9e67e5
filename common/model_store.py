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

Beside the archives, two small objects per organ make the bucket the truth a Kubernetes cluster starts from
(no organ server needs to run for either):

* `<organ>/serving.json`, the pin: `{"default": v, "also_serve": [...]}`, the versions every organ pod
  pulls when its Deployment names no version (`pinned`, k8s/base/organ-server/pull_model.py). Written once
  by the seed (`seed_shipped`, the cluster's seed Job) and on every promotion, rollback and recorded
  candidate by the gateway (gateway/service/model_rollout.py), so pods started at different times serve
  the same versions, never "the newest archive".
* `<organ>/shipped.json`: `{"version": v}`, the version the organ-server image ships (model-store/), written
  by every seed; the gateway records it in its registry at start (`fetch_shipped_cards`), as it records the
  local model-store/ on one machine.

    python -m common.model_store seed /opt/medseg/model-store   # the seed Job: buckets, archives, pins
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

from common.errors import Conflict, InvalidInput, MedSegError, NotFound, ServiceUnavailable
from common.launcher import KEY_FILE, LauncherError, configured_ports, read_keys, server_dir
from common.objectstore import ObjectStore, sha256_file, sha256_of
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


class PodsManagement:
    """The management API of every replica of an organ server, as one client: what `register_version` needs
    (describe, register, set_default). Kubernetes names the organ's replicas by its headless Service
    (`dns:///torchserve-pods-<organ>:7071`, one A record per ready pod): a new version is registered with
    each pod, so every running replica serves a candidate at once and none restarts; pods that start later
    pull it by the bucket's pin (the gateway writes it when it records the candidate).

    A version counts as registered only when every pod has it (`describe` is NotFound otherwise), and
    `register` skips the pods that already have it, so a registration cut short is completed by running it
    again."""

    def __init__(self, clients: list[ManagementClient], name: str = ""):
        if not clients:
            raise ServiceUnavailable(f"no ready replica of {name or 'the organ server'} to register with")
        self.address = name or ",".join(client.address for client in clients)
        self.clients = clients

    @classmethod
    def from_dns(
        cls,
        target: str,
        key=None,
        *,
        timeout: float = 30.0,
        ca_file: Path | None = None,
        server_name: str | None = None,
        resolve=socket.getaddrinfo,
    ):
        """`dns:///host:port` → one client per address the name resolves to. With TLS (`ca_file`) each
        replica, dialled by its IP address, must present a certificate for `server_name`, by default the
        target's host (the headless Service's name, which every replica's certificate carries)."""
        host, _, port = target.removeprefix("dns:///").rpartition(":")
        try:
            found = resolve(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ServiceUnavailable(f"{host} does not resolve ({exc}): no organ server replica") from None
        ips = sorted({info[4][0] for info in found})
        addresses = [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]
        name = server_name or host
        clients = [
            ManagementClient(address, key, timeout=timeout, ca_file=ca_file, server_name=name)
            for address in addresses
        ]
        return cls(clients, target)

    def describe(self, model_name: str, version: str | None = None, timeout: float | None = None):
        """The first replica's description; NotFound when any replica lacks the version."""
        answers = [client.describe(model_name, version, timeout) for client in self.clients]
        return answers[0]

    def register(self, url: str, model_name: str, version: str | None = None, **kwargs) -> str:
        messages = []
        for client in self.clients:
            if version is not None:
                try:
                    client.describe(model_name, version)
                except NotFound:
                    pass
                else:
                    messages.append(f"{client.address}: already registered")
                    continue
            messages.append(f"{client.address}: {client.register(url, model_name, version, **kwargs)}")
        return "; ".join(messages)

    def set_default(self, model_name: str, version: str, timeout: float | None = None) -> str:
        return "; ".join(client.set_default(model_name, version, timeout) for client in self.clients)

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> PodsManagement:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def management_client(
    organ: str, settings=None, *, address: str | None = None, key: str | None = None, timeout: float = 30.0
):
    """A ManagementClient for the organ's TorchServe (a `PodsManagement` of every replica for a `dns:///`
    address: Kubernetes' headless Service).

    Address: `address`, else `Settings.organ_management_addresses[organ]` (Kubernetes, without a key), else
    `Settings.organ_host` at the organ's configured gRPC management port (services/<organ>/config.properties).
    Key: `key`, else the management key in the key_file.json the local launcher's TorchServe wrote under the
    state dir (re-read on every call, so renewed keys work). TLS: `Settings.organ_tls_ca_file` and
    `organ_tls_server_names` (see common.torchserve_client).
    """
    settings = settings or get_settings()
    tls = {"ca_file": settings.organ_tls_ca_file, "server_name": settings.organ_tls_server_names.get(organ)}
    if address is None and organ in settings.organ_management_addresses:
        # Kubernetes: the organ's headless Service, every replica. TorchServe token auth is off there
        # (NetworkPolicies admit only trainer pods to the management port), so no key unless one is given.
        address = settings.organ_management_addresses[organ]
        if not address.startswith("dns:///"):
            return ManagementClient(address, key, timeout=timeout, **tls)
    if address is not None and address.startswith("dns:///"):
        return PodsManagement.from_dns(address, key, timeout=timeout, **tls)
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
        return ManagementClient(address, lambda: read_keys(key_file).management, timeout=timeout, **tls)
    return ManagementClient(address, key, timeout=timeout, **tls)


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


# --- the bucket as a cluster's truth: pins and shipped versions ------------------------------------------
PIN_NAME = "serving.json"
SHIPPED_NAME = "shipped.json"


def pin_key(organ: str) -> str:
    return f"{organ}/{PIN_NAME}"


def read_pin(store, organ: str) -> dict | None:
    """The organ's pin, `{"default": version, "also_serve": [versions]}`, or None when none is written."""
    try:
        pin = json.loads(store.get_bytes(store.buckets.models, pin_key(organ)))
    except NotFound:
        return None
    except ValueError as exc:
        raise ServiceUnavailable(f"{store.buckets.models}/{pin_key(organ)} is not JSON ({exc})") from None
    if not isinstance(pin, dict) or not NAME.match(str(pin.get("default", ""))):
        raise ServiceUnavailable(f"{store.buckets.models}/{pin_key(organ)} names no default version: {pin}")
    return {"default": pin["default"], "also_serve": [str(v) for v in pin.get("also_serve") or []]}


def write_pin(store, organ: str, default: str, also_serve=()) -> dict:
    """Pin what every pod of the organ pulls from now on (the Deployment's own pin, when it has one, wins)."""
    pin = {"default": default, "also_serve": [v for v in dict.fromkeys(also_serve) if v != default]}
    store.put_bytes(store.buckets.models, pin_key(organ), json.dumps(pin).encode(), "application/json")
    return pin


def shipped_version(mar_path: Path) -> str:
    """The version packed in a shipped archive (what TorchServe registers it as)."""
    version = str(mar_manifest(mar_path).get("modelVersion", ""))
    if not NAME.match(version):
        raise InvalidInput(f"{mar_path} carries no usable modelVersion ({version!r})")
    return version


def seed_shipped(store, shipped_dir: str | Path, organs=None) -> list[dict]:
    """Put the shipped archives of `shipped_dir` (<organ>.mar + <organ>.json, the organ-server image's
    model-store/) into the models bucket as their versions, record each as the organ's shipped version and,
    for an organ without a pin yet (a fresh cluster), pin it as the default. Idempotent: an archive already
    stored is kept (a different one under the same version is a Conflict), an existing pin is never
    changed (the gateway's promotions own it). No organ server is needed. Returns one summary per organ."""
    shipped_dir = Path(shipped_dir)
    store.ensure_buckets()
    done = []
    for organ in sorted(organs or organ_dirs()):
        mar = shipped_dir / f"{organ}.mar"
        if not mar.is_file():
            logger.warning("no %s in %s: nothing to seed for %s", mar.name, shipped_dir, organ)
            continue
        version = shipped_version(mar)
        uploaded = upload_version(store, mar, organ, version)
        store.put_bytes(
            store.buckets.models, f"{organ}/{SHIPPED_NAME}", json.dumps({"version": version}).encode(),
            "application/json",
        )  # fmt: skip
        pin = read_pin(store, organ)
        pinned_now = pin is None
        if pinned_now:
            pin = write_pin(store, organ, version)
        logger.info(
            "%s: shipped version %s in %s/%s; pin %s%s", organ, version, uploaded["bucket"],
            uploaded["mar_key"], pin, " (new)" if pinned_now else " (kept)",
        )  # fmt: skip
        done.append({"organ": organ, "version": version, "mar_key": uploaded["mar_key"], "pin": pin,
                     "pinned_now": pinned_now})  # fmt: skip
    return done


def fetch_shipped_cards(store, dest: str | Path, organs=None) -> list[Path]:
    """The cards of the versions the seed recorded as shipped, as <dest>/<organ>.json (what a gateway in a
    cluster records in its registry at start, like model-store/ on one machine). Organs not seeded yet are
    skipped."""
    dest, fetched = Path(dest), []
    for organ in sorted(organs or organ_dirs()):
        try:
            version = json.loads(store.get_bytes(store.buckets.models, f"{organ}/{SHIPPED_NAME}"))["version"]
            _, card_key = store_keys(organ, organ, str(version))
            dest.mkdir(parents=True, exist_ok=True)
            fetched.append(store.download(store.buckets.models, card_key, dest / f"{organ}.json"))
        except NotFound:
            logger.info("no shipped %s model in the models bucket yet (the seed Job puts it there)", organ)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("%s/%s/%s unreadable: %s", store.buckets.models, organ, SHIPPED_NAME, exc)
        except ServiceUnavailable as exc:  # the registry keeps what it has; the next start records it
            logger.warning("shipped %s model not read from the models bucket: %s", organ, exc.message)
    return fetched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.model_store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    seed = commands.add_parser("seed", help="the shipped archives into the models bucket, pins when missing")
    seed.add_argument("shipped_dir", type=Path, help="folder with <organ>.mar and <organ>.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        done = seed_shipped(ObjectStore.from_settings(get_settings()), args.shipped_dir)
    except MedSegError as exc:  # the store down, or an archive that contradicts a stored one
        print(f"seed failed: {exc.message}", file=sys.stderr)
        return 1
    if not done:
        print(f"seed failed: no <organ>.mar in {args.shipped_dir}", file=sys.stderr)
        return 1
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
