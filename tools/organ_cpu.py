"""What one organ server uses under saturating load: the numbers the Kubernetes CPU requests, memory and the
autoscaler's arithmetic are sized from (docs/operations.md, "Autoscaling"; tests/k8s/test_organ_pods.py).

    .venv/bin/python -m tools.organ_cpu --organ liver [--seconds 30] [--clients 4]

Starts the organ's TorchServe with its shipped archive (model-store/<organ>.mar, one worker as in
model-config.yaml), keeps `--clients` requests in flight (so the worker never waits for work) with an image
of the organ's model size, and reads the CPU time of the server's processes from /proc (psutil) over
`--seconds`: the cores the Java frontend and the Python worker used, CPU-seconds per request, the worker's
threads, and the resident memory of each process. On a machine shared with other work the worker gets less
than a core; its CPU-seconds per request and the frontend's share of the worker's CPU are what carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from common.launcher import OrganServer, free_ports
from common.torchserve_client import PNG_MAGIC, InferenceClient
from services.imaging import NPY_MAGIC, encode_npy, encode_png
from services.spec import load_organ_spec

REPO = Path(__file__).resolve().parents[1]


def request_image(organ: str) -> bytes:
    """One request of the organ's model size: a PNG for a 2-D organ; for a 3-D organ (spec `dimensions: 3`)
    one whole float32 volume as .npy (z, y, x) at `inference.size`, as common.volume_inference sends it."""
    spec = load_organ_spec(organ)
    rng = np.random.default_rng(0)
    if spec.volumetric:
        return encode_npy(rng.normal(100.0, 30.0, spec.inference.size).astype(np.float32))
    height, width = spec.inference.size or (1000, 1000)
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    return encode_png(rng.integers(0, 255, shape).astype(np.uint8))


def measure(organ: str, seconds: float, clients: int, model_store: Path = REPO / "model-store") -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"organ-cpu-{organ}-"))
    store = work / "model-store"
    store.mkdir()
    shutil.copy(Path(model_store) / f"{organ}.mar", store / f"{organ}.mar")
    server = OrganServer(organ, state_dir=work, model_store=store, models={organ: f"{organ}.mar"},
                         ports=free_ports())  # fmt: skip
    image, done, stop = request_image(organ), [0], threading.Event()
    answer = NPY_MAGIC if load_organ_spec(organ).volumetric else PNG_MAGIC  # a volume's answer is an .npy
    try:
        server.start(timeout=300)

        def client() -> None:
            with InferenceClient(server.grpc_inference_address, server.keys.inference, timeout=120) as c:
                while not stop.is_set():
                    c.predict(organ, image, timeout=120, answer_magic=answer)
                    done[0] += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(min(10.0, seconds / 3))  # past the first requests' warm-up
        root = psutil.Process(server.pid)
        procs = [p for p in [root, *root.children(recursive=True)] if p.name() != "torchserve"]
        before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
        start, count = time.monotonic(), done[0]
        time.sleep(seconds)
        elapsed, count = time.monotonic() - start, done[0] - count
        rows = []
        for p in procs:
            role = "frontend (java)" if p.name() == "java" else "worker (python)"
            cores = (sum(p.cpu_times()[:2]) - before[p.pid]) / elapsed
            rows.append({"role": role, "pid": p.pid, "cores": round(cores, 3), "threads": p.num_threads(),
                         "rss_mib": round(p.memory_info().rss / 2**20)})  # fmt: skip
        stop.set()
        for thread in threads:
            thread.join(timeout=130)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    total = sum(r["cores"] for r in rows)
    worker = sum(r["cores"] for r in rows if r["role"].startswith("worker"))
    return {
        "organ": organ,
        "requests_per_s": round(count / elapsed, 2),
        "cores": round(total, 3),
        "cpu_s_per_request": round(total / (count / elapsed), 4) if count else None,
        "frontend_per_worker_core": round((total - worker) / worker, 3) if worker else None,
        "processes": rows,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--model-store", type=Path, default=REPO / "model-store", help="where <organ>.mar comes from"
    )
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.organ, args.seconds, args.clients, args.model_store), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
