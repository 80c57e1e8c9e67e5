"""Score a finished run again under its organ's current serving spec, without retraining.

    python -m trainer.rescore --organ cells --run .medseg/runs/cells-v12 --out .medseg/runs/cells-v13 \
        [--package model-store --version 1.3]
    python -m trainer.rescore --organ cells --run model-store/cells.mar --package model-store --version 1.7 \
        --threads 2

When an organ's spec changes how the served network sees an image (`inference` in
services/<organ>/spec.yaml), a run's weights stay valid but its validation figures and recommended
threshold do not. This copies the run to --out, validates its best weights on the same held-out fold
with the trainer's own validation (Trainer.validate, which predicts through
services.preprocess.probabilities as the organ server does), the last epoch's weights too where the run
kept them (checkpoint.pt: the card's `last_epoch`, which `make cv` tables), and rewrites spec.yaml (the new
inference, the threshold it now recommends, the run's own normalisation) and card.json there; the card
keeps the figures it had under `rescored.before`.
--package builds the .mar and its card from the result, as `medseg train --out` does.

A shipped archive (`--run` an .mar, its card beside it) is scored in the runtime its spec serves it in,
on the held-out fold its card names, and packed again (trainer.package.repack: the same networks) with
the new inference as --version in --package; its default threshold is kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from services.spec import load_organ_spec, load_spec
from trainer.augment import AugmentConfig
from trainer.cv import run_split
from trainer.loop import TrainConfig, Trainer
from trainer.run_args import run_tool_parser
from trainer.train import best_threshold, git_commit, last_epoch_metrics

log = logging.getLogger(__name__)


def train_config(card: dict) -> TrainConfig:
    """The run's TrainConfig back from its card (JSON turned its tuples into lists)."""
    raw = dict(card["training"]["config"])
    augment = AugmentConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.pop("augment").items()}
    )
    if raw.get("widths"):
        raw["widths"] = tuple(raw["widths"])
    return TrainConfig(**raw, augment=augment)


def _rescored_card(
    card: dict, trained, spec, scores: dict, threshold: float | None = None, last: dict | None = None
) -> tuple[dict, object]:
    """`card` with `scores` as its metrics (the old ones under `rescored.before`) and `spec` with
    `threshold`, default the one the scores recommend; `last`: the last epoch's weights, scored alike."""
    threshold = best_threshold(scores["val_dice_at"]) if threshold is None else threshold
    spec = dataclasses.replace(spec, default_threshold=threshold)
    before = {
        "inference": trained.to_dict()["inference"],
        "default_threshold": card["default_threshold"],
        "metrics": card["metrics"],
    }
    card = {
        **card,
        "metrics": {
            **card["metrics"],
            "val_dice": scores["val_dice"],
            "val_dice_at_threshold": scores["val_dice_at"],
            "val_loss": scores["val_loss"],
            "val_dice_per_case": scores["val_dice_per_case"],
            **({"last_epoch": last_epoch_metrics(last)} if last else {}),
        },
        "default_threshold": threshold,
        "rescored": {
            "inference": spec.to_dict()["inference"],
            "before": before,
            "commit": git_commit(),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **({"earlier": card["rescored"]} if "rescored" in card else {}),
        },
    }
    return card, spec


def _last_epoch_scores(trainer: Trainer, run: Path) -> dict | None:
    """The weights a run ended with (checkpoint.pt) scored by `trainer`: None for a run without them."""
    path = run / "checkpoint.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    trainer.model.load_state_dict(state["model"])
    return {"epoch": state["epoch"], **trainer.validate()}


