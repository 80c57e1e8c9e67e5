"""Does 3-D post-processing help? Volume Dice of liver masks with and without it.

    .venv/bin/python -m tools.postprocess_eval [--mar model-store/liver.mar] [--json out.json]
    .venv/bin/python -m tools.postprocess_eval --cv .medseg/cv-grouped/<recipe> [--json out.json]

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

With --cv, the measurement that decides: the fold models of a grouped cross-validation (`make cv`'s
output folder, <organ>-fold<k>/ with checkpoint.pt, card.json and spec.yaml) segment the volume each of
them never saw, in-process, at the last epoch's weights (those the CV table scores), and each option is
scored on it as the CV scores (Dice per slice averaged over the held-out volume) and as one volume (3-D).
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

ORGAN = "liver"

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


def held_out_probabilities(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities float32 (z, y, x), labels bool) of the volume a CV fold's run held out, its slices in
    order, predicted in-process by the run's last-epoch weights at the native resolution."""
    import torch

    from services.spec import load_spec
    from trainer.cv import run_split
    from trainer.loop import last_epoch_network, predict_full

    card = json.loads((run_dir / "card.json").read_text())
    spec = load_spec(run_dir / "spec.yaml")
    pairs, _, held = run_split(ORGAN, card, spec)
    model = last_epoch_network(run_dir, spec.channels)
    probs, labels = [], []
    with torch.no_grad():
        for i in sorted(int(i) for i in held):
            probs.append(predict_full(model, pairs, i, spec).numpy())
            labels.append(pairs.full_masks[i].numpy().astype(bool))
    return np.stack(probs), np.stack(labels)


def slice_mean_dice(mask: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([volume_dice(m, g) for m, g in zip(mask, labels, strict=True)]))


def evaluate_cv(folds: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """One row per option: per fold and mean, Dice per slice averaged (as the CV table) and volume Dice, at
    0.5 and averaged over the seven thresholds."""
    rows = []
    for option in OPTIONS:
        per_slice = {t: [] for t in THRESHOLDS}
        per_volume = {t: [] for t in THRESHOLDS}
        for probs, labels in folds:
            for threshold in THRESHOLDS:
                mask = masks_after(option, probs >= threshold)
                per_slice[threshold].append(slice_mean_dice(mask, labels))
                per_volume[threshold].append(volume_dice(mask, labels))
        rows.append(
            {
                "option": option,
                "slice_dice_per_fold_at_0.5": per_slice[0.5],
                "slice_dice_at_0.5": float(np.mean(per_slice[0.5])),
                "volume_dice_per_fold_at_0.5": per_volume[0.5],
                "volume_dice_at_0.5": float(np.mean(per_volume[0.5])),
                "slice_dice_mean_7_thresholds": float(np.mean([np.mean(v) for v in per_slice.values()])),
            }
        )
    for row in rows:
        for key in ("slice_dice_at_0.5", "volume_dice_at_0.5", "slice_dice_mean_7_thresholds"):
            row[f"delta_{key}"] = row[key] - rows[0][key]
    return rows


def markdown_cv(rows: list[dict]) -> str:
    lines = [
        "| option | per slice @0.5, fold 0 / 1 / 2 | mean | Δ | volume @0.5, fold 0 / 1 / 2 | mean | Δ "
        "| per slice, mean of 7 thresholds | Δ |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_slice = " / ".join(f"{d:.4f}" for d in r["slice_dice_per_fold_at_0.5"])
        per_volume = " / ".join(f"{d:.4f}" for d in r["volume_dice_per_fold_at_0.5"])
        lines.append(
            f"| {r['option']} | {per_slice} | {r['slice_dice_at_0.5']:.4f} "
            f"| {r['delta_slice_dice_at_0.5']:+.4f} "
            f"| {per_volume} | {r['volume_dice_at_0.5']:.4f} | {r['delta_volume_dice_at_0.5']:+.4f} "
            f"| {r['slice_dice_mean_7_thresholds']:.4f} | {r['delta_slice_dice_mean_7_thresholds']:+.4f} |"
        )
    return "\n".join(lines)


def main_cv(cv_dir: Path, json_out: Path | None) -> int:
    runs = sorted(cv_dir.glob(f"{ORGAN}-fold*"), key=lambda p: int(p.name.rsplit("fold", 1)[1]))
    if not runs:
        raise SystemExit(f"no {ORGAN}-fold<k> run folders in {cv_dir}")
    folds = [held_out_probabilities(run) for run in runs]
    rows = evaluate_cv(folds)
    sizes = " / ".join(str(len(labels)) for _, labels in folds)
    print(
        f"{ORGAN} cross-validation {cv_dir}: {len(runs)} fold models on the volumes they held out "
        f"({sizes} slices)"
    )
    print(markdown_cv(rows))
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.postprocess_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, default=REPO_ROOT / "model-store" / "liver.mar")
    parser.add_argument("--cv", type=Path, help="a grouped CV's output folder: score its fold models instead")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.cv:
        return main_cv(args.cv, args.json)
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
