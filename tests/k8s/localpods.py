"""Run the containers of rendered Kubernetes workloads as local processes, as a kubelet would run them.

A container runs with the command and args the manifest renders (else its image's ENTRYPOINT/CMD, read from
k8s/images/Dockerfile), the environment the manifest and the image give it (env with $(VAR) references,
envFrom, configMapKeyRef, secretKeyRef, fieldRef, the image's ENV), its working directory and its volumes:
every mounted ConfigMap (and Secret, from the test's stand-ins) is written into a temporary directory,
every emptyDir is one (shared by the pod's containers), and each container path under a mount is mapped
to it, as are the image paths that hold the repository's files (the Dockerfile's COPY, `image_paths`).
What stands in for the cluster's network is explicit: `rewrites` (service host:port → a local address, in
any env value or argument) and `exact` (a whole value, e.g. a listening port the container declares, or
0.0.0.0 → 127.0.0.1); `overrides` replace a variable outright.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "k8s" / "images" / "Dockerfile"
NAMESPACE = "medseg"


@dataclass
class Image:
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources in the context, dest)


def dockerfile_images(path: Path = DOCKERFILE) -> dict[str, Image]:
    """Every stage of the Dockerfile by name: its ENV (inherited from the stage it builds on), ENTRYPOINT,
    CMD, WORKDIR and the files it copies from the build context (not from other stages)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Image] = {}
    current = Image()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            base = stages.get(parts[0])
            current = Image(dict(base.env), base.entrypoint, base.cmd, base.workdir, list(base.copies)) \
                if base else Image()  # fmt: skip
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages[parts[2]] = current
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                if "$" not in value:  # PATH=/opt/venv/bin:$PATH: the venv is this interpreter's here
                    current.env[key] = value
        elif word in ("CMD", "ENTRYPOINT"):
            value = json.loads(rest)
            if word == "CMD":
                current.cmd = value
            else:
                current.entrypoint, current.cmd = value, None
        elif word == "WORKDIR":
            current.workdir = rest.strip()
        elif word == "COPY" and "--from=" not in rest:
            *sources, dest = shlex.split(rest)
            current.copies.append((sources, dest))
    return stages


def repository_files(image: Image) -> dict[str, Path]:
    """Absolute image paths the image's COPY instructions fill from the repository → those repository paths
    (a folder for `COPY dir/*.x /dest/`, the file for `COPY a/file /dest/file`)."""
    paths = {}
    for sources, dest in image.copies:
        if not dest.startswith("/"):
            continue
        parents = {Path(source).parent for source in sources}
        if dest.endswith("/") and len(parents) == 1:
            paths[dest.rstrip("/")] = REPO / parents.pop()
        elif len(sources) == 1:
            paths[dest] = REPO / sources[0]
    return paths


def image_of(container: dict) -> str:
    """medseg/organ-server:0.1.0 (or a registry's name for it) → the Dockerfile target organ-server."""
    return container["image"].rsplit("/", 1)[-1].split("@")[0].split(":")[0]


