"""Whole tile or sliding window? Score a finished run's model both ways on its validation fold.

    python -m trainer.inference_modes --organ cells --run .medseg/runs/cells-v12
    python -m trainer.inference_modes --organ cells --run model-store/cells.mar --threads 2

The organ's spec says how the served model sees a tile (`inference`); this scores the run's model
through every candidate way — the whole tile padded to the network's stride, alone, averaged with its
half-turned image (two passes) or with its three mirror images (four), and MONAI's sliding window with
Gaussian blending over windows of the training crop's size and larger — with the serving code
(services.preprocess.probabilities), and prints Dice per mode and threshold with the seconds per tile.
A shipped archive (`--run` an .mar, its card beside it) is scored in the runtime its spec serves it in,
on the held-out fold its card names.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from services.preprocess import normalize, pad_to_multiple, probabilities, restore
from services.runtime import build
from services.spec import OrganSpec, load_spec
from trainer.cv import run_split
from trainer.export import unpack_runtimes
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
        "whole tile and its half turn averaged": spec.with_inference("whole", tta="rot180"),
        "whole tile, mirror images averaged": spec.with_inference("whole", tta="flips"),
    }
    for roi, overlap in ((crop, 0.25), (crop, 0.5), (2 * crop, 0.25)):
        modes[f"window {roi}², overlap {overlap}"] = spec.with_inference("sliding", roi, overlap, tta="none")
    return modes


def main(argv: list[str] | None = None) -> int:
    run_help = "run folder (model.ts, spec.yaml, card.json), or a shipped .mar (its card beside it)"
    args = run_tool_parser(__doc__, run_help).parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="inference-modes-") as tmp:
        card, spec, model = _load(args.run, Path(tmp), args.threads)
        return _score(args, card, spec, model)


def _load(run: Path, work: Path, threads: int):
    """(card, spec, model) of a run folder (TorchScript), or of a shipped .mar in its spec's runtime."""
    if run.suffix == ".mar":
        spec = unpack_runtimes(run, work)
        return json.loads(run.with_suffix(".json").read_text()), spec, build(spec.runtime, work, threads)
    card = json.loads((run / "card.json").read_text())
    model = torch.jit.load(str(run / "model.ts"), map_location="cpu").eval()
    return card, load_spec(run / "spec.yaml"), model


def _score(args, card: dict, spec: OrganSpec, model) -> int:
    data, _, val = run_split(args.organ, card, spec)
    crop = card["training"]["config"]["augment"].get("crop") or 256
    modes = candidate_modes(spec, crop)

    served_by = f", {spec.runtime}" if args.run.suffix == ".mar" else ""
    print(f"{args.run}: fold {card['split']['fold']}, {len(val)} validation images{served_by}\n")
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
