"""Training jobs as Kubernetes Jobs (MEDSEG_TRAINING_LAUNCHER=kubernetes): the gateway's side of
k8s/base/trainer and the Role in k8s/base/gateway/rbac.yaml.

* The Job is rendered from one source, the cluster's trainer CronJob (`MEDSEG_TRAINER_JOB_TEMPLATE`,
  suspended, from k8s/base/trainer/cronjob.yaml): its `jobTemplate` is copied as
  `kubectl create job --from=cronjob/medseg-trainer` does, and only the trainer container's `args` (the
  job's organ, dataset, architecture and budget), the Job's name and its labels are set here. Image,
  resources, service account, security context and volumes stay what the manifests say.
* The Job is named after the training job (`medseg-train-<job id>`), so nothing else needs storing: a
  restarted gateway finds it again and keeps following it.
* Status: the Job's `Complete` / `Failed` condition. A failure says why: the condition's reason and message,
  the trainer container's termination (e.g. OOMKilled, exit code 137), and the tail of its pod's log.
  Progress while it runs: the trainer logs one line per epoch, read from the pod's log; once it has
  finished, its metrics.json in the runs bucket (the Job runs `--upload-run`).
* The trainer uploads its .mar to the models bucket and registers it with the organ's TorchServe itself
  (`--register`: only trainer pods reach the management ports); the gateway then records the candidate.
* Cancel deletes the Job with its pods (propagationPolicy Background).

The API server is spoken to with httpx and the pod's service-account token (re-read on every call: the
kubelet rotates it), not the `kubernetes` client package, which would add 13 packages (aiohttp among them)
for the six calls made here.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from common.errors import MedSegError, NotFound, ServiceUnavailable
from gateway.models import TrainingJob
from gateway.service.trainer_launch import LOG_TAIL_CHARS, JobRequest, TrainerExit, run_id, trainer_args

logger = logging.getLogger(__name__)

JOB_LABEL = "medseg.io/training-job"
CONTAINER = "trainer"
WORK_DIR = "/work"  # the trainer container's writable volume (k8s/base/trainer/cronjob.yaml)
LOG_LINES = 5000  # enough for every epoch line of a long run
# trainer/loop.py logs each epoch as: "epoch 3  loss 0.4123  val loss 0.3000  val Dice 0.8100  (best …"
EPOCH_LINE = re.compile(
    r"epoch (?P<epoch>\d+)\s+loss (?P<loss>\S+)\s+val loss \S+\s+"
    r"val Dice (?P<dice>\S+)\s+\(best (?P<best>\S+)"
)


def job_name(job: TrainingJob) -> str:
    return f"medseg-train-{job.id}"  # 49 characters: within the 63 a label value allows


class KubernetesApi:
    """The few namespaced calls the launcher makes. Errors: ServiceUnavailable naming what failed."""

    def __init__(
        self,
        base_url: str,
        namespace: str,
        token: Callable[[], str],
        *,
        verify: str | bool = True,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
    ):
        self.namespace = namespace
        self._token = token
        self._client = httpx.Client(base_url=base_url, verify=verify, transport=transport, timeout=timeout_s)

    @classmethod
    def in_cluster(cls, settings, transport: httpx.BaseTransport | None = None) -> KubernetesApi:
        """The API server the pod's service account talks to (its token, CA and namespace)."""
        account = Path(settings.service_account_dir)
        namespace = settings.namespace
        if not namespace:
            try:
                namespace = (account / "namespace").read_text().strip()
            except OSError as exc:
                raise ServiceUnavailable(
                    f"no Kubernetes namespace: set MEDSEG_NAMESPACE or run in a pod with a service account "
                    f"({exc})",
                    code="kubernetes_unavailable",
                ) from None
        ca = account / "ca.crt"

        def token() -> str:
            try:
                return (account / "token").read_text().strip()
            except OSError as exc:
                raise ServiceUnavailable(
                    f"no service-account token at {account / 'token'} ({exc}); the gateway pod needs "
                    "automountServiceAccountToken: true",
                    code="kubernetes_unavailable",
                ) from None

        return cls(
            settings.kubernetes_api_url,
            namespace,
            token,
            verify=str(ca) if ca.is_file() else True,
            transport=transport,
        )

    def _request(self, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"} | (headers or {})
        try:
            response = self._client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"the Kubernetes API did not answer {method} {path}: {exc}", code="kubernetes_unavailable"
            ) from None
        if response.status_code == 404:
            raise NotFound(f"{path}: not found", code="kubernetes_not_found")
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            hint = (
                " (check the gateway's Roles medseg-gateway-trainer-launcher and "
                "medseg-gateway-model-rollout, k8s/base/gateway/rbac.yaml)"
                if response.status_code == 403
                else ""
            )
            raise ServiceUnavailable(
                f"the Kubernetes API refused {method} {path}: {response.status_code} {message[:300]}{hint}",
                code="kubernetes_refused",
            )
        return response

    def _jobs(self) -> str:
        return f"/apis/batch/v1/namespaces/{self.namespace}/jobs"

    def get_cronjob(self, name: str) -> dict:
        return self._request("GET", f"/apis/batch/v1/namespaces/{self.namespace}/cronjobs/{name}").json()

    def create_job(self, body: dict) -> dict:
        return self._request("POST", self._jobs(), json=body).json()

    def get_job(self, name: str) -> dict | None:
        try:
            return self._request("GET", f"{self._jobs()}/{name}").json()
        except NotFound:
            return None

    def delete_job(self, name: str) -> bool:
        """Delete the Job and its pods; False when it was already gone."""
        try:
            self._request("DELETE", f"{self._jobs()}/{name}", json={"propagationPolicy": "Background"})
        except NotFound:
            return False
        return True

    def job_pods(self, name: str) -> list[dict]:
        """The Job's pods, newest first."""
        pods = self._request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods", params={"labelSelector": f"job-name={name}"}
        ).json()
        items = pods.get("items", [])
        return sorted(items, key=lambda p: p.get("metadata", {}).get("creationTimestamp", ""), reverse=True)

    def pod_log(self, pod: str, container: str, tail_lines: int) -> str:
        return self._request(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log",
            params={"container": container, "tailLines": tail_lines},
        ).text

    def _deployment(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    def get_deployment(self, name: str) -> dict:
        return self._request("GET", self._deployment(name)).json()

    def patch_deployment(self, name: str, patch: dict) -> dict:
        """A strategic-merge patch (lists of containers and env merge by name)."""
        return self._request(
            "PATCH",
            self._deployment(name),
            content=json.dumps(patch),
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        ).json()

    def close(self) -> None:
        self._client.close()


def job_from_template(cronjob: dict, name: str, args: list[str], labels: dict[str, str]) -> dict:
    """A batch/v1 Job from the CronJob's jobTemplate (as `kubectl create job --from=cronjob/…`), with the
    trainer container's args set and `labels` added to the Job and its pods."""
    try:
        template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
        pod = template["spec"]["template"]
        containers = pod["spec"]["containers"]
    except (KeyError, TypeError):
        raise ServiceUnavailable(
            f"CronJob {cronjob.get('metadata', {}).get('name')!r} has no jobTemplate with a pod template",
            code="bad_trainer_template",
        ) from None
    trainer = next(
        (c for c in containers if c.get("name") == CONTAINER), containers[0] if containers else None
    )
    if trainer is None:
        raise ServiceUnavailable("the trainer Job template has no container", code="bad_trainer_template")
    trainer["args"] = args
    meta = template.get("metadata") or {}
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": {**(meta.get("labels") or {}), **labels},
            "annotations": {**(meta.get("annotations") or {}), "cronjob.kubernetes.io/instantiate": "manual"},
        },
        "spec": template["spec"],
    }


