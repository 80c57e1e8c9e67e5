"""Training jobs as Kubernetes Jobs, against a fake API server (httpx.MockTransport) that serves the trainer
CronJob exactly as `kubectl kustomize k8s/overlays/dev` renders it. Not run against a real cluster.

Checked: the Job copied from the template (image, resources, service account, args with the job's organ,
dataset, architecture and budget), the service-account token on every call, status → job state and
progress, success → the candidate the trainer uploaded is recorded, failure → the reason (Job condition,
container termination, log tail), cancel → DELETE with its pods, a restarted gateway keeps following.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from sqlalchemy import select

from common.errors import Conflict
from common.model_store import PodsManagement
from common.settings import Settings
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.models import AuditLog, Dataset, ModelEvent, ModelVersion, TrainingJob
from gateway.principal import Principal
from gateway.resources.accounts import service as accounts
from gateway.service.kubernetes_jobs import KubernetesLauncher, job_name
from gateway.service.training_jobs import JobRequest, TrainingJobs
from tests.api.conftest import MemoryStore
from tests.k8s.conftest import K8S, by_kind, render

NAMESPACE, TOKEN = "medseg", "sa-token-1"
DATASET = "liver-k8sjobs01"
REQUEST = JobRequest(organ="liver", dataset_id=DATASET, arch="erunet", minutes=5.0, epochs=3,
                     widths=(3, 6, 12), limit=6)  # fmt: skip
EPOCH_LINES = (
    "fetching dataset liver-k8sjobs01\n"
    "2026-11-24 08:00:01 INFO trainer.loop: epoch 1  loss 0.6000  val loss 0.5000  val Dice 0.4000  "
    "(best 0.4000 @ 1)  30s\n"
    "2026-11-24 08:00:31 INFO trainer.loop: epoch 2  loss 0.4500  val loss 0.4000  val Dice 0.5500  "
    "(best 0.5500 @ 2)  60s\n"
)


@pytest.fixture(scope="module")
def dev_objects() -> list[dict]:
    return render(K8S / "overlays" / "dev")


@pytest.fixture(scope="module")
def trainer_template(dev_objects) -> dict:
    return by_kind(dev_objects, "CronJob")["medseg-trainer"]


class FakeApiServer:
    """The namespaced batch/v1 and core/v1 calls the launcher makes, with Job state the test sets."""

    def __init__(self, cronjob: dict):
        self.cronjob = cronjob
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, list[dict]] = {}  # job name → its pods
        self.logs: dict[str, str] = {}  # pod name → log
        self.calls: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, dict]] = []
        self.down = False
        self.forbid_create = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        method, path = request.method, request.url.path
        self.calls.append((method, path))
        batch, core = f"/apis/batch/v1/namespaces/{NAMESPACE}", f"/api/v1/namespaces/{NAMESPACE}"
        if method == "GET" and path == f"{batch}/cronjobs/{self.cronjob['metadata']['name']}":
            return httpx.Response(200, json=self.cronjob)
        if method == "POST" and path == f"{batch}/jobs":
            if self.forbid_create:
                return self._status(403, 'jobs.batch is forbidden: User "system:serviceaccount:medseg:x"')
            body = json.loads(request.content)
            self.jobs[body["metadata"]["name"]] = {**body, "status": {}}
            return httpx.Response(201, json=self.jobs[body["metadata"]["name"]])
        if path.startswith(f"{batch}/jobs/"):
            name = path.rsplit("/", 1)[1]
            if name not in self.jobs:
                return self._status(404, f'jobs.batch "{name}" not found')
            if method == "DELETE":
                self.deleted.append((name, json.loads(request.content or b"{}")))
                return httpx.Response(200, json=self.jobs.pop(name))
            return httpx.Response(200, json=self.jobs[name])
        if method == "GET" and path == f"{core}/pods":
            selector = request.url.params["labelSelector"]
            assert selector.startswith("job-name=")
            return httpx.Response(200, json={"items": self.pods.get(selector.split("=", 1)[1], [])})
        if method == "GET" and path.startswith(f"{core}/pods/") and path.endswith("/log"):
            assert request.url.params["container"] == "trainer"
            return httpx.Response(200, text=self.logs.get(path.split("/")[-2], ""))
        return self._status(404, f"no route {method} {path}")

    @staticmethod
    def _status(code: int, message: str) -> httpx.Response:
        return httpx.Response(
            code, json={"kind": "Status", "status": "Failure", "message": message, "code": code}
        )

    def add_pod(self, job: str, log: str = "", terminated: dict | None = None) -> None:
        pod = f"{job}-x7k2p"
        status = {"name": "trainer", "state": {"terminated": terminated} if terminated else {"running": {}}}
        self.pods[job] = [{"metadata": {"name": pod, "creationTimestamp": "2026-11-24T08:00:00Z"},
                           "status": {"containerStatuses": [status]}}]  # fmt: skip
        self.logs[pod] = log

    def set_condition(self, job: str, kind: str, reason: str | None = None, message: str | None = None):
        condition = {"type": kind, "status": "True", "reason": reason, "message": message}
        self.jobs[job]["status"] = {
            "conditions": [condition],
            ("succeeded" if kind == "Complete" else "failed"): 1,
        }


class Store(MemoryStore):
    def exists(self, bucket, key):
        return (bucket, key) in self.objects


@pytest.fixture
def world(tmp_path, trainer_template):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    run_migrations(url)
    engine = make_engine(url)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    (account / "namespace").write_text(NAMESPACE)
    settings = Settings(state_dir=tmp_path / "state", training_launcher="kubernetes",
                        service_account_dir=account, kubernetes_api_url="https://kubernetes.test",
                        max_running_training_jobs=10)  # fmt: skip
    with session_scope(engine) as session:
        user = accounts.create_user(session, email="res@example.org", password="correct horse battery",
                                    full_name="R", role="researcher", status="active", hospital=None,
                                    actor="test")  # fmt: skip
        session.add(Dataset(id=DATASET, organ="liver", name="k8s", pair_count=6, size_bytes=1,
                            dataset_hash="0" * 64, manifest_key=f"{DATASET}/manifest.json"))  # fmt: skip
        session.flush()
        user_id = user.id
    api = FakeApiServer(trainer_template)
    store = Store()
    launcher = KubernetesLauncher.from_settings(settings, store, transport=api.transport())
    jobs = TrainingJobs(settings, store, launcher=launcher)

    with session_scope(engine) as session:
        from gateway.models import User

        principal = Principal(user=session.get(User, user_id))
    yield engine, api, store, jobs, principal
    engine.dispose()


def _start(engine, jobs, principal) -> TrainingJob:
    with session_scope(engine) as session:
        job = jobs.start(session, principal, REQUEST)
        session.expunge(job)
        return job


def test_the_setting_selects_the_kubernetes_launcher(world):
    _, _, store, jobs, _ = world
    assert isinstance(TrainingJobs(jobs.settings, store).launcher, KubernetesLauncher)


def test_the_job_is_the_templates_copy_with_the_jobs_arguments(world, trainer_template):
    engine, api, _, jobs, principal = world
    job = _start(engine, jobs, principal)
    assert job.state == "running" and job.pid is None
    name = job_name(job)
    assert ("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs/medseg-trainer") in api.calls
    body = api.jobs[name]
    assert (body["apiVersion"], body["kind"], body["metadata"]["name"]) == ("batch/v1", "Job", name)
    assert body["metadata"]["labels"]["medseg.io/training-job"] == str(job.id)
    pod = body["spec"]["template"]
    assert pod["metadata"]["labels"]["medseg.io/training-job"] == str(job.id)
    [container] = pod["spec"]["containers"]
    template = trainer_template["spec"]["jobTemplate"]["spec"]
    [template_container] = template["template"]["spec"]["containers"]
    assert container["image"] == template_container["image"] == "registry.example.org/medseg/trainer:0.1.0"
    assert container["resources"] == template_container["resources"]
    assert container["resources"]["limits"]["memory"] == "8Gi"
    assert container["envFrom"] == template_container["envFrom"]
    assert pod["spec"]["serviceAccountName"] == "medseg-trainer" and pod["spec"]["restartPolicy"] == "Never"
    assert body["spec"]["backoffLimit"] == template["backoffLimit"]
    assert container["args"] == [
        "train", "--organ", "liver", "--dataset", DATASET, "--arch", "erunet",
        "--run-dir", "/work/run", "--run-id", f"job-{job.id}", "--out", "/work/out",
        "--version", job.version, "--minutes", "5.0", "--epochs", "3",
        "--widths", "3,6,12", "--limit", "6", "--folds", "2", "--upload-run", "--register",
    ]  # fmt: skip
    assert "args" not in template_container  # the template itself is left as it was


def test_status_gives_progress_then_success_records_the_uploaded_candidate(world):
    engine, api, store, jobs, principal = world
    job = _start(engine, jobs, principal)
    name = job_name(job)
    api.add_pod(name, log=EPOCH_LINES)
    with session_scope(engine) as session:
        running = jobs.get(session, job.id)
        assert running.state == "running"
        assert jobs.progress(running) == {
            "epochs": [
                {"epoch": 1, "loss": 0.6, "val_dice": 0.4},
                {"epoch": 2, "loss": 0.45, "val_dice": 0.55},
            ],
            "best_val_dice": 0.55,
        }

    card = {
        "model_name": "liver",
        "version": job.version,
        "metrics": {"val_dice": 0.55},
        "mar_sha256": "ab" * 32,
    }
    store.objects[("medseg-models", f"liver/liver-{job.version}.mar")] = b"PK mar"
    store.objects[("medseg-models", f"liver/liver-{job.version}.json")] = json.dumps(card).encode()
    history = [{"epoch": e, "train_loss": 0.5, "val_dice": 0.5 + e / 100} for e in (1, 2, 3)]
    store.objects[("medseg-runs", f"liver/job-{job.id}/metrics.json")] = json.dumps(
        {"history": history, "best_val_dice": 0.53}
    ).encode()
    api.set_condition(name, "Complete")
    with session_scope(engine) as session:
        done = jobs.get(session, job.id)
        assert done.state == "succeeded" and done.error is None, done.error
        assert [e["epoch"] for e in jobs.progress(done)["epochs"]] == [1, 2, 3]
        version = session.get(ModelVersion, done.candidate_version_id)
        assert (version.version, version.state, version.mar_key) == (
            job.version, "candidate", f"liver/liver-{job.version}.mar")  # fmt: skip
        assert version.metrics == {"val_dice": 0.55} and version.card["training_job"] == str(job.id)
        events = session.scalars(select(ModelEvent).where(ModelEvent.version_id == version.id)).all()
        assert [(e.action, e.reason) for e in events] == [
            ("recorded", None),
            ("registered", "by the trainer's Job"),
        ]


def test_a_failed_job_says_why(world):
    engine, api, _, jobs, principal = world
    job = _start(engine, jobs, principal)
    name = job_name(job)
    api.add_pod(name, log=EPOCH_LINES + "Killed\n", terminated={"reason": "OOMKilled", "exitCode": 137})
    api.set_condition(name, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    with session_scope(engine) as session:
        failed = jobs.get(session, job.id)
        assert failed.state == "failed" and failed.candidate_version_id is None
        assert failed.error.startswith(
            f"the Kubernetes Job {name} failed (BackoffLimitExceeded: Job has reached the specified backoff "
            "limit); container trainer: OOMKilled, exit code 137:\n"
        ), failed.error
        assert failed.error.endswith("Killed")  # the log's tail
        assert [e["epoch"] for e in jobs.progress(failed)["epochs"]] == [1, 2]  # as far as it got


def test_cancel_deletes_the_job_with_its_pods(world):
    engine, api, _, jobs, principal = world
    job = _start(engine, jobs, principal)
    with session_scope(engine) as session:
        cancelled = jobs.cancel(session, principal, job.id)
        assert cancelled.state == "cancelled" and cancelled.error == f"cancelled by {principal.actor}"
    assert api.deleted == [(job_name(job), {"propagationPolicy": "Background"})]
    assert job_name(job) not in api.jobs
    with session_scope(engine) as session:
        entry = session.scalar(select(AuditLog).where(AuditLog.action == "training.cancel"))
        assert entry.detail == {"deleted_job": job_name(job)}
        with pytest.raises(Conflict):
            jobs.cancel(session, principal, job.id)


def test_a_restarted_gateway_keeps_following_and_notices_a_vanished_job(world):
    engine, api, store, jobs, principal = world
    job = _start(engine, jobs, principal)
    with session_scope(engine) as session:
        queued = TrainingJob(
            id=uuid.uuid4(), organ="liver", dataset_id=DATASET, arch="erunet", budget_minutes=1, epochs=1,
            state="queued", version="v-q", created_by="t",
        )  # fmt: skip
        session.add(queued)
    restarted = TrainingJobs(jobs.settings, store, launcher=jobs.launcher)
    with session_scope(engine) as session:
        left = restarted.mark_interrupted(session)
        assert [j.version for j in left] == ["v-q"]
        assert "before this job's Kubernetes Job was created" in left[0].error
        assert session.get(TrainingJob, job.id).state == "running"  # the Job runs on in the cluster
    del api.jobs[job_name(job)]  # deleted by someone with kubectl
    with session_scope(engine) as session:
        gone = restarted.get(session, job.id)
        assert gone.state == "failed" and "no longer exists" in gone.error


def test_an_unreachable_or_refusing_api_fails_the_start_with_the_reason(world):
    engine, api, _, jobs, principal = world
    api.down = True
    job = _start(engine, jobs, principal)
    assert job.state == "failed" and job.error.startswith(
        "the trainer could not be started: the Kubernetes API"
    )
    api.down, api.forbid_create = False, True
    job = _start(engine, jobs, principal)
    assert job.state == "failed" and "403" in job.error and "medseg-gateway-trainer-launcher" in job.error


def test_the_jobs_trainer_reaches_the_management_api_the_manifests_name(dev_objects):
    """--register in the Job: the trainer's ConfigMap (k8s/base/trainer) gives the organ's headless
    Service, so the version is registered with every replica; TorchServe token auth is off in the cluster,
    so no key."""
    config = next(
        o
        for o in dev_objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("medseg-trainer")
    )
    addresses = json.loads(config["data"]["MEDSEG_ORGAN_MANAGEMENT_ADDRESSES"])
    assert addresses["liver"] == "dns:///torchserve-pods-liver:7071"  # every replica, by the headless Service
    resolved = [(2, 1, 6, "", ("10.0.0.7", 7071)), (2, 1, 6, "", ("10.0.0.8", 7071))]
    client = PodsManagement.from_dns(addresses["liver"], resolve=lambda host, port, type: resolved)
    try:
        assert [c.address for c in client.clients] == ["10.0.0.7:7071", "10.0.0.8:7071"]
        assert all(c._metadata() == () for c in client.clients)
    finally:
        client.close()


def _state_in_db(engine, job_id) -> str:
    """The job's row as stored, read without the launcher (nothing here reconciles)."""
    with session_scope(engine) as session:
        return session.get(TrainingJob, job_id).state


