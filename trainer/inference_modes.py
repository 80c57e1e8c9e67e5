"""Whole tile or sliding window? Score a finished run's model both ways on its validation fold.

    python -m trainer.inference_modes --organ cells --run .medseg/runs/cells-v12

The organ's spec says how the served model sees a tile (`inference`); this scores the run's model
through every candidate way — the whole tile padded to the network's stride, alone or averaged with its
mirror images, and MONAI's sliding window with Gaussian blending over windows of the training crop's size
and larger — with the serving code (services.preprocess.probabilities), and prints Dice per mode and
threshold with the seconds per tile.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from services.preprocess import normalize, pad_to_multiple, probabilities, restore
from services.spec import OrganSpec, load_spec
from trainer.cv import run_split
from trainer.loop import dice_score
from trainer.run_args import run_tool_parser

THRESHOLDS = (0.4, 0.5, 0.6)


def tile_probabilities(model, x: torch.Tensor, spec: OrganSpec) -> torch.Tensor:
    """(1, C, H, W) normalised tile → (H, W) probabilities, as the organ server computes them under `spec`
    (padded to the network's stride, then services.preprocess.probabilities)."""
    padded, how = pad_to_multiple(x, spec.inference.pad_multiple)
    return restore(probabilities(model, padded, spec), how)


def candidate_modes(spec: OrganSpec, crop: int) -> dict[str, OrganSpec]:
    """The whole tile and windows of the training crop's size and larger, each as a spec to serve with."""

    modes = {
        "whole tile": spec.with_inference("whole", tta="none"),
        "whole tile, mirror images averaged": spec.with_inference("whole", tta="flips"),
    }
    for roi, overlap in ((crop, 0.25), (crop, 0.5), (2 * crop, 0.25)):
        modes[f"window {roi}², overlap {overlap}"] = spec.with_inference("sliding", roi, overlap, tta="none")
    return modes


def main(argv: list[str] | None = None) -> int:
    args = run_tool_parser(__doc__, "run folder (model.ts, spec.yaml, card.json)").parse_args(argv)
    torch.set_num_threads(args.threads)

    card = json.loads((args.run / "card.json").read_text())
    spec = load_spec(args.run / "spec.yaml")
    data, _, val = run_split(args.organ, card, spec)
    model = torch.jit.load(str(args.run / "model.ts"), map_location="cpu").eval()
    crop = card["training"]["config"]["augment"].get("crop") or 256
    modes = candidate_modes(spec, crop)

    print(f"{args.run}: fold {card['split']['fold']}, {len(val)} validation images\n")
    print("| mode | " + " | ".join(f"Dice @{t}" for t in THRESHOLDS) + " | s per image |")
    print("|---|" + "---:|" * (len(THRESHOLDS) + 1))
    for name, mode_spec in modes.items():
        scores = {t: [] for t in THRESHOLDS}
        start = time.perf_counter()
        with torch.inference_mode():
            for i in val:
                prob = tile_probabilities(
                    model, normalize(data.images[i : i + 1].float() / 255.0, spec), mode_spec
                )
                for t in THRESHOLDS:
                    scores[t].append(dice_score(prob >= t, data.full_masks[i]))
        seconds = (time.perf_counter() - start) / len(val)
        dice = " | ".join(f"{np.mean(scores[t]):.4f}" for t in THRESHOLDS)
        served = " (served)" if mode_spec.inference == spec.inference else ""
        print(f"| {name}{served} | {dice} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
