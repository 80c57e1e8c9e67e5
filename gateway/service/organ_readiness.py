"""Whether an organ server on this machine really serves: the readiness of `/readyz` and the organ list.

A TorchServe answers Ping as soon as its Java frontend runs, seconds before a model worker has started Python
and loaded the model; calls in between are refused (503 `organ_unavailable`). So for the organ servers the
local stack runs (`make up`: no `MEDSEG_ORGAN_ADDRESSES` entry, TorchServe's management API on the loopback
address with the key in its key_file.json) an organ is ready only when

* TorchServe's management API describes the version the gateway asks for with at least one READY worker, and
* the stack's re-registration of the registry's other versions (candidates under evaluation) is done: the
  organ's runner leaves `registering` (common.launcher.REGISTERING_FILE) in the server's folder until
  `python -m tools.stack register` has registered them.

In Kubernetes the gateway cannot reach the management ports (NetworkPolicies admit the trainer only); there
the kubelet's probes keep a pod out of its Service until it is ready, and Ping is what the gateway checks.
"""

from __future__ import annotations

from collections.abc import Callable

from common import model_store
from common.errors import MedSegError, NotFound
from common.launcher import REGISTERING_FILE, server_dir
from gateway.service.organs import ModelInfo, OrganRegistry

Probe = Callable[[str, ModelInfo, float], tuple[bool, str]]


def workers_state(described: list[dict]) -> str:
    """The word "ok" when a worker of the described version is READY, else what the workers are doing."""
    states = [w.get("status", "?") for d in described for w in d.get("workers", [])]
    if "READY" in states:
        return "ok"
    return f"model loading (workers: {', '.join(states) or 'none yet'})"


def local_workers_probe(settings, registry: OrganRegistry) -> Probe | None:
    """The probe for the organs whose servers run on this machine (see the module's doc); None when there is
    none (every organ has an address of its own: Kubernetes, or servers a test started)."""
    local = {o.name for o in registry.all() if o.name not in settings.organ_addresses}
    if not local or settings.model_rollout != "torchserve":
        return None

    def probe(organ: str, model: ModelInfo, timeout_s: float) -> tuple[bool, str]:
        if organ not in local:
            return True, "ok"
        version = model.version if model.version != "unknown" else None
        try:
            with model_store.management_client(organ, settings, timeout=timeout_s) as management:
                state = workers_state(management.describe(organ, version))
        except NotFound:
            return False, f"model version {version or 'default'} not loaded"
        except MedSegError as exc:
            return False, f"management API: {exc.code}"
        if state != "ok":
            return False, state
        if (server_dir(settings.state_dir, organ) / REGISTERING_FILE).exists():
            return False, "registering the other served versions"
        return True, "ok"

    return probe
