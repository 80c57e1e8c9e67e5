"""Init container of an organ server: put the organ's model into the model store before TorchServe starts.

Environment (ConfigMap `organ-model-<organ>` and `medseg-s3`, Secret `medseg-s3`; the gateway pins the two
version variables in the Deployment itself on promotion and rollback, gateway/service/model_rollout.py):
  MEDSEG_ORGAN            organ name, also the TorchServe model name of every archive
  MEDSEG_MODEL_VERSION    the default: a version registered in the models bucket (common.model_store's layout
                          <organ>/<model>-<version>.mar), or `pinned` (the manifests' value until the gateway
                          pins one): the bucket's pin <organ>/serving.json, which the seed Job writes on a
                          fresh cluster and the gateway on every promotion. Never "the newest archive": pods
                          started at different times serve the same versions.
  MEDSEG_ALSO_SERVE       comma-separated versions loaded beside it (the rollback target, candidates), and
                          the bucket pin's `also_serve` when it pins the same default (candidates recorded
                          since: the gateway adds them there without restarting any replica)
  MEDSEG_MODEL_STORE_DIR  where TorchServe's model store is mounted
  MEDSEG_S3_*             the object store, as for every MedSeg process

Writes <store>/<organ>.mar and, when the bucket has it, the card <store>/<organ>.json, then
<store>/<organ>-<version>.mar for each version to serve beside it; TorchServe loads every archive in the
store (TS_LOAD_MODELS=all). Exits non-zero with the fix in the message when the default cannot be pulled;
the kubelet retries the init container with back-off. A missing extra version is skipped with a warning:
it must not keep the default from serving.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from common.errors import MedSegError, NotFound
from common.model_store import pull_archive, read_pin, store_keys
from common.objectstore import ObjectStore
from common.settings import get_settings

logger = logging.getLogger("pull_model")


PINNED = "pinned"


def resolve(store: ObjectStore, organ: str, version: str, also: list[str]) -> tuple[str, list[str]]:
    """(default version, versions beside it): `version` as given (the Deployment's pin) or, for `pinned`, the
    bucket's; beside it `also` and, when the bucket pins the same default, the bucket's (candidates recorded
    since the Deployment was last pinned: the gateway writes them there without restarting anything)."""
    pin = read_pin(store, organ)
    if version != PINNED:
        beside = pin["also_serve"] if pin is not None and pin["default"] == version else []
        return version, list(dict.fromkeys([*also, *beside]))
    if pin is None:
        raise SystemExit(
            f"no pin {store.buckets.models}/{organ}/serving.json: the seed Job (medseg-seed) has not run "
            "yet on this cluster; it puts the shipped model there (docs/operations.md, 'Deploy on a fresh "
            "cluster')"
        )
    logger.info("%s: the bucket pins version %s (also serving %s)", organ, pin["default"], pin["also_serve"])
    return pin["default"], list(dict.fromkeys([*also, *pin["also_serve"]]))


def choose_mar_key(store: ObjectStore, organ: str, version: str) -> str:
    """Object key of the organ's archive for `version`."""
    bucket = store.buckets.models
    mar_key, _ = store_keys(organ, organ, version)
    if not store.exists(bucket, mar_key):
        raise SystemExit(
            f"{bucket}/{mar_key} not found: register version {version} of {organ} first "
            f"(trainer), or run the seed Job (docs/operations.md)"
        )
    return mar_key


def pull(store: ObjectStore, organ: str, version: str, model_store: Path) -> Path:
    """Download the archive (and its card, if any) as <model_store>/<organ>.mar / .json."""
    bucket = store.buckets.models
    mar_key = choose_mar_key(store, organ, version)
    mar = store.download(bucket, mar_key, model_store / f"{organ}.mar")
    card_key = mar_key[: -len(".mar")] + ".json"
    if store.exists(bucket, card_key):
        store.download(bucket, card_key, model_store / f"{organ}.json")
    logger.info("pulled %s/%s into %s (%d bytes)", bucket, mar_key, mar, mar.stat().st_size)
    return mar


def pull_also(store: ObjectStore, organ: str, versions: list[str], model_store: Path) -> list[Path]:
    """Download each version's archive as <model_store>/<organ>-<version>.mar; missing ones are skipped."""
    bucket, pulled = store.buckets.models, []
    for version in versions:
        mar_key, _ = store_keys(organ, organ, version)
        try:  # the archive as the local start step pulls it too (tools/stack.py)
            pulled.append(pull_archive(store, mar_key, model_store / f"{organ}-{version}.mar"))
        except NotFound:
            logger.warning(
                "%s/%s not found: version %s is not served beside the default", bucket, mar_key, version
            )
            continue
        logger.info("pulled %s/%s to serve beside the default", bucket, mar_key)
    return pulled


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    organ = os.environ.get("MEDSEG_ORGAN", "")
    if not organ:
        raise SystemExit("MEDSEG_ORGAN is not set (ConfigMap organ-model-<organ>)")
    version = os.environ.get("MEDSEG_MODEL_VERSION", PINNED)
    also = [v.strip() for v in os.environ.get("MEDSEG_ALSO_SERVE", "").split(",") if v.strip()]
    settings = get_settings()
    try:
        store, model_store = ObjectStore.from_settings(settings), Path(settings.model_store_dir)
        version, also = resolve(store, organ, version, also)
        pull(store, organ, version, model_store)
        pull_also(store, organ, [v for v in also if v != version], model_store)
    except MedSegError as exc:  # object store down or object vanished: retried by the kubelet
        raise SystemExit(f"could not pull the {organ} model: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
