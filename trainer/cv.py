"""`make cv`: grouped K-fold cross-validation of a training recipe. Folds never split a patient: the
dataset's own groups, else the recipe's `data.groups` rule (liver: the CT volumes found from the images;
cells: one tile per patient), and leave-one-group-out when there are fewer groups than folds. Every fold
trains from scratch on the other groups and is scored on its held-out group at the native resolution.

Prints the per-fold table (Dice at every threshold on the held-out group, the best threshold per fold) with
the mean and spread, the threshold calibrated on the folds and, with --card, records it in a model card.

Two figures per fold: the last epoch's (chosen by nothing but the budget) and the best epoch's (chosen on the
held-out group itself, so optimistic: with leave-one-volume-out there is no third volume to choose on).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from services.spec import (
    DATA_GROUPINGS,
    LOSSES,
    PRECISIONS,
    OrganSpec,
    load_organ_spec,
    load_recipe,
    organ_dirs,
)
from trainer.data import (
    Groups,
    PairSet,
    fold_count,
    kfold_indices,
    load_pairs,
    pair_groups,
    recipe_data,
    split_indices,
)
from trainer.loop import THRESHOLDS
from trainer.train import default_config, default_run_dir, run_training
from trainer.volumes import find_volumes

log = logging.getLogger(__name__)
GRID = [f"{t:.1f}" for t in THRESHOLDS]


def run_split(
    organ: str, card: dict, spec: OrganSpec, data: str | Path | None = None
) -> tuple[PairSet, np.ndarray, np.ndarray]:
    """A finished run's own pairs (as many as its card says it used, from `data` or the organ's training
    data in its recipe) and its training and held-out indices, by the split its card records: grouped when
    the card names its group source, else (cards from before grouped splits) the seeded shuffle."""
    root = data or recipe_data(organ)
    pairs = load_pairs(root, spec, limit=card["dataset"]["pairs"])
    split = card["split"]
    source = split.get("group_source")
    if source is None:
        train_idx, val_idx = kfold_indices(len(pairs), split["folds"], split["fold"], split["seed"])
        return pairs, train_idx, val_idx
    groups = pair_groups(root, pairs, source if source in DATA_GROUPINGS else "pairs")
    if groups.source != source:
        raise ValueError(
            f"the run was split by {source} groups, but {root} now gives {groups.source} groups: "
            "pass the data it was trained on"
        )
    train_idx, val_idx = split_indices(groups, split["folds"], split["fold"], split["seed"])
    return pairs, train_idx, val_idx


def organ_groups(organ: str, data: str | Path, limit: int | None = None) -> Groups:
    """The groups a run of `organ` on `data` splits by (as trainer.train does; a 3-D organ: by volume)."""
    if load_organ_spec(organ).volumetric:
        names = [name for name, _, _ in find_volumes(data)[:limit]]
        return Groups(labels=names, source="pairs")
    pairs = load_pairs(data, load_organ_spec(organ), limit=limit)
    return pair_groups(data, pairs, load_recipe(organ).data.groups)


def grouped_fold_count(organ: str, data: str | Path, folds: int, limit: int | None = None) -> int:
    """How many grouped folds a run of `organ` on `data` asked for `folds` has."""
    return fold_count(organ_groups(organ, data, limit), folds)


def fold_row(fold: int, card: dict, run_dir: Path) -> dict:
    """One fold of the table from its run's card."""
    metrics, split = card["metrics"], card["split"]
    last = metrics.get("last_epoch") or {"epoch": metrics["best_epoch"], **metrics}
    return {
        "fold": fold,
        "validation_groups": split.get("validation_groups"),
        "validation_pairs": card["dataset"]["validation"],
        "val_dice_at_threshold": last["val_dice_at_threshold"],
        "val_dice_pooled_at_threshold": last.get("val_dice_pooled_at_threshold"),
        # a multi-label organ: Dice per label (the figure above is their mean)
        **(
            {"val_dice_per_label_at_threshold": last["val_dice_per_label_at_threshold"]}
            if "val_dice_per_label_at_threshold" in last
            else {}
        ),
        "best_threshold": best_of(last["val_dice_at_threshold"]),
        "epoch": last["epoch"],
        "best_epoch": {
            "epoch": metrics["best_epoch"],
            "val_dice_at_threshold": metrics["val_dice_at_threshold"],
        },
        "minutes": round(card["training"]["seconds"] / 60, 1),
        "epochs": card["training"]["epochs"],
        "run": str(run_dir),
        "config": {
            k: card["training"]["config"].get(k) for k in ("arch", "widths", "time_budget_min", "augment")
        },
        "commit": card.get("commit"),
    }


def best_of(dice_at: dict[str, float]) -> float:
    return float(max(dice_at, key=lambda t: dice_at[t]))


