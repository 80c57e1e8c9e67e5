"""Promotion and rollback in Kubernetes (MEDSEG_MODEL_ROLLOUT=kubernetes), against a fake API server
(httpx.MockTransport) holding the organ Deployments exactly as `kubectl kustomize k8s/overlays/dev` renders
them; a PATCH is applied to them with `kubectl patch --local`, the strategic merge the API server does. Not
run against a real cluster.

Checked: promote → one strategic-merge PATCH of the right Deployment pinning the version on its pull-model
init container, with the rollback target served beside it; the API server down or refusing (403) → 503 with
the database unchanged; an archive the pods could not pull → 409 and no PATCH; the database failing to
commit → the Deployment patched back; rollback pins the previous version; a recorded candidate is served
in the bucket's pin without patching anything (or an event says why not); the gateway's start re-pins only
a Deployment that differs; the setting selects the implementation.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from common.errors import Conflict, ServiceUnavailable
from common.model_store import read_pin
from common.settings import Settings
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.models import AuditLog, ModelEvent, ModelVersion
from gateway.service.model_registry import ModelDirectory, Promotions
from gateway.service.model_rollout import (
    ALSO_SERVE_ENV,
    PULL_CONTAINER,
    VERSION_ENV,
    DeploymentRollout,
    TorchServeRollout,
    build_rollout,
    pin_patch,
)
from tests.db.test_model_registry import ADMIN, REASON, liver_default_and_candidate
from tests.gateway.test_kubernetes_jobs import NAMESPACE, TOKEN, FakeApiServer, Store
from tests.k8s.conftest import K8S, by_kind, render, venv_tool

DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"


@pytest.fixture(scope="module")
def organ_deployments() -> dict[str, dict]:
    objects = render(K8S / "overlays" / "dev")
    return {n: d for n, d in by_kind(objects, "Deployment").items() if n.startswith("torchserve-")}


class FakeDeploymentsApi(FakeApiServer):
    """GET and PATCH of apps/v1 Deployments (`forbid_patch`: the Role does not allow it)."""

    def __init__(self, deployments: dict[str, dict], workdir):
        super().__init__(cronjob={"metadata": {"name": "medseg-trainer"}})
        self.deployments = json.loads(json.dumps(deployments))
        self.patches: list[tuple[str, str, dict]] = []  # (deployment, content type, body)
        self.forbid_patch = False
        self.workdir = workdir

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith(DEPLOYMENTS + "/"):
            return super().handle(request)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        name = request.url.path.rsplit("/", 1)[1]
        self.calls.append((request.method, request.url.path))
        if name not in self.deployments:
            return self._status(404, f'deployments.apps "{name}" not found')
        if request.method == "GET":
            return httpx.Response(200, json=self.deployments[name])
        if request.method == "PATCH":
            if self.forbid_patch:
                return self._status(403, f'deployments.apps "{name}" is forbidden: cannot patch')
            body = json.loads(request.content)
            self.patches.append((name, request.headers["content-type"], body))
            self.deployments[name] = self._merge(self.deployments[name], body)
            return httpx.Response(200, json=self.deployments[name])
        return self._status(405, f"{request.method} not allowed")

    def _merge(self, deployment: dict, patch: dict) -> dict:
        path = self.workdir / "deployment.json"
        path.write_text(json.dumps(deployment))
        result = subprocess.run(
            [venv_tool("kubectl"), "patch", "--local", "-f", str(path), "--type", "strategic",
             "-p", json.dumps(patch), "-o", "json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def pinned(self, name: str, variable: str = VERSION_ENV) -> str | None:
        init = self.deployments[name]["spec"]["template"]["spec"]["initContainers"]
        pull = next(c for c in init if c["name"] == PULL_CONTAINER)
        return next((e["value"] for e in pull.get("env", []) if e["name"] == variable), None)


@pytest.fixture
def world(tmp_path, organ_deployments):
    url = f"sqlite:///{tmp_path / 'rollout.db'}"
    run_migrations(url)
    engine = liver_default_and_candidate(make_engine(url))
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    (account / "namespace").write_text(NAMESPACE)
    settings = Settings(state_dir=tmp_path / "state", model_rollout="kubernetes", service_account_dir=account,
                        kubernetes_api_url="https://kubernetes.test")  # fmt: skip
    store = Store()
    for version in ("1", "2", "3"):
        store.objects[(store.buckets.models, f"liver/liver-{version}.mar")] = b"mar"
    api = FakeDeploymentsApi(organ_deployments, tmp_path)
    rollout = DeploymentRollout.from_settings(settings, store, transport=api.transport())
    yield engine, api, store, Promotions(None, rollout, ModelDirectory(), max_dice_drop=0.02), settings
    engine.dispose()


def _states(engine) -> dict[str, str]:
    with session_scope(engine) as session:
        return {r.version: r.state for r in session.scalars(select(ModelVersion))}


def _promote(engine, promotions, version="2", commit_fails=False):
    with session_scope(engine) as session:
        if commit_fails:
            session.commit = _failing_commit
        return promotions.promote(session, ADMIN, "liver", version, force=True, reason=REASON)


def _failing_commit():
    raise OperationalError("COMMIT", {}, Exception("database is locked"))


def _audits(engine) -> list[str]:
    with session_scope(engine) as session:
        return list(session.scalars(select(AuditLog.action)))


def test_the_setting_selects_the_implementation(world):
    _, _, store, _, settings = world
    assert isinstance(build_rollout(settings, store, management=None), DeploymentRollout)
    local = Settings(state_dir=settings.state_dir)
    assert local.model_rollout == "torchserve"
    assert isinstance(build_rollout(local, store, management=lambda organ: None), TorchServeRollout)


def test_promote_patches_the_organs_deployment_with_the_version(world):
    engine, api, _, promotions, _ = world
    _promote(engine, promotions)
    # 1 stays served beside it: a rollback needs no replica to pull anything first
    patch = ("torchserve-liver", "application/strategic-merge-patch+json", pin_patch("2", ["1"]))
    assert api.patches == [patch]
    assert api.pinned("torchserve-liver") == "2" and api.pinned("torchserve-liver", ALSO_SERVE_ENV) == "1"
    assert api.pinned("torchserve-cells") is None
    assert _states(engine) == {"1": "retired", "2": "default"}
    assert not [c for c in api.calls if c[1].endswith("torchserve-cells")]


@pytest.mark.parametrize("failure", ["down", "forbidden"])
def test_an_unreachable_or_refusing_api_is_a_503_and_changes_nothing(world, failure):
    engine, api, _, promotions, _ = world
    api.down = failure == "down"
    api.forbid_patch = failure == "forbidden"
    with pytest.raises(ServiceUnavailable) as refused:
        _promote(engine, promotions)
    assert refused.value.http_status == 503 and refused.value.code == "organ_unavailable"
    assert "nothing was changed" in refused.value.message
    if failure == "forbidden":
        assert "403" in refused.value.message and "medseg-gateway-model-rollout" in refused.value.message
    assert _states(engine) == {"1": "default", "2": "candidate"} and "model.promote" not in _audits(engine)
    assert api.pinned("torchserve-liver") is None


def test_a_version_the_pods_could_not_pull_is_refused_before_any_patch(world):
    engine, api, store, promotions, _ = world
    del store.objects[(store.buckets.models, "liver/liver-2.mar")]
    with pytest.raises(Conflict) as refused:
        _promote(engine, promotions)
    assert refused.value.code == "version_not_registered" and "liver/liver-2.mar" in refused.value.message
    assert api.patches == [] and _states(engine) == {"1": "default", "2": "candidate"}


def test_a_failed_commit_patches_the_deployment_back(world):
    engine, api, _, promotions, _ = world
    with pytest.raises(ServiceUnavailable) as failed:
        _promote(engine, promotions, commit_fails=True)
    assert "locked" in failed.value.message
    assert [body for _, _, body in api.patches] == [pin_patch("2", ["1"]), pin_patch("1", ["2"])]
    assert api.pinned("torchserve-liver") == "1" and _states(engine) == {"1": "default", "2": "candidate"}


def test_a_failed_commit_whose_patch_back_fails_says_what_to_run(world):
    engine, api, _, promotions, _ = world

    def commit_fails_and_api_goes_away():
        api.down = True
        _failing_commit()

    with pytest.raises(ServiceUnavailable) as failed, session_scope(engine) as session:
        session.commit = commit_fails_and_api_goes_away
        promotions.promote(session, ADMIN, "liver", "2", force=True, reason=REASON)
    assert failed.value.code == "default_out_of_sync"
    assert "kubectl patch deployment torchserve-liver --type strategic" in failed.value.message
    assert json.dumps(pin_patch("1", ["2"]), separators=(",", ":")) in failed.value.message
    assert api.pinned("torchserve-liver") == "2" and _states(engine) == {"1": "default", "2": "candidate"}


def test_rollback_pins_the_previous_version(world):
    engine, api, _, promotions, _ = world
    _promote(engine, promotions)

    api.forbid_patch = True  # refused: nothing changes
    with pytest.raises(ServiceUnavailable), session_scope(engine) as session:
        promotions.rollback(session, ADMIN, "liver", reason="worse on real cases")
    assert api.pinned("torchserve-liver") == "2" and _states(engine) == {"1": "retired", "2": "default"}

    api.forbid_patch = False
    with session_scope(engine) as session:
        assert promotions.rollback(session, ADMIN, "liver", reason="worse on real cases").version == "1"
    assert [body for _, _, body in api.patches] == [pin_patch("2", ["1"]), pin_patch("1")]
    assert api.pinned("torchserve-liver") == "1" and _states(engine) == {"1": "default", "2": "retired"}
    assert api.pinned("torchserve-liver", ALSO_SERVE_ENV) == ""  # the retired 2 is no longer pulled


def test_a_deployment_without_the_pull_container_is_never_patched(world):
    engine, api, _, promotions, _ = world
    api.deployments["torchserve-liver"]["spec"]["template"]["spec"]["initContainers"] = []
    with pytest.raises(ServiceUnavailable) as refused:
        _promote(engine, promotions)
    assert "pull-model" in refused.value.message and api.patches == []
    assert _states(engine) == {"1": "default", "2": "candidate"}


def _record_candidate(engine, promotions, version: str) -> None:
    with session_scope(engine) as session:
        session.add(ModelVersion(organ="liver", model_name="liver", version=version, state="candidate",
                                 created_by="t"))  # fmt: skip
        session.commit()
        promotions.serve_candidates(session, "liver")


def test_a_recorded_candidate_is_pinned_in_the_bucket_and_restarts_nothing(world):
    """Issue 23, finding 5: the running replicas have the candidate from the trainer's registration with
    every pod (common.model_store.PodsManagement); pods that start later pull it by the bucket's pin."""
    engine, api, store, promotions, _ = world
    _record_candidate(engine, promotions, "3")
    assert api.patches == []  # the pod template is unchanged: no replica restarts
    assert read_pin(store, "liver") == {"default": "1", "also_serve": ["3", "2"]}  # newest candidates first
    assert _states(engine) == {"1": "default", "2": "candidate", "3": "candidate"}


