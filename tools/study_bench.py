"""`make bench`'s study rows: a 200-slice 512² CT series, upload to done, through the real stack; and
(`--organ hippocampus`) MRI volumes of the 3-D organ, upload to done, one after another.

    .venv/bin/python -m tools.study_bench [--slices 200] [--runs 2] [--model-store DIR] [--timeline]
    .venv/bin/python -m tools.study_bench --organ hippocampus [--runs 10]

What it starts: as `tools.bench` (its `running_stack`: the object store, the liver TorchServe with
`model-store/liver.mar`, a `medseg serve` gateway, all on free ports under a temporary dir, stopped at the
end).
What it sends: one CT series written with pydicom from consecutive liver training slices of one patient in the
scanner's convention (tests/studydata.py: slices 162… are the second patient's, 209 of them), zipped, as
`POST /api/v1/studies`; the clock runs from the first byte sent to the study's `done` (polled every 50 ms),
so it includes the upload, reading and checking the series, segmenting every slice on the organ server, and
writing the probability volume and the volumes in mL. Printed as a markdown table with the machine's load.

The hippocampus row sends `--runs` distinct real volumes of ../shared/data/hippocampus3d as NIfTI (about
35×50×35 voxels at 1 mm): reading, resampling (none at 1 mm), one whole-volume request to the 3-D organ
server, the label map back and the mL per label at seven thresholds; with model-store/hippocampus.mar, else an
untrained 3-D ERU-Net of the same architecture (the same cost).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tools import bench

SLICES_TARGET_S = 10.0  # issue 17: a 200-slice 512² CT series, upload to done, on this machine


def series_zip(slices: int) -> bytes:
    from tests import studydata

    return studydata.zipped(studydata.liver_dicom_series(162, slices), compression=0)


def time_study(
    http_url: str,
    api_key: str,
    blob: bytes,
    timeout: float = 600.0,
    organ: str = "liver",
    name: str = "series.zip",
) -> dict:
    """Seconds from upload to done, and the study's own numbers."""
    with httpx.Client(
        base_url=http_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
    ) as http:
        started = time.perf_counter()
        answer = http.post(
            "/api/v1/studies",
            data={"organ": organ},
            files=[("files", (name, blob, "application/octet-stream"))],
        )
        answer.raise_for_status()
        accepted = time.perf_counter() - started
        study_id = answer.json()["id"]
        while True:
            body = http.get(f"/api/v1/studies/{study_id}").json()
            if body["status"] in ("done", "failed"):
                break
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"study {study_id} not done after {timeout}s")
            time.sleep(0.05)
        total = time.perf_counter() - started
    if body["status"] != "done":
        raise RuntimeError(f"study failed: {body.get('error')}")
    return {"seconds": total, "accepted_s": accepted, "shape": body["shape"], "ml": body["volumes_ml"]["0.5"]}


def hippocampus_rows(model_store: Path, runs: int) -> int:
    """Upload → done of `runs` distinct hippocampus volumes (after one warm-up), printed as a table."""
    from tests import hippodata

    bench.ORGAN = "hippocampus"
    names = sorted(p.name.split(".")[0] for p in (hippodata.HIPPO / "images").glob("*.nii.gz"))[: runs + 1]
    with tempfile.TemporaryDirectory(prefix="medseg-study-bench-") as tmp:
        work = Path(tmp)
        choice = bench.choose_model(model_store, work)
        with bench.running_stack(work / "state", choice) as running:
            results = [
                time_study(
                    running.http_url,
                    running.api_key,
                    hippodata.nifti_bytes(n),
                    organ="hippocampus",
                    name=f"{n}.nii.gz",
                )
                for n in names
            ][1:]  # the first: warm-up
    seconds = [r["seconds"] for r in results]
    load = os.getloadavg()
    print()
    print("| study | volumes | voxels (z×y×x, median) | upload → done, median (s) | min – max (s) |")
    print("|---|---:|---|---:|---|")
    shape = sorted(results, key=lambda r: r["shape"][0] * r["shape"][1] * r["shape"][2])[len(results) // 2][
        "shape"
    ]
    print(
        f"| hippocampus MRI NIfTI ({choice.description}) | {len(results)} | {'×'.join(map(str, shape))} | "
        f"{statistics.median(seconds):.2f} | {min(seconds):.2f} – {max(seconds):.2f} |"
    )
    print(f"\nload average during the run {load[0]:.2f} / {load[1]:.2f} (2 cores)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.study_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument(
        "--runs", type=int, default=2, help="studies timed, one after another (after one warm-up)"
    )
    parser.add_argument("--model-store", default=str(bench.REPO_ROOT / "model-store"))
    parser.add_argument("--organ", choices=("liver", "hippocampus"), default="liver")
    parser.add_argument(
        "--timeline", action="store_true", help="print the gateway's log of each study's parts (liver)"
    )
    args = parser.parse_args(argv)
    if args.organ == "hippocampus":
        return hippocampus_rows(Path(args.model_store), args.runs)
    bench.ORGAN = "liver"
    blob = series_zip(args.slices)
    print(f"series: {args.slices} slices of 512×512 int16, zip {len(blob) / 1e6:.1f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="medseg-study-bench-") as tmp:
        work = Path(tmp)
        choice = bench.choose_model(Path(args.model_store), work)
        with contextlib.ExitStack() as stack:
            running = stack.enter_context(bench.running_stack(work / "state", choice))
            time_study(running.http_url, running.api_key, series_zip(8))  # warm-up: the first chunks
            results = [time_study(running.http_url, running.api_key, blob) for _ in range(args.runs)]
            if args.timeline:  # where each study's time went, as the gateway logged it
                for line in running.gateway_log.read_text(errors="replace").splitlines():
                    if "gateway.service.studies" in line and (" queued: " in line or " done: " in line):
                        print(line)
    best = min(r["seconds"] for r in results)
    load = os.getloadavg()
    print()
    print("| study | slices | upload accepted (s) | upload → done (s) | slices/s | target |")
    print("|---|---:|---:|---:|---:|---|")
    for n, r in enumerate(results, 1):
        print(
            f"| CT series {n} ({choice.description}) | {r['shape'][0]} | {r['accepted_s']:.2f} | "
            f"{r['seconds']:.2f} | {r['shape'][0] / r['seconds']:.1f} | ≤ {SLICES_TARGET_S:.0f} s: "
            f"{'met' if r['seconds'] <= SLICES_TARGET_S else 'missed'} |"
        )
    print(f"\nbest {best:.2f} s; load average during the run {load[0]:.2f} / {load[1]:.2f} (2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
