"""`make ablation`: the original paper's Table 3 on grouped folds (liver: leave-one-volume-out, so every
variant is scored on a CT volume it never saw), every variant with the same budget per fold.

Prints a markdown table (per held-out group: Dice at 0.5 at the native 512×512 size, the last epoch's, so
no choice is made on the held-out volume; and the mean over the folds) and writes it with each run's files
under .medseg/ablation/.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from statistics import mean

from trainer.cv import fold_row, grouped_fold_count
from trainer.data import recipe_data
from trainer.train import default_config, run_training

# (row label, architecture, loss)
VARIANTS = [
    ("U-Net", "unet", "bce"),
    ("U-Net + Dice-Focal", "unet", "dicefocal"),
    ("U-Net + Residual Block II", "unet-res", "dicefocal"),
    ("U-Net + EG module", "unet-eg", "dicefocal"),
    ("ERU-Net", "erunet", "dicefocal"),
]


def table(rows: list[dict], folds: list[int]) -> str:
    """One row per variant: Dice @0.5 on each fold's held-out group, their mean, epochs, parameters."""
    held_out = {f: ", ".join(rows[0]["folds"][f]["validation_groups"] or {}) for f in folds}
    lines = [
        "| variant | "
        + " | ".join(f"fold {f} ({held_out[f]})" for f in folds)
        + " | mean | epochs | parameters |",
        "|---|" + "---|" * len(folds) + "---|---|---|",
    ]
    for r in rows:
        dice = [r["folds"][f]["val_dice_at_threshold"]["0.5"] for f in folds]
        epochs = "/".join(str(r["folds"][f]["epochs"]) for f in folds)
        lines.append(
            f"| {r['variant']} | " + " | ".join(f"{d:.4f}" for d in dice)
            + f" | {mean(dice):.4f} | {epochs} | {r['parameters']:,} |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--organ", default="liver", help="the paper's organ (default liver)")
    parser.add_argument("--data", default=None, help="image/mask folder (default: the organ's recipe data)")
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget per variant and fold")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--folds", type=int, default=5, help="at most this many (one per group when fewer)")
    parser.add_argument("--only", type=int, nargs="*", default=None, help="folds to run (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=".medseg/ablation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = args.data or recipe_data(args.organ)
    n_folds = grouped_fold_count(args.organ, data, args.folds, args.limit)
    folds = sorted(args.only) if args.only is not None else list(range(n_folds))
    rows = []
    for label, arch, loss in VARIANTS:
        cfg = default_config(
            args.organ,
            arch=arch,
            loss=loss,
            widths=(12, 24, 48),
            epochs=args.epochs,
            time_budget_min=args.minutes,
            threads=args.threads,
        )
        row = {"variant": label, "folds": {}}
        for fold in folds:
            run_dir = Path(args.out) / f"{arch}-{loss}-fold{fold}"
            card = run_training(
                args.organ, data, run_dir, cfg, fold=fold, folds=args.folds, limit=args.limit
            )["card"]
            row["folds"][fold] = fold_row(fold, card, run_dir)
            row["parameters"] = card["parameters"]
        rows.append(row)
    text = table(rows, folds)
    title = (
        f"{args.organ.capitalize()}, grouped folds {folds}, {args.minutes:g} min per variant and fold "
        f"(`python -m trainer.ablation {shlex.join(sys.argv[1:] if argv is None else argv)}`)"
    )
    print(f"{title}:\n\n{text}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(f"{title}:\n\n{text}\n")
    (Path(args.out) / "table.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
