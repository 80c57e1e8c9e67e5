"""How many nuclei gateway/service/nuclei.py finds in a folder of binary masks, for a few peak distances (with
its default smoothing): the totals in its docstring and the README. Its settings themselves are chosen by
how well they split nuclei, `python -m tools.nuclei_instances` (docs/cells-instances.md).

    python -m tools.nuclei_count [--masks ../shared/data/monuseg/train/masks] [--distances 3 4 5 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from gateway.service.nuclei import count_nuclei
from tests.data import CELLS_TRAIN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=Path, default=CELLS_TRAIN / "masks")
    parser.add_argument("--distances", type=int, nargs="+", default=[3, 4, 5, 6])
    args = parser.parse_args(argv)
    paths = sorted(args.masks.glob("*.png"))
    if not paths:
        parser.error(f"no masks (*.png) in {args.masks}")
    blobs, totals = 0, dict.fromkeys(args.distances, 0)
    for path in paths:
        mask = np.asarray(Image.open(path).convert("L")) > 127
        blobs += ndimage.label(mask)[1]
        for distance in args.distances:
            totals[distance] += count_nuclei(mask, min_distance=distance).count
    print(f"{len(paths)} masks in {args.masks}: {blobs} connected blobs")
    for distance, total in totals.items():
        print(f"peak distance {distance} px: {total} nuclei")
    return 0


if __name__ == "__main__":
    sys.exit(main())
