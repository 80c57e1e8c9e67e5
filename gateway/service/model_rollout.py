"""How an organ's serving default follows the database when a version is promoted or rolled back.

One interface (`ModelRollout.set_default`), two implementations chosen by `Settings.model_rollout`
(MEDSEG_MODEL_ROLLOUT, `build_rollout`):

* `torchserve` (local, the default): the organ's TorchServe management API sets its default version. Every
  version the trainer registered is loaded in that one process, so the change is immediate.
* `kubernetes` (the gateway's ConfigMap in k8s/base/gateway): the Deployment `torchserve-<organ>` gets the
  versions pinned in its pod template, as environment variables of the `pull-model` init container
  (k8s/base/organ-server/pull_model.py reads them; a container's `env` wins over the `organ-model-<organ>`
  ConfigMap it also loads with `envFrom`): `MEDSEG_MODEL_VERSION`, the default, and `MEDSEG_ALSO_SERVE`, the
  versions every replica loads beside it (the one a rollback restores and the newest candidates, so the
  promotion gate and doctors' tests reach a candidate on any replica). TorchServe loads every archive pulled
  (`TS_LOAD_MODELS=all`) and the gateway always names the version it asks for. The template changes, so the
  Deployment rolls every replica (maxUnavailable 0), and a restarted pod pulls the same versions again.
  The models bucket's pin (`<organ>/serving.json`, common.model_store) is written beside it: pods of a
  Deployment the gateway has not pinned yet (a fresh cluster) pull that.
  A recorded candidate (`serve`) restarts nothing: it goes into the bucket's pin, which pods starting later
  load, and the running replicas already have it, since the trainer registered it with every pod's
  management API (the management ports stay trainer-only).

`model_registry.Promotions` calls `set_default` before committing the database and again with the previous
version when the commit fails; an implementation raises `Conflict` when the version cannot be served and
`ServiceUnavailable` when what it talks to does not answer, in both cases having changed nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from common.errors import Conflict, MedSegError, NotFound, ServiceUnavailable
from common.model_store import store_keys, write_pin
from gateway.service.kubernetes_jobs import KubernetesApi

logger = logging.getLogger(__name__)

PULL_CONTAINER = "pull-model"  # the init container of k8s/base/organ-server/deployment.yaml
VERSION_ENV = "MEDSEG_MODEL_VERSION"
ALSO_SERVE_ENV = "MEDSEG_ALSO_SERVE"

ManagementFactory = Callable[[str], AbstractContextManager]  # organ → ManagementClient (context manager)


class ModelRollout(Protocol):
    """Makes `version` of `model_name` what the organ's servers serve by default, with the versions
    `also_serve` (of the same model) still or newly served beside it."""

    def set_default(
        self, organ: str, model_name: str, version: str, also_serve: Sequence[str] = ()
    ) -> None: ...

    def serve(self, organ: str, model_name: str, default: str, also_serve: Sequence[str]) -> None:
        """Make the servers load `also_serve` beside the unchanged `default` (a candidate was recorded)."""
        ...

    def manual_fix(self, organ: str, model_name: str, version: str, also_serve: Sequence[str] = ()) -> str:
        """The command an operator runs to make the servers serve `version` again by hand."""
        ...


class TorchServeRollout:
    """The organ's TorchServe management API (`management`: organ → ManagementClient context manager)."""

    def __init__(self, management: ManagementFactory):
        self.management = management

    def set_default(self, organ: str, model_name: str, version: str, also_serve: Sequence[str] = ()) -> None:
        """`also_serve` is already served: every version registered with this one process stays loaded."""
        try:
            with self.management(organ) as mgmt:
                mgmt.set_default(model_name, version)
        except NotFound as exc:
            raise Conflict(
                f"the {organ} organ server does not have {model_name} version {version} "
                f"registered ({exc.message}); register it first (medseg model register)",
                code="version_not_registered",
            ) from None
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(
                f"the {organ} organ server's management API did not answer ({exc.message}); "
                "nothing was changed",
                code="organ_unavailable",
            ) from None

    def serve(self, organ: str, model_name: str, default: str, also_serve: Sequence[str]) -> None:
        """Nothing to do: a candidate is loaded when it is registered (common.model_store)."""

    def manual_fix(self, organ: str, model_name: str, version: str, also_serve: Sequence[str] = ()) -> str:
        return f"medseg model set-default --organ {organ} --version {version}"


def deployment_name(organ: str) -> str:
    return f"torchserve-{organ}"  # k8s/base/organs/<organ>: nameSuffix -<organ> on `torchserve`


def pin_patch(version: str, also_serve: Sequence[str] = ()) -> dict:
    """Strategic-merge patch of a Deployment: the pull-model init container's MEDSEG_MODEL_VERSION and
    MEDSEG_ALSO_SERVE (always set, so an earlier list is replaced)."""
    env = [{"name": VERSION_ENV, "value": version}, {"name": ALSO_SERVE_ENV, "value": ",".join(also_serve)}]
    return {"spec": {"template": {"spec": {"initContainers": [{"name": PULL_CONTAINER, "env": env}]}}}}


