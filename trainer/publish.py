"""From a finished run to a served model: .mar + card in the model store folder, optionally uploaded to the
object store's models bucket and registered with the organ's TorchServe (management API over gRPC)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from services.spec import load_spec

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
    from trainer.package import build_mar

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