def test_the_gateways_start_writes_the_pin_and_re_pins_only_a_deployment_that_differs(world):
    engine, api, store, promotions, _ = world
    with session_scope(engine) as session:
        promotions.serve_registered(session)
    assert api.patches == []  # the manifests say `pinned`: the bucket's pin, just written; nothing rolls
    assert read_pin(store, "liver") == {"default": "1", "also_serve": ["2"]}
    # a Deployment pinned to a version the registry does not name (a patch back that failed) is pinned again
    api.deployments["torchserve-liver"] = api._merge(api.deployments["torchserve-liver"], pin_patch("2"))
    with session_scope(engine) as session:
        promotions.serve_registered(session)
    assert [body for _, _, body in api.patches] == [pin_patch("1", ["2"])]
    assert api.pinned("torchserve-liver") == "1"
    api.down = True  # the API down at start: logged, the gateway starts anyway
    with session_scope(engine) as session:
        promotions.serve_registered(session)


def test_a_candidate_the_bucket_cannot_pin_stays_recorded_with_the_reason(world, monkeypatch):
    engine, api, store, promotions, _ = world

    def store_down(*args, **kwargs):
        raise ServiceUnavailable("object store unavailable: put")

    monkeypatch.setattr(store, "put_bytes", store_down)
    _record_candidate(engine, promotions, "3")
    assert api.patches == [] and _states(engine)["3"] == "candidate"
    with session_scope(engine) as session:
        event = session.scalar(select(ModelEvent).where(ModelEvent.action == "not_served"))
        assert session.get(ModelVersion, event.version_id).version == "3"
        assert "could not be written" in event.reason


def test_promotion_writes_the_buckets_pin_beside_the_deployments(world):
    engine, api, store, promotions, _ = world
    _promote(engine, promotions)
    assert api.pinned("torchserve-liver") == "2"
    assert read_pin(store, "liver") == {"default": "2", "also_serve": ["1"]}
