"""Whole tile or sliding window? Score a finished run's model both ways on its validation fold.

    python -m trainer.inference_modes --organ cells --run .medseg/runs/cells-v12

The organ's spec says how the served model sees a tile (`inference.mode`: whole, padded to the network's
stride); this measures the alternative the models issue names, MONAI's sliding-window inference with
Gaussian blending over windows of the training crop's size and larger, and prints Dice per mode and
threshold with the seconds per tile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from services.preprocess import normalize, pad_to_multiple, restore
from services.spec import load_spec
from trainer.cv import SOURCES
from trainer.data import kfold_indices, load_pairs
from trainer.loop import dice_score

THRESHOLDS = (0.4, 0.5, 0.6)


def whole(model, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(1, C, H, W) → (H, W) probabilities, as the organ server computes them (padded to the stride)."""
    padded, how = pad_to_multiple(x, multiple)
    return restore(torch.sigmoid(model(padded)), how)


def windows(model, x: torch.Tensor, roi: int, overlap: float) -> torch.Tensor:
    """(1, C, H, W) → (H, W) probabilities blended from roi² windows."""
    logits = sliding_window_inference(
        x, (roi, roi), 4, model, overlap=overlap, mode="gaussian", padding_mode="reflect"
    )
    return torch.sigmoid(logits)[0, 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--organ", required=True, choices=sorted(SOURCES))
    parser.add_argument("--run", required=True, type=Path, help="run folder (model.ts, spec.yaml, card.json)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    card = json.loads((args.run / "card.json").read_text())
    spec = load_spec(args.run / "spec.yaml")
    data = load_pairs(SOURCES[args.organ], spec)
    _, val = kfold_indices(len(data), card["split"]["folds"], card["split"]["fold"], card["split"]["seed"])
    model = torch.jit.load(str(args.run / "model.ts"), map_location="cpu").eval()
    crop = card["training"]["config"]["augment"].get("crop") or 256
    modes = {"whole tile": lambda x: whole(model, x, spec.inference.pad_multiple)}
    for roi, overlap in ((crop, 0.25), (crop, 0.5), (2 * crop, 0.25)):
        modes[f"window {roi}², overlap {overlap}"] = lambda x, r=roi, o=overlap: windows(model, x, r, o)

    print(f"{args.run}: fold {card['split']['fold']}, {len(val)} validation images\n")
    print("| mode | " + " | ".join(f"Dice @{t}" for t in THRESHOLDS) + " | s per image |")
    print("|---|" + "---:|" * (len(THRESHOLDS) + 1))
    for name, predict in modes.items():
        scores = {t: [] for t in THRESHOLDS}
        start = time.perf_counter()
        with torch.inference_mode():
            for i in val:
                prob = predict(normalize(data.images[i : i + 1].float() / 255.0, spec))
                for t in THRESHOLDS:
                    scores[t].append(dice_score(prob >= t, data.full_masks[i]))
        seconds = (time.perf_counter() - start) / len(val)
        dice = " | ".join(f"{np.mean(scores[t]):.4f}" for t in THRESHOLDS)
        print(f"| {name} | {dice} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
