"""The inference key the gateway sends to an organ server (TorchServe token authorization)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def inference_key(settings, organ: str) -> str | None:
    """`Settings.organ_inference_keys[organ]` (Kubernetes Secret), else the key_file.json that the local
    organ server wrote under the state dir — re-read on every call, because TorchServe rewrites it when
    keys are renewed. None when there is none (the organ server then refuses, which reads as unavailable)."""
    if key := settings.organ_inference_keys.get(organ):
        return key
    from common.launcher import LauncherError, read_keys, server_dir

    try:
        return read_keys(server_dir(settings.state_dir, organ) / "key_file.json").inference
    except LauncherError as exc:
        logger.debug("no inference key for %s: %s", organ, exc)
        return None
