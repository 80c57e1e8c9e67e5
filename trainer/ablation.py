"""`make ablation`: the original paper's Table 3 on one liver fold, every variant with the same budget.

Prints a markdown table (validation Dice at 0.5 at the native 512×512 size, validation loss) and writes it
with each run's metrics under .medseg/ablation/.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--organ", default="liver", help="the paper's organ (default liver)")
    parser.add_argument("--data", default=None, help="image/mask folder (default: the organ's recipe data)")
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget per variant")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=".medseg/ablation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = args.data or recipe_data(args.organ)
    rows = []
    for label, arch, loss in VARIANTS:
        cfg = default_config(
            args.organ,
            arch=arch,
            loss=loss,
            widths=(12, 24, 48),
            epochs=args.epochs,
            time_budget_min=args.minutes,
        )
        run_dir = Path(args.out) / f"{arch}-{loss}"
        result = run_training(args.organ, data, run_dir, cfg, fold=args.fold, limit=args.limit)
        card = result["card"]
        rows.append(
            {
                "variant": label,
                "val_dice": card["metrics"]["val_dice"],
                "val_loss": card["metrics"]["val_loss"],
                "epochs": card["training"]["epochs"],
                "parameters": card["parameters"],
            }
        )
    table = [
        "| variant | validation Dice @0.5 | validation loss (the variant's own loss) | epochs | parameters |",
        "|---|---|---|---|---|",
    ]
    table += [
        f"| {r['variant']} | {r['val_dice']:.4f} | {r['val_loss']:.4f} | {r['epochs']} "
        f"| {r['parameters']:,} |"
        for r in rows
    ]
    text = "\n".join(table)
    title = f"{args.organ.capitalize()} fold {args.fold}, {args.minutes:g} min per variant (`make ablation`)"
    print(f"{title}:\n\n{text}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(text + "\n")
    (Path(args.out) / "table.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
