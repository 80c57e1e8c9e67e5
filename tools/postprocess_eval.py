"""Does 3-D post-processing help? Volume Dice of liver masks with and without it.

    .venv/bin/python -m tools.postprocess_eval [--mar model-store/liver.mar] [--json out.json]

Segments the three liver CT volumes built from the training slices (tools.liver_volumes) through a real
liver TorchServe (the archive's networks repacked with this checkout's handler, common.volume_inference at
the spec's chunk size), thresholds the probability volume at each of the seven thresholds (0.2 … 0.8, as
the gateway does) and scores the mask against the labels as it is and after each post-processing option
(services.postprocess3d): the largest 3-D component, hole filling per slice, both; and, for comparison
only, hole filling in 3-D. Printed per option: volume Dice per patient and over all voxels of the three
at 0.5, the mean over the seven thresholds, the change against no post-processing, and the Dice over the
80 slices the shipped model held out in training (fold 0 of its card's split).

Every slice here was in the training data of the shipped model or is a near-twin of one (its card says
so): the model is flattered, so islands and holes are rarer than on a new patient's CT.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.launcher import OrganServer, free_ports
from common.torchserve_client import InferenceClient
from common.volume_inference import segment_volume
from gateway.service.masks import THRESHOLDS, probability_mask
from services.postprocess3d import postprocess_mask
from services.spec import Postprocess3D, load_organ_spec
from tools.liver_volumes import PATIENTS, liver_volume, volume_dice
from trainer.data import kfold_indices
from trainer.package import repackage

REPO_ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {
    "none": Postprocess3D(),
    "largest component": Postprocess3D(largest_component=True),
    "fill holes (per slice)": Postprocess3D(fill_holes=True),
    "largest component + fill holes": Postprocess3D(largest_component=True, fill_holes=True),
}
FILL_3D = "fill holes in 3-D (not an option)"


def served_probabilities(mar: Path, work: Path) -> list[np.ndarray]:
    """uint8 probability volumes of the three patients from a real liver TorchServe."""
    spec = load_organ_spec("liver")
    store = work / "store"
    packed = repackage(mar, store, "liver", "1")
    server = OrganServer("liver", work / "state", store, models={"liver": packed.name}, ports=free_ports())
    server.start(timeout=600)
    try:
        with InferenceClient(server.grpc_inference_address, server.keys.inference, timeout=300) as client:
            return [
                segment_volume(
                    client, "liver", liver_volume(p)[0], version=None, chunk=spec.inference.volume_chunk
                )
                for p in PATIENTS
            ]
    finally:
        server.stop()


def masks_after(option: str, mask: np.ndarray) -> np.ndarray:
    if option == FILL_3D:
        return ndimage.binary_fill_holes(mask)
    return postprocess_mask(mask, OPTIONS[option])


def evaluate(probs: list[np.ndarray], labels: list[np.ndarray], held_out: np.ndarray) -> list[dict]:
    """One row per option: Dice per patient at 0.5, pooled at each threshold, and on the held-out slices."""
    rows = []
    for option in (*OPTIONS, FILL_3D):
        pooled, per_patient, held = {}, [], None
        for threshold in THRESHOLDS:
            masks = [masks_after(option, probability_mask(p, threshold)) for p in probs]
            pooled[threshold] = volume_dice(np.concatenate(masks), np.concatenate(labels))
            if threshold == 0.5:
                per_patient = [volume_dice(m, g) for m, g in zip(masks, labels, strict=True)]
                held = volume_dice(np.concatenate(masks)[held_out], np.concatenate(labels)[held_out])
        rows.append(
            {
                "option": option,
                "dice_per_patient_at_0.5": per_patient,
                "dice_at_0.5": pooled[0.5],
                "dice_by_threshold": {str(t): d for t, d in pooled.items()},
                "mean_dice_7_thresholds": float(np.mean(list(pooled.values()))),
                "held_out_slices_dice_at_0.5": held,
            }
        )
    base = rows[0]
    for row in rows:
        row["delta_at_0.5"] = row["dice_at_0.5"] - base["dice_at_0.5"]
        row["delta_mean"] = row["mean_dice_7_thresholds"] - base["mean_dice_7_thresholds"]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| option | patient 1 / 2 / 3 @0.5 | all @0.5 | Δ @0.5 | mean of 7 thresholds | Δ mean "
        "| held-out slices @0.5 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        patients = " / ".join(f"{d:.4f}" for d in r["dice_per_patient_at_0.5"])
        lines.append(
            f"| {r['option']} | {patients} | {r['dice_at_0.5']:.4f} | {r['delta_at_0.5']:+.4f} "
            f"| {r['mean_dice_7_thresholds']:.4f} | {r['delta_mean']:+.4f} "
            f"| {r['held_out_slices_dice_at_0.5']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.postprocess_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, default=REPO_ROOT / "model-store" / "liver.mar")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    card = json.loads(args.mar.with_suffix(".json").read_text())
    split = card["split"]
    _, held_out = kfold_indices(card["dataset"]["pairs"], split["folds"], split["fold"], split["seed"])
    labels = [liver_volume(p)[1] for p in PATIENTS]
    with tempfile.TemporaryDirectory(prefix="postprocess-eval-") as tmp:
        probs = served_probabilities(args.mar, Path(tmp))
    rows = evaluate(probs, labels, held_out)
    sizes = " + ".join(str(len(g)) for g in labels)
    print(
        f"liver {args.mar.name} version {card.get('version')}: volumes of {sizes} slices "
        f"(tools.liver_volumes), served by TorchServe; {len(held_out)} held-out slices of fold "
        f"{split['fold']}. Every slice was trained on or has a trained-on neighbour: the model is flattered."
    )
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
