"""`make cv`: K-fold cross-validation of a training recipe (every fold trains from scratch on 4/5 of the
data and is scored on its held-out 1/5 at the native resolution). Prints the per-fold table with mean and
spread and, with --card, records it in the shipped model's card (the shipped model is one of the folds).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from services.spec import OrganSpec, organ_dirs
from trainer.data import PairSet, kfold_indices, load_pairs, recipe_data
from trainer.train import default_config, default_run_dir, run_training


def run_split(
    organ: str, card: dict, spec: OrganSpec, data: str | Path | None = None
) -> tuple[PairSet, np.ndarray, np.ndarray]:
    """A finished run's own pairs (as many as its card says it used, from `data` or the organ's training
    data in its recipe) and its training and held-out indices, by the split its card records."""
    pairs = load_pairs(data or recipe_data(organ), spec, limit=card["dataset"]["pairs"])
    split = card["split"]
    train_idx, val_idx = kfold_indices(len(pairs), split["folds"], split["fold"], split["seed"])
    return pairs, train_idx, val_idx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--organ", required=True, choices=sorted(organ_dirs()))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="*", help="fold numbers to train (default: all)")
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget per fold")
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--patience", type=int, default=None, help="early stopping (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=".medseg/cv")
    parser.add_argument("--reuse", nargs="*", default=[], help="fold=run_dir pairs of finished runs to count")
    parser.add_argument(
        "--reuse-shipped",
        action="store_true",
        help="count fold 0 from the recipe's `medseg train` run dir (.medseg/runs/<organ>-<arch>-fold0)",
    )
    parser.add_argument("--card", help="model card JSON to record the result in")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    reused = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.reuse)}
    if args.reuse_shipped:
        reused.setdefault(0, default_run_dir(args.organ, default_config(args.organ).arch, 0))
    rows = []
    folds = sorted(set(args.only if args.only is not None else range(args.folds)) | set(reused))
    for fold in folds:
        run_dir = reused.get(fold) or Path(args.out) / f"{args.organ}-fold{fold}"
        if fold not in reused:
            cfg = default_config(
                args.organ,
                epochs=args.epochs,
                time_budget_min=args.minutes,
                threads=args.threads,
                patience=args.patience,
            )
            run_training(args.organ, recipe_data(args.organ), run_dir, cfg, fold=fold, folds=args.folds)
        card = json.loads((run_dir / "card.json").read_text())
        rows.append(
            {
                "fold": fold,
                "val_dice": card["metrics"]["val_dice"],
                "best_threshold": card["default_threshold"],
                "val_dice_at_best_threshold": max(card["metrics"]["val_dice_at_threshold"].values()),
                "minutes": round(card["training"]["seconds"] / 60, 1),
                "epochs": card["training"]["epochs"],
                "run": str(run_dir),
            }
        )
    dice = [r["val_dice"] for r in rows]
    summary = {
        "organ": args.organ,
        "folds": rows,
        "mean_val_dice": mean(dice),
        "std_val_dice": stdev(dice) if len(dice) > 1 else 0.0,
    }
    lines = [
        "| fold | val Dice @0.5 | best threshold | Dice @best | minutes | epochs |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['fold']} | {r['val_dice']:.4f} | {r['best_threshold']} "
        f"| {r['val_dice_at_best_threshold']:.4f} | {r['minutes']} | {r['epochs']} |"
        for r in rows
    ]
    lines.append(f"| mean ± sd | {summary['mean_val_dice']:.4f} ± {summary['std_val_dice']:.4f} | | | | |")
    print("\n".join(lines))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.organ}.json").write_text(json.dumps(summary, indent=1))
    if args.card:
        card_path = Path(args.card)
        card = json.loads(card_path.read_text())
        card["cross_validation"] = summary
        card_path.write_text(json.dumps(card, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
