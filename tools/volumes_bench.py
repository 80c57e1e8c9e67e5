"""Time services/volumes.py on a 200-slice 512×512 CT series built from liver/train (tests/studydata.py).

    PYTHONPATH=$PWD .venv/bin/python -m tools.volumes_bench [--slices 200] [--repeat 3]

Prints the best of ``--repeat`` runs of each step (read, reorientation both ways, NIfTI mask, DICOM SEG), for
the series as DICOM files and as a .nii.gz. Only this library's share of a study's time: the upload, the
inference and the storage are the gateway's and the organ server's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from services.volumes import dicom_seg, nifti_bytes, read_study
from tests import studydata

FIRST = 162  # slices 162.. follow the first patient's 0..161


def best_of(repeat: int, step: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    series = studydata.liver_dicom_series(FIRST, args.slices)
    nifti = [("study.nii.gz", studydata.liver_nifti(FIRST, args.slices))]
    dicom_mb, nifti_mb = sum(len(data) for _, data in series) / 2**20, len(nifti[0][1]) / 2**20
    print(f"{args.slices} slices of 512×512: DICOM {dicom_mb:.0f} MB, .nii.gz {nifti_mb:.0f} MB")
    for label, files in (("DICOM", series), ("NIfTI", nifti)):
        volume = read_study(files)
        mask = (volume.canonical() > 0).astype(np.uint8)
        labels = volume.from_canonical(mask)
        rows = [
            ("read_study", lambda files=files: read_study(files)),
            ("canonical", volume.canonical),
            ("from_canonical (uint8)", lambda volume=volume, mask=mask: volume.from_canonical(mask)),
            ("nifti_bytes (uint8 mask)", lambda volume=volume, labels=labels: nifti_bytes(volume, labels)),
        ]
        if label == "DICOM":
            rows.append(
                (
                    "dicom_seg (1 segment)",
                    lambda labels=labels: dicom_seg(
                        series, labels, ["liver"], algorithm="bench", version="0", threshold=0.5
                    ),
                )
            )
        for name, step in rows:
            print(f"{label:6s} {name:26s} {best_of(args.repeat, step):6.2f} s")


if __name__ == "__main__":
    main()