def _finish_job_in_cluster(api, store, job) -> None:
    card = {"model_name": "liver", "version": job.version, "metrics": {}, "mar_sha256": "cd" * 32}
    store.objects[("medseg-models", f"liver/liver-{job.version}.mar")] = b"PK mar"
    store.objects[("medseg-models", f"liver/liver-{job.version}.json")] = json.dumps(card).encode()
    api.set_condition(job_name(job), "Complete")


def test_the_gateways_watcher_records_a_finished_job_nobody_reads_before_its_ttl(world):
    """Finding 9 of issue 23: the outcome is recorded by the gateway's own loop, not when someone next reads
    the training API; the Job's deletion (its TTL) afterwards loses nothing."""
    import time

    engine, api, store, jobs, principal = world
    job = _start(engine, jobs, principal)
    _finish_job_in_cluster(api, store, job)
    assert _state_in_db(engine, job.id) == "running"  # nobody has looked
    jobs.watch(lambda: session_scope(engine), interval_s=0.05)
    try:
        deadline = time.monotonic() + 60
        while _state_in_db(engine, job.id) == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        jobs.stop_watching()
    assert _state_in_db(engine, job.id) == "succeeded"
    del api.jobs[job_name(job)]  # ttlSecondsAfterFinished: the cluster deletes the finished Job
    with session_scope(engine) as session:
        kept = jobs.get(session, job.id)
        assert kept.state == "succeeded" and kept.error is None
        version = session.get(ModelVersion, kept.candidate_version_id)
        assert (version.version, version.state) == (job.version, "candidate")


def test_a_watcher_round_against_an_unreachable_api_loses_nothing(world):
    engine, api, store, jobs, principal = world
    job = _start(engine, jobs, principal)
    _finish_job_in_cluster(api, store, job)
    api.down = True
    jobs.watch_once(lambda: session_scope(engine))  # logged, not raised: the next round tries again
    assert _state_in_db(engine, job.id) == "running"
    api.down = False
    jobs.watch_once(lambda: session_scope(engine))
    assert _state_in_db(engine, job.id) == "succeeded"
