"""From a finished run to stored artifacts: the .mar + card in a model store folder (`publish_run`), and the
run's files in the runs bucket (`upload_run`). Upload to the models bucket and registration with the
organ's TorchServe are common.model_store."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from common.errors import InvalidInput
from services.spec import load_spec
from trainer.package import build_mar

log = logging.getLogger(__name__)


def default_version() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d.%H%M%S")


def publish_run(
    run_dir: str | Path,
    organ: str,
    out_dir: str | Path,
    version: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Package run_dir/model.ts with its spec into out_dir/<model_name>.mar and write the card beside it."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    version = version or default_version()
    model_name = model_name or organ
    card = json.loads((run_dir / "card.json").read_text())
    card.update({"model_name": model_name, "version": version})
    spec = load_spec(run_dir / "spec.yaml")
    mar = build_mar(
        run_dir / "model.ts", organ, spec, out_dir, model_name=model_name, version=version, card=card
    )
    log.info("packaged %s version %s → %s (%.1f MB)", model_name, version, mar, mar.stat().st_size / 1e6)
    return mar


RUN_FILES = {
    "card.json": "application/json",
    "metrics.json": "application/json",
    "curves.png": "image/png",
    "spec.yaml": "application/yaml",
}


def default_run_id(arch: str, fold: int) -> str:
    return f"{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}-{arch}-fold{fold}"


def upload_run(store, organ: str, run_id: str, run_dir: str | Path) -> list[str]:
    """Upload a finished run's files (card, metrics, curves, spec) to the runs bucket under
    `<organ>/<run_id>/`; returns the keys written. The card names the dataset (id and hash) it came from."""
    run_dir = Path(run_dir)
    if not (run_dir / "card.json").is_file():
        raise InvalidInput(f"{run_dir} holds no finished run (card.json missing)")
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise InvalidInput(f"invalid run id {run_id!r}")
    keys = []
    for name, content_type in RUN_FILES.items():
        path = run_dir / name
        if path.is_file():
            key = f"{organ}/{run_id}/{name}"
            store.put_file(store.buckets.runs, key, path, content_type=content_type)
            keys.append(key)
    log.info("uploaded run %s to %s/%s/%s/", run_id, store.buckets.runs, organ, run_id)
    return keys