class DeploymentRollout:
    """Pins the version in the organ Deployment's pod template through the Kubernetes API (`api`: a
    kubernetes_jobs.KubernetesApi); `store` checks the archive the pods will pull is in the models bucket."""

    def __init__(self, api, store):
        self.api = api
        self.store = store

    @classmethod
    def from_settings(cls, settings, store, transport=None) -> DeploymentRollout:
        return cls(KubernetesApi.in_cluster(settings, transport), store)

    def set_default(self, organ: str, model_name: str, version: str, also_serve: Sequence[str] = ()) -> None:
        """Archives of `also_serve` missing from the bucket are skipped by the pods (pull_model.py warns)."""
        if model_name != organ:  # the pods load <organ>.mar under the model name <organ> (TS_LOAD_MODELS)
            raise Conflict(
                f"the {organ} organ servers serve the model name {organ!r}, not {model_name!r}: in the "
                f"cluster only versions archived as {organ}/{organ}-<version>.mar can be the default",
                code="version_not_registered",
            )
        mar_key, _ = store_keys(organ, organ, version)
        if not self.store.exists(self.store.buckets.models, mar_key):  # ServiceUnavailable when it is down
            raise Conflict(
                f"no {self.store.buckets.models}/{mar_key}: the {organ} pods could not pull version "
                f"{version}; the trainer uploads it (common.model_store)",
                code="version_not_registered",
            )
        name = deployment_name(organ)
        try:
            deployment = self.api.get_deployment(name)
            _pull_container(deployment, name)
            self.api.patch_deployment(name, pin_patch(version, also_serve))
        # NotFound too: a missing Deployment is the cluster's fault, not the caller's
        except MedSegError as exc:
            raise ServiceUnavailable(
                f"the {organ} Deployment {name} could not be set to version {version} ({exc.message}); "
                "nothing was changed",
                code="organ_unavailable",
            ) from None
        logger.info(
            "%s: Deployment %s pinned to version %s (also serving %s); its replicas roll to it",
            organ, name, version, ", ".join(also_serve) or "nothing else",
        )  # fmt: skip
        try:  # the bucket's pin follows: what a Deployment without its own pin (re-created) pulls
            write_pin(self.store, organ, version, also_serve)
        except MedSegError as exc:
            logger.warning("%s: Deployment pinned, the bucket's pin not updated: %s", organ, exc)

    def serve(self, organ: str, model_name: str, default: str, also_serve: Sequence[str]) -> None:
        """A recorded candidate (and the gateway's start): the bucket's pin names it, so every pod that starts
        from now on loads it; the running replicas got it from the trainer, which registers a new version
        with every pod's management API (common.model_store.PodsManagement). The Deployment is not touched,
        so nothing restarts, unless its pinned default is not `default` (a patch that failed earlier): then
        it is pinned again, which rolls it."""
        try:
            write_pin(self.store, organ, default, also_serve)
        except MedSegError as exc:
            raise ServiceUnavailable(
                f"the {organ} pin in the models bucket could not be written ({exc.message})",
                code="organ_unavailable",
            ) from None
        name = deployment_name(organ)
        try:
            env = _pull_container(self.api.get_deployment(name), name).get("env") or []
        except MedSegError as exc:  # the pin is written, what a candidate needs; the check waits for later
            logger.warning("%s: Deployment %s not checked against the pin: %s", organ, name, exc.message)
            return
        pinned = next((e.get("value") for e in env if e.get("name") == VERSION_ENV), None)
        if pinned not in (None, default):  # None: the manifests' `pinned`, i.e. the bucket's pin just written
            self.set_default(organ, model_name, default, also_serve)

    def manual_fix(self, organ: str, model_name: str, version: str, also_serve: Sequence[str] = ()) -> str:
        import json

        return (
            f"kubectl patch deployment {deployment_name(organ)} --type strategic "
            f"-p '{json.dumps(pin_patch(version, also_serve), separators=(',', ':'))}'"
        )


def _pull_container(deployment: dict, name: str) -> dict:
    """The init container the patch changes; without it a strategic merge would add a bare container."""
    init = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("initContainers") or []
    found = next((c for c in init if c.get("name") == PULL_CONTAINER), None)
    if found is None:
        raise ServiceUnavailable(
            f"Deployment {name} has no init container {PULL_CONTAINER!r} "
            "(k8s/base/organ-server/deployment.yaml)",
            code="bad_organ_deployment",
        )
    return found


def build_rollout(settings, store, management: ManagementFactory) -> ModelRollout:
    """The rollout `Settings.model_rollout` names (`management`: the local TorchServe clients)."""
    if settings.model_rollout == "kubernetes":
        return DeploymentRollout.from_settings(settings, store)
    return TorchServeRollout(management)