class LocalPod:
    """One rendered pod: its volumes as directories under `root`, its containers as processes."""

    def __init__(
        self,
        workload: dict,
        objects: list[dict],
        root: Path,
        *,
        secrets: dict[str, dict[str, str]],
        rewrites: dict[str, str] | None = None,
        exact: dict[str, str] | None = None,
        overrides: dict[str, str] | None = None,
        image_paths: dict[str, Path] | None = None,
    ):
        self.workload = workload
        kind = workload["kind"]
        template = workload["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" \
            else workload["spec"]["template"]  # fmt: skip
        self.spec = template["spec"]
        self.config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        self.secrets = secrets
        self.root = root
        self.rewrites = dict(rewrites or {})
        self.exact = dict(exact or {})
        self.overrides = dict(overrides or {})
        self.images = dockerfile_images()
        self.image_paths = dict(image_paths or {})
        self.volumes = self._volumes()
        self.processes: list[subprocess.Popen] = []

    # --- volumes and paths ------------------------------------------------------------------------------
    def _volumes(self) -> dict[str, Path]:
        dirs = {}
        for volume in self.spec.get("volumes", []):
            path = self.root / "volumes" / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                data = self.config_maps[volume["configMap"]["name"]].get("data", {})
                for name, text in data.items():
                    (path / name).write_text(text)
            elif "secret" in volume:  # the test's stand-in Secret, key per file
                name = volume["secret"]["secretName"]
                if name not in self.secrets and not volume["secret"].get("optional"):
                    raise AssertionError(f"volume {volume['name']}: secret {name} is not provided")
                for key, text in self.secrets.get(name, {}).items():
                    (path / key).write_text(text)
            elif "emptyDir" not in volume:
                raise AssertionError(f"volume {volume['name']}: only configMap, secret and emptyDir run here")
            dirs[volume["name"]] = path
        return dirs

    def container(self, name: str) -> dict:
        return next(
            c for c in self.spec.get("initContainers", []) + self.spec["containers"] if c["name"] == name
        )

    def mounts(self, container: dict) -> dict[str, Path]:
        """Container path → local directory: the volume mounts, then the image paths."""
        mounts = {m["mountPath"]: self.volumes[m["name"]] for m in container.get("volumeMounts", [])}
        home = self.root / "home" / container["name"]
        home.mkdir(parents=True, exist_ok=True)
        image = repository_files(self.images[image_of(container)])
        return {**image, **self.image_paths, "/home/medseg": home, **mounts}

    def localize(self, value: str, mounts: dict[str, Path]) -> str:
        if value in self.exact:
            return self.exact[value]
        for path in sorted(mounts, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return str(mounts[path]) + value[len(path) :]
        for old, new in self.rewrites.items():
            value = value.replace(old, new)
        return value

    # --- environment and command ------------------------------------------------------------------------
    def environment(self, container: dict) -> dict[str, str]:
        image = self.images[image_of(container)]
        env = dict(image.env)
        for source in container.get("envFrom", []):
            if ref := source.get("configMapRef"):
                env.update(self.config_maps[ref["name"]]["data"])
            elif ref := source.get("secretRef"):
                env.update(self.secrets.get(ref["name"], {}))
        for entry in container.get("env", []):
            value = self._value(entry, env)
            if value is not None:
                env[entry["name"]] = value
        mounts = self.mounts(container)
        env = {k: self.localize(v, mounts) for k, v in env.items()}
        env.update(self.overrides)
        return env

    def _value(self, entry: dict, env: dict[str, str]) -> str | None:
        if "value" in entry:  # $(VAR) names an earlier variable, as the kubelet expands it
            return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), entry["value"])
        source = entry["valueFrom"]
        if ref := source.get("configMapKeyRef"):
            return self.config_maps[ref["name"]]["data"].get(ref["key"])
        if ref := source.get("secretKeyRef"):
            value = self.secrets.get(ref["name"], {}).get(ref["key"])
            if value is None and not ref.get("optional"):
                raise AssertionError(f"secret {ref['name']}/{ref['key']} is not provided")
            return value
        if source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            return NAMESPACE
        raise AssertionError(f"env {entry['name']}: {source} does not run locally")

    def command(self, container: dict) -> list[str]:
        image = self.images[image_of(container)]
        argv = list(container.get("command") or image.entrypoint or [])
        argv += list(container.get("args") or ([] if container.get("command") else image.cmd or []))
        mounts = self.mounts(container)
        argv = [self.localize(a, mounts) for a in argv]
        if argv[0] == "python":
            return [sys.executable, *argv[1:]]
        if argv[0] == "medseg":  # the distribution's console script
            return [sys.executable, "-m", "common.cli", *argv[1:]]
        return argv

    def workdir(self, container: dict) -> Path:
        image = self.images[image_of(container)]
        path = Path(self.localize(container.get("workingDir") or image.workdir, self.mounts(container)))
        assert path.is_dir(), f"{container['name']}: working directory {path} is not a mounted volume"
        return path

    # --- running ----------------------------------------------------------------------------------------
    def start(self, name: str, log: Path | None = None) -> subprocess.Popen:
        container = self.container(name)
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
        env.update(self.environment(container))
        runs = len([p for p in self.processes if p.args_name == name]) if self.processes else 0
        log = log or self.root / f"{name}-{runs}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                self.command(container), cwd=self.workdir(container), env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        process.log = log  # type: ignore[attr-defined]
        process.args_name = name  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def run(self, name: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a container to completion (an init container, a Job's)."""
        process = self.start(name)
        try:
            process.wait(timeout=timeout)
        finally:
            self.kill(process)
        return subprocess.CompletedProcess(process.args, process.returncode, process.log.read_text(), "")

    def pre_stop(self, name: str) -> float:
        """The first half of the kubelet's stop of a container: the pod's grace period starts
        (terminationGracePeriodSeconds, counted from here) and the container's preStop hook runs. Returns
        the monotonic time the grace period ends."""
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        deadline = time.monotonic() + grace
        hook = self.container(name).get("lifecycle", {}).get("preStop", {})
        if "sleep" in hook:
            time.sleep(hook["sleep"]["seconds"])
        elif "exec" in hook:
            subprocess.run(hook["exec"]["command"], timeout=grace, check=False)
        return deadline

    def grace_deadline(self, name: str) -> float:
        """The monotonic time the grace period ends for a container whose preStop hook has just run (its
        sleep, or an exec hook's time, counted as spent)."""
        hook = self.container(name).get("lifecycle", {}).get("preStop", {})
        spent = hook["sleep"]["seconds"] if "sleep" in hook else 0
        return time.monotonic() + float(self.spec.get("terminationGracePeriodSeconds", 30)) - spent

    def stop(self, process: subprocess.Popen, deadline: float) -> int | None:
        """The second half: SIGTERM, then SIGKILL when the grace period runs out. The exit code, or None
        when the process had to be killed."""
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill(process)
            return None

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """The process and what it started (its own session), gone."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for process in self.processes:
            self.kill(process)