def summarize(organ: str, rows: list[dict], default_threshold: float) -> dict:
    """Means over the folds at every threshold, the threshold they favour, and an honest figure for a
    calibrated threshold: each fold scored at the threshold the *other* folds favour."""
    mean_at = {t: mean(r["val_dice_at_threshold"][t] for r in rows) for t in GRID}
    calibrated = best_of(mean_at)
    at_default = [r["val_dice_at_threshold"][f"{default_threshold:.1f}"] for r in rows]
    pooled = [(r.get("val_dice_pooled_at_threshold") or {}).get(f"{default_threshold:.1f}") for r in rows]
    held_out = []
    for r in rows:
        others = [o for o in rows if o is not r]
        if others:
            t = best_of({g: mean(o["val_dice_at_threshold"][g] for o in others) for g in GRID})
            held_out.append(
                {"fold": r["fold"], "threshold": t, "val_dice": r["val_dice_at_threshold"][f"{t:.1f}"]}
            )
    per_label = {}
    if all("val_dice_per_label_at_threshold" in r for r in rows):
        at = f"{default_threshold:.1f}"
        labels = list(rows[0]["val_dice_per_label_at_threshold"][at])
        per_label = {
            "mean_val_dice_per_label": {
                name: mean(r["val_dice_per_label_at_threshold"][at][name] for r in rows) for name in labels
            }
        }
    return {
        "organ": organ,
        "grouping": "grouped folds (trainer.cv): no patient/volume on both sides of a fold",
        **per_label,
        "figures": "last epoch of each fold, scored as served (the organ's inference, its test-time views "
        "included), "
        + (
            "3-D Dice per label of each held-out volume (the serving rule at each threshold), averaged over "
            "the volumes; the figure is the mean over the labels"
            if per_label
            else "Dice per slice/tile averaged over the held-out group at its native resolution"
        )
        + "; best_epoch figures were chosen on the held-out group (optimistic)",
        "folds": rows,
        "default_threshold": default_threshold,
        "mean_val_dice": mean(at_default),
        "std_val_dice": stdev(at_default) if len(at_default) > 1 else 0.0,
        # one Dice over all of a held-out group's pixels (a held-out volume's 3-D Dice), averaged over folds
        "mean_val_dice_pooled": mean(pooled) if None not in pooled else None,
        "mean_val_dice_at_threshold": mean_at,
        "calibrated_threshold": calibrated,
        "threshold_chosen_on_other_folds": held_out,
        "mean_val_dice_threshold_chosen_on_other_folds": mean(h["val_dice"] for h in held_out)
        if held_out
        else None,
    }


def table(summary: dict) -> str:
    """The per-fold markdown table."""
    lines = [
        "| fold | held out (pairs) | "
        + " | ".join(f"@{t}" for t in GRID)
        + " | best thr | 3-D @0.5 | best-epoch @0.5 | minutes | epochs |",
        "|---|---|" + "---|" * len(GRID) + "---|---|---|---|---|",
    ]
    for r in summary["folds"]:
        held = ", ".join(f"{g} ({n})" for g, n in (r["validation_groups"] or {}).items())
        if len(held) > 60:
            held = f"{len(r['validation_groups'])} groups ({r['validation_pairs']})"
        dice = " | ".join(f"{r['val_dice_at_threshold'][t]:.4f}" for t in GRID)
        pooled = (r.get("val_dice_pooled_at_threshold") or {}).get("0.5")
        lines.append(
            f"| {r['fold']} | {held} | {dice} | {r['best_threshold']} | "
            + (f"{pooled:.4f}" if pooled is not None else "—")
            + f" | {r['best_epoch']['val_dice_at_threshold']['0.5']:.4f} | {r['minutes']} | {r['epochs']} |"
        )
    means = " | ".join(f"{summary['mean_val_dice_at_threshold'][t]:.4f}" for t in GRID)
    lines.append(f"| mean | | {means} | {summary['calibrated_threshold']} | | | | |")
    if "mean_val_dice_per_label" in summary:
        lines += ["", per_label_table(summary)]
    return "\n".join(lines)