def rescore_archive(
    organ: str, mar: Path, out_dir: Path, version: str, threads: int, data: str | Path | None = None
) -> tuple[Path, dict]:
    """A shipped archive scored under the organ's current inference in the runtime it is served in, packed
    again with that inference as `version` in `out_dir`: the new archive and its card."""
    from services.runtime import build
    from trainer.export import measure, unpack_runtimes, validator
    from trainer.package import repack

    card = json.loads(mar.with_suffix(".json").read_text())
    with tempfile.TemporaryDirectory(prefix=f"rescore-{organ}-") as tmp:
        work = Path(tmp)
        trained = unpack_runtimes(mar, work)
        spec = dataclasses.replace(trained, inference=load_organ_spec(organ).inference)
        trainer = validator(organ, card, spec, threads, data)
        scores = measure(trainer, spec.runtime, build(spec.runtime, work, threads)).scores
    # a shipped threshold may have been chosen otherwise (calibrated on grouped folds): kept
    card, spec = _rescored_card(card, trained, spec, scores, trained.default_threshold)
    card["rescored"]["runtime"] = spec.runtime
    command = f"python -m trainer.rescore --organ {organ} --run {mar} --package {out_dir} "
    command += f"--version {version} --threads {threads}"
    why = "the same networks served under the organ's current inference (rescored)"
    new = repack(mar, out_dir, version, why, command, spec=spec, card=card)
    return new, json.loads(new.with_suffix(".json").read_text())


def rescore(organ: str, run: Path, out: Path, data: str | Path | None = None) -> dict:
    """Copy `run` to `out`, score its best weights (and its last epoch's, checkpoint.pt, where the run kept
    them) under the organ's current inference; return the card."""
    if out.resolve() != run.resolve():
        shutil.copytree(run, out, dirs_exist_ok=True)
    card = json.loads((out / "card.json").read_text())
    trained = load_spec(out / "spec.yaml")
    spec = dataclasses.replace(trained, inference=load_organ_spec(organ).inference)
    pairs, train_idx, val_idx = run_split(organ, card, spec, data)
    config = dataclasses.replace(train_config(card), threads=torch.get_num_threads())
    trainer = Trainer(spec, pairs.subset(train_idx), pairs.subset(val_idx), config, out)
    last = _last_epoch_scores(trainer, out)
    trainer.model.load_state_dict(torch.load(out / "best.pt", map_location="cpu"))
    card, spec = _rescored_card(card, trained, spec, trainer.validate(), last=last)
    (out / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    (out / "card.json").write_text(json.dumps(card, indent=1))
    log.info(
        "%s: validation Dice @0.5 %.4f → %.4f under inference %s; threshold %s",
        out,
        card["rescored"]["before"]["metrics"]["val_dice"],
        card["metrics"]["val_dice"],
        card["rescored"]["inference"],
        spec.default_threshold,
    )
    return card


def main(argv: list[str] | None = None) -> int:
    parser = run_tool_parser(__doc__, "finished run folder (best.pt, card.json, …)")
    parser.add_argument(
        "--out", type=Path, help="folder for the rescored run (may be --run; none for an .mar)"
    )
    parser.add_argument("--data", help="image/mask folder (default: the organ's training data)")
    parser.add_argument("--package", type=Path, help="model store folder for <organ>.mar and its card")
    parser.add_argument("--version", help="with --package: the model version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.run.suffix == ".mar":
        if not (args.package and args.version):
            parser.error("an archive (--run *.mar) is packed again: give --package and --version")
        mar, card = rescore_archive(args.organ, args.run, args.package, args.version, args.threads, args.data)
        _print_scores(card)
        print(f"packaged {mar} (version {args.version})")
        return 0
    if args.out is None:
        parser.error("--out is required for a run folder")
    card = rescore(args.organ, args.run, args.out, args.data)
    _print_scores(card)
    if args.package:
        from trainer.publish import publish_run

        mar = publish_run(args.out, args.organ, args.package, version=args.version)
        print(f"packaged {mar} (version {args.version})")
    return 0


def _print_scores(card: dict) -> None:
    before = card["rescored"]["before"]["metrics"]["val_dice_at_threshold"]
    print("| threshold | Dice before | Dice now |\n|---|---:|---:|")
    for t, dice in card["metrics"]["val_dice_at_threshold"].items():
        print(f"| {t} | {before[t]:.4f} | {dice:.4f} |")


if __name__ == "__main__":
    raise SystemExit(main())