def job_outcome(job: dict) -> tuple[bool, str | None] | None:
    """None while the Job runs; (True, None) when it completed; (False, reason) when it failed."""
    conditions = {
        c.get("type"): c
        for c in (job.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    if "Complete" in conditions:
        return True, None
    if "Failed" in conditions:
        failed = conditions["Failed"]
        return False, f"{failed.get('reason') or 'Failed'}: {failed.get('message') or 'no message'}"
    return None


def container_termination(pod: dict) -> str | None:
    """How the trainer container of a pod ended, e.g. "OOMKilled, exit code 137"."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != CONTAINER:
            continue
        state = status.get("state") or {}
        ended = state.get("terminated") or (status.get("lastState") or {}).get("terminated")
        if ended:
            text = f"{ended.get('reason') or 'terminated'}, exit code {ended.get('exitCode')}"
            return text + (f": {ended['message']}" if ended.get("message") else "")
        waiting = state.get("waiting")
        if waiting:  # e.g. ImagePullBackOff: it never started
            return f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip()
    return None


def metrics_from_log(text: str) -> dict | None:
    """The trainer's epoch lines → the fields of its metrics.json that make a job's progress."""
    history, best = [], None
    for match in EPOCH_LINE.finditer(text):
        history.append(
            {
                "epoch": int(match["epoch"]),
                "train_loss": _number(match["loss"]),
                "val_dice": _number(match["dice"]),
            }
        )
        best = _number(match["best"])
    return {"history": history, "best_val_dice": best} if history else None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if value != value else value  # NaN is not JSON


class KubernetesLauncher:
    """Runs each training job as a Job in the gateway's namespace (see the module docstring)."""

    uploads_model = True

    def __init__(self, api: KubernetesApi, template: str, store):
        self.api = api
        self.template = template
        self.store = store

    @classmethod
    def from_settings(
        cls, settings, store, transport: httpx.BaseTransport | None = None
    ) -> KubernetesLauncher:
        return cls(KubernetesApi.in_cluster(settings, transport), settings.trainer_job_template, store)

    def body(self, job: TrainingJob, request: JobRequest) -> dict:
        args = trainer_args(job, request, run_dir=f"{WORK_DIR}/run", out=f"{WORK_DIR}/out")
        args += ["--upload-run", "--register"]
        return job_from_template(
            self.api.get_cronjob(self.template), job_name(job), args, {JOB_LABEL: str(job.id)}
        )

    def start(self, job: TrainingJob, request: JobRequest) -> int | None:
        created = self.api.create_job(self.body(job, request))
        logger.info("training job %s: Kubernetes Job %s created", job.id, created["metadata"]["name"])
        return None

    def poll(self, job: TrainingJob) -> TrainerExit | None:
        name = job_name(job)
        try:
            found = self.api.get_job(name)
        except MedSegError as exc:  # the API server is away: the job stays as it is until it answers
            logger.warning("training job %s: cannot read Job %s: %s", job.id, name, exc.message)
            return None
        if found is None:
            return TrainerExit(False, f"the Kubernetes Job {name} no longer exists (deleted outside MedSeg?)")
        outcome = job_outcome(found)
        if outcome is None:
            return None
        ok, condition = outcome
        if ok:
            return TrainerExit(True)
        reason = f"the Kubernetes Job {name} failed ({condition})"
        try:
            pods = self.api.job_pods(name)
        except MedSegError:
            pods = []
        ended = next((t for t in map(container_termination, pods) if t), None)
        return TrainerExit(False, reason + (f"; container {CONTAINER}: {ended}" if ended else ""))

    def cancel(self, job: TrainingJob) -> dict:
        name = job_name(job)
        return {"deleted_job": name if self.api.delete_job(name) else None}

    def interrupted(self, job: TrainingJob) -> str | None:
        if job.state == "queued":  # the gateway stopped before it created the Job
            return "the gateway restarted before this job's Kubernetes Job was created; start the job again"
        return None  # the Job runs on in the cluster: keep following it

    def metrics(self, job: TrainingJob) -> dict | None:
        key = f"{job.organ}/{run_id(job)}/metrics.json"  # uploaded by --upload-run once the run is over
        try:
            return json.loads(self.store.get_bytes(self.store.buckets.runs, key))
        except (NotFound, ValueError):  # still running (or it failed before uploading): its epoch lines
            return metrics_from_log(self.log_tail(job, chars=None))

    def log_tail(self, job: TrainingJob, chars: int | None = LOG_TAIL_CHARS) -> str:
        pods = self.api.job_pods(job_name(job))
        if not pods:
            return ""
        try:
            text = self.api.pod_log(pods[0]["metadata"]["name"], CONTAINER, LOG_LINES)
        except NotFound:
            return ""
        return text if chars is None else text[-chars:]

    def held(self) -> set:
        return set()  # Jobs run in the cluster, not as children of this process

    def stop_all(self) -> None:
        """Jobs run in the cluster, not in this process: nothing to stop here."""