def per_label_table(summary: dict) -> str:
    """A multi-label organ's Dice per label and fold at the default threshold, and their means."""
    at = f"{summary['default_threshold']:.1f}"
    labels = list(summary["mean_val_dice_per_label"])
    lines = [
        f"| fold | {' | '.join(f'{name} @{at}' for name in labels)} | mean @{at} |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for r in summary["folds"]:
        dice = r["val_dice_per_label_at_threshold"][at]
        cells = " | ".join(f"{dice[name]:.4f}" for name in labels)
        lines.append(f"| {r['fold']} | {cells} | {r['val_dice_at_threshold'][at]:.4f} |")
    means = " | ".join(f"{summary['mean_val_dice_per_label'][name]:.4f}" for name in labels)
    lines.append(f"| mean | {means} | {summary['mean_val_dice']:.4f} |")
    return "\n".join(lines)


def _reusable(organ: str, run_dir: Path, data: Path, groups: Groups, folds: int, fold: int) -> bool:
    """Whether a finished run (its card) held out exactly the pairs grouped fold `fold` holds out."""
    card_path = run_dir / "card.json"
    if not card_path.is_file():
        return False
    card = json.loads(card_path.read_text())
    _, ours = split_indices(groups, folds, fold, card["split"]["seed"])
    if load_organ_spec(organ).volumetric:  # one volume per group: the held-out volumes by name
        held_out = set(card["split"]["validation_groups"])
        return card["split"]["folds"] == folds and held_out == {groups.labels[i] for i in ours}
    _, _, theirs = run_split(organ, card, load_organ_spec(organ), data)
    if len(theirs) != len(ours) or not (theirs == ours).all():
        log.warning("%s did not hold out grouped fold %d (%s): training that fold", run_dir, fold,
                    card["split"].get("grouping", "shuffled pairs"))  # fmt: skip
        return False
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--organ", required=True, choices=sorted(organ_dirs()))
    parser.add_argument("--folds", type=int, default=5, help="at most this many (one per group when fewer)")
    parser.add_argument("--only", type=int, nargs="*", help="fold numbers to train (default: all)")
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget per fold")
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--patience", type=int, default=None, help="early stopping (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None, help="training forward pass (default: the recipe's)"
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=None,
        help="decay per step of the weights' moving average, e.g. 0.99 (default: the recipe's)",
    )
    parser.add_argument(
        "--augment",
        default=None,
        help='JSON of AugmentConfig fields over the recipe\'s, e.g. {"scale": [0.7, 1.4]}',
    )
    parser.add_argument(
        "--widths", type=int, nargs="+", default=None, help="channels per level (default: the recipe's)"
    )
    parser.add_argument("--loss", choices=LOSSES, default=None, help="training loss (default: the recipe's)")
    parser.add_argument("--out", default=".medseg/cv")
    parser.add_argument("--reuse", nargs="*", default=[], help="fold=run_dir pairs of finished runs to count")
    parser.add_argument(
        "--reuse-shipped",
        action="store_true",
        help="count fold 0 from the recipe's `medseg train` run dir (.medseg/runs/<organ>-<arch>-fold0) "
        "when that run was trained on the same grouped fold",
    )
    parser.add_argument("--card", help="model card JSON to record the result in (its cross_validation)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    data = recipe_data(args.organ)
    spec = load_organ_spec(args.organ)
    groups = organ_groups(args.organ, data)
    n_folds = fold_count(groups, args.folds)
    reused = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.reuse)}
    if args.reuse_shipped:
        shipped = default_run_dir(args.organ, default_config(args.organ).arch, 0)
        if _reusable(args.organ, shipped, data, groups, args.folds, 0):
            reused.setdefault(0, shipped)
    rows = []
    for fold in sorted(set(args.only if args.only is not None else range(n_folds)) | set(reused)):
        run_dir = reused.get(fold) or Path(args.out) / f"{args.organ}-fold{fold}"
        if fold not in reused:
            run_training(args.organ, data, run_dir, fold_config(args), fold=fold, folds=args.folds)
        rows.append(fold_row(fold, json.loads((run_dir / "card.json").read_text()), run_dir))
    summary = summarize(args.organ, rows, spec.default_threshold)
    summary["describes"] = (
        f"{len(rows)} model(s), one per fold (each fold's `run` and `config`), each trained without its "
        "held-out group(s): figures of the recipe, not of the shipped weights unless a fold's run is the "
        "shipped run"
    )
    summary["command"] = "python -m trainer.cv " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(table(summary))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.organ}.json").write_text(json.dumps(summary, indent=1))
    (Path(args.out) / f"{args.organ}.md").write_text(table(summary) + "\n")
    if args.card:
        card_path = Path(args.card)
        card = json.loads(card_path.read_text())
        card["cross_validation"] = summary
        card_path.write_text(json.dumps(card, indent=2) + "\n")  # the model store's cards are indented by 2
    return 0


def fold_config(args: argparse.Namespace):
    """The TrainConfig each fold trains with: the organ's recipe under the command line's overrides."""
    cfg = default_config(
        args.organ,
        epochs=args.epochs,
        time_budget_min=args.minutes,
        threads=args.threads,
        patience=args.patience,
        precision=args.precision,
        ema=args.ema,
        widths=tuple(args.widths) if args.widths else None,
        loss=args.loss,
    )
    return _with_augment(cfg, json.loads(args.augment)) if args.augment else cfg


def _with_augment(cfg, overrides: dict):
    """cfg with AugmentConfig fields replaced (JSON lists become the tuples AugmentConfig holds)."""
    import dataclasses

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, **fields))


if __name__ == "__main__":
    raise SystemExit(main())
