"""A training run end to end: data → grouped K-fold split (no patient on both sides) → Trainer →
TorchScript → metrics card (→ .mar)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from common.datasets import dataset_hash as manifest_hash
from services.spec import SERVICES_DIR, OrganSpec, Recipe, RecipeError, load_organ_spec, load_recipe
from trainer.augment import AugmentConfig
from trainer.data import (
    Groups,
    channel_stats,
    find_pairs,
    fold_count,
    layout_of,
    load_pairs,
    pair_groups,
    split_indices,
)
from trainer.loop import TrainConfig, Trainer, network
from trainer.volumes import VolumeSet, VolumeTrainer, find_volumes, load_volumes

log = logging.getLogger(__name__)


def dataset_hash(root: str | Path) -> str:
    """The dataset hash of a local folder by the manifests' rule (common.datasets.dataset_hash: sha256
    over the sorted per-file sha256 of every image and mask), so a pushed folder keeps its hash."""
    digests = []
    files = find_volumes(root) if layout_of(root) == "nifti" else find_pairs(root)
    for _, image, mask in files:
        digests += [hashlib.sha256(path.read_bytes()).hexdigest() for path in (image, mask)]
    return manifest_hash(digests)


def dataset_record(data: str | Path, pairs: int, limit: int | None) -> dict:
    """What the card says about the data: a fetched dataset (manifest.json beside images/) by its id and
    manifest hash; a local folder by its path and hash (no hash when only part of it was used)."""
    manifest_path = Path(data) / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        return {
            "id": manifest["id"],
            "name": manifest.get("name"),
            "source": f"dataset:{manifest['id']}",
            "hash": manifest["dataset_hash"] if limit is None else None,
            "pairs": pairs,
        }
    return {"source": str(data), "hash": dataset_hash(data) if limit is None else None, "pairs": pairs}


def git_commit() -> str:
    """The checkout's commit, with "-dirty" when the code that trains or serves (trainer/, services/) has
    uncommitted changes. Read when training starts: the code may move on during an hour-long run."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=here)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not commit:
            return "unknown"
        code = (str(here), str(here.parent / "services"))
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *code)
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def best_threshold(dice_at: dict[str, float]) -> float:
    """The threshold a card recommends: the grid value with the best validation Dice."""
    return float(max(dice_at, key=lambda t: dice_at[t]))


def export_torchscript(model: torch.nn.Module, spec: OrganSpec, path: Path) -> Path:
    """Trace the network in eval mode (its control flow does not depend on the data) and save it."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    size = spec.inference.size or (256, 256)
    example = torch.zeros(1, spec.channels, *size)
    with torch.no_grad():
        scripted = torch.jit.trace(model, example)
    scripted.save(str(path))
    return path


def inference_gflops(model: torch.nn.Module, channels: int, size: tuple[int, int]) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, channels, *size))
    return counter.get_total_flops() / 1e9


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    scored = [h for h in history if h["val_dice"] is not None]
    ax2.plot([h["epoch"] for h in scored], [h["val_dice"] for h in scored], label="validation Dice @0.5",
             color="tab:green")  # fmt: skip
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_training(
    organ: str,
    data: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    fold: int = 0,
    folds: int = 5,
    limit: int | None = None,
    resume: bool = False,
    run_id: str | None = None,
) -> dict:
    """Train one fold; returns the run summary. Rank 0 writes best.pt, model.ts, spec.yaml, metrics.json,
    curves.png and card.json (naming `run_id`, default the run dir's name) into run_dir."""
    run_dir = Path(run_dir)
    if load_organ_spec(organ).volumetric:
        return run_volume_training(
            organ, data, run_dir, config, fold=fold, folds=folds, limit=limit, resume=resume, run_id=run_id
        )
    commit = git_commit()
    spec, pairs, groups, train_idx, val_idx = _fold_data(
        organ, data, config, fold=fold, folds=folds, limit=limit
    )
    train, val = pairs.subset(train_idx), pairs.subset(val_idx)
    # validation while training is single-pass (test-time mirror images would cost four times as much);
    # the card then scores the best weights the way the organ serves them
    trainer = Trainer(spec.single_pass(), train, val, config, run_dir)
    if resume and (run_dir / "checkpoint.pt").exists():
        trainer.load_checkpoint(run_dir / "checkpoint.pt")
    result = trainer.fit()
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank != 0:
        return result

    model = _best_model(config, spec, run_dir)
    best, single_pass, last = _score_as_served(trainer, spec, model)
    # nothing held out (--folds 1): the spec's threshold stays (calibrate it with `make cv`)
    threshold = best_threshold(best["val_dice_at"]) if best["val_dice_at"] else spec.default_threshold
    spec = dataclasses.replace(spec, default_threshold=threshold)
    _write_model_files(run_dir, spec, model, trainer.history)
    card = {
        "run_id": run_id or run_dir.name,
        "organ": organ,
        "architecture": config.arch,
        **_model_size(model, spec),
        "dataset": {**dataset_record(data, len(pairs), limit), "train": len(train), "validation": len(val)},
        "split": split_record(groups, folds, fold, config.seed, val_idx),
        "metrics": _card_metrics(best, trainer.best_epoch, single_pass, last),
        "default_threshold": float(threshold),
        "training": _card_training(trainer, config),
        "commit": commit,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    (run_dir / "card.json").write_text(json.dumps(card, indent=1))
    log.info("run done: best validation Dice %s at epoch %d, threshold %s, %.0fs",
             trainer.best_dice, trainer.best_epoch, threshold, trainer.elapsed())  # fmt: skip
    return {**result, "card": card, "spec": spec}


def run_volume_training(
    organ: str,
    data: str | Path,
    run_dir: Path,
    config: TrainConfig,
    *,
    fold: int,
    folds: int,
    limit: int | None,
    resume: bool,
    run_id: str | None,
) -> dict:
    """run_training for a 3-D organ (spec `dimensions: 3`; trainer.volumes): each volume is one subject, so
    the folds are by file; the card carries Dice per label (and their mean) at every threshold."""
    commit = git_commit()
    spec = load_organ_spec(organ)
    volumes = load_volumes(data, spec, limit=limit)
    groups = volume_groups(volumes)
    train_idx, val_idx = split_indices(groups, folds, fold, config.seed)
    log.info("fold %d of %d: %d training and %d validation volumes", fold, fold_count(groups, folds),
             len(train_idx), len(val_idx))  # fmt: skip
    recipe = load_recipe(organ)
    train, val = volumes.subset(train_idx), volumes.subset(val_idx)
    trainer = VolumeTrainer(spec, train, val, config, run_dir, crop=recipe.crop)
    if resume and (run_dir / "checkpoint.pt").exists():
        trainer.load_checkpoint(run_dir / "checkpoint.pt")
    result = trainer.fit()
    model = trainer.build_model()
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu"))
    best = next(h for h in trainer.history if h["epoch"] == trainer.best_epoch)
    last = trainer.history[-1]
    threshold = best_threshold(last["val_dice_at"]) if last["val_dice_at"] else spec.default_threshold
    spec = dataclasses.replace(spec, default_threshold=threshold)
    _write_model_files(run_dir, spec, model, trainer.history)
    metrics = _card_metrics(best, trainer.best_epoch, {}, last)
    metrics["val_dice_per_label_at_threshold"] = best["val_dice_per_label_at"]
    metrics["last_epoch"]["val_dice_per_label_at_threshold"] = last["val_dice_per_label_at"]
    card = {
        "run_id": run_id or run_dir.name,
        "organ": organ,
        "architecture": config.arch,
        "labels": list(spec.labels),
        **_model_size(model, spec),
        "dataset": {
            **dataset_record(data, len(volumes), limit),
            "volumes": len(volumes),
            "train": len(train),
            "validation": len(val),
        },
        "split": split_record(groups, folds, fold, config.seed, val_idx),
        "metrics": metrics,
        "default_threshold": float(threshold),
        "training": {**_card_training(trainer, config), "crop": list(trainer.crop)},
        "commit": commit,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    (run_dir / "card.json").write_text(json.dumps(card, indent=1))
    log.info("run done: best validation Dice %s at epoch %d, last %s, %.0fs", trainer.best_dice,
             trainer.best_epoch, last["val_dice"], trainer.elapsed())  # fmt: skip
    return {**result, "card": card, "spec": spec}


def volume_groups(volumes: VolumeSet) -> Groups:
    """Each volume is one subject (the Decathlon's hippocampus crops: one per subject)."""
    return Groups(labels=list(volumes.names), source="pairs")


def _fold_data(organ: str, data, config: TrainConfig, *, fold: int, folds: int, limit: int | None):
    """(spec, pairs, groups, train indices, validation indices): the fold's grouped split of the data (the
    dataset's own groups, else the recipe's data.groups rule), the spec normalising with the train images'
    channel statistics."""
    spec = load_organ_spec(organ)
    pairs = load_pairs(data, spec, limit=limit)
    groups = pair_groups(data, pairs, load_recipe(organ).data.groups)
    train_idx, val_idx = split_indices(groups, folds, fold, config.seed)
    log.info("fold %d of %d, %s: %d training and %d validation pairs, validating on %s",
             fold, fold_count(groups, folds), groups.describe(), len(train_idx), len(val_idx),
             ", ".join(sorted({groups.labels[i] for i in val_idx}))[:200])  # fmt: skip
    mean, std = channel_stats(pairs.images[train_idx])
    spec = dataclasses.replace(
        spec, mean=tuple(round(m, 4) for m in mean), std=tuple(round(s, 4) for s in std)
    )
    return spec, pairs, groups, train_idx, val_idx


def split_record(groups: Groups, folds: int, fold: int, seed: int, val_idx) -> dict:
    """The card's `split`: enough to rebuild it (trainer.cv.run_split) and to say whom it validates on."""
    held_out: dict[str, int] = {}
    for i in val_idx:
        held_out[groups.labels[i]] = held_out.get(groups.labels[i], 0) + 1
    return {
        "folds": fold_count(groups, folds),
        "fold": fold,
        "seed": seed,
        "grouping": groups.describe(),
        "group_source": groups.source,
        "groups": len(set(groups.labels)),
        "validation_groups": held_out,
    }


def _best_model(config: TrainConfig, spec: OrganSpec, run_dir: Path):
    """A fresh model of the run's architecture with the best epoch's weights (best.pt)."""
    model = network(config.arch, config.widths, spec.channels)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu"))
    return model


def _score_as_served(trainer: Trainer, spec: OrganSpec, model) -> tuple[dict, dict, dict]:
    """The best and the last epoch's validation scores and, when the organ serves with test-time
    augmentation, both rescored that way (their single-pass Dice kept as val_dice_single_pass). The last
    epoch's are the honest figures (chosen by nothing but the budget), so they are scored as served too."""
    best = next(h for h in trainer.history if h["epoch"] == trainer.best_epoch)
    last = trainer.history[-1]
    single_pass = {}
    if spec.inference.tta != "none":
        trainer.spec = spec
        single_pass = {"val_dice_single_pass": best["val_dice"]}
        # the trainer's network holds the weights the run ended with
        last = {**last, **trainer.validate(), "val_dice_single_pass": last["val_dice"]}
        trainer.served.load_state_dict(model.state_dict())
        best = {**best, **trainer.validate()}
    return best, single_pass, last


def _write_model_files(run_dir: Path, spec: OrganSpec, model, history: list[dict]) -> None:
    """spec.yaml, model.ts and curves.png: what packaging and a reader of the run need beside the card."""
    import yaml

    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    export_torchscript(model, spec, run_dir / "model.ts")
    plot_curves(history, run_dir / "curves.png")


def _model_size(model, spec: OrganSpec) -> dict:
    """The card's parameters and inference cost (GFLOPs at the serving input size)."""
    size = spec.inference.size or (512, 512)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "inference_gflops": round(inference_gflops(model, spec.channels, tuple(size)), 3),
        "inference_gflops_input": list(size),
    }


def _card_metrics(best: dict, best_epoch: int, single_pass: dict, last: dict) -> dict:
    """The best epoch's validation figures (that epoch was chosen on the validation set itself) and the
    last epoch's (chosen by nothing but the budget), both as served when `single_pass` is given."""
    return {
        "val_dice": best["val_dice"],
        "val_dice_at_threshold": best["val_dice_at"],
        "val_dice_pooled_at_threshold": best.get("val_dice_pooled_at"),
        "val_loss": best["val_loss"],
        "best_epoch": best_epoch,
        **single_pass,
        "last_epoch": last_epoch_metrics(last),
    }


def last_epoch_metrics(last: dict) -> dict:
    """A card's `last_epoch` from the last epoch's validation scores."""
    single_pass = {k: last[k] for k in ("val_dice_single_pass",) if k in last}
    return {
        "epoch": last["epoch"],
        "val_dice_at_threshold": last["val_dice_at"],
        "val_dice_pooled_at_threshold": last.get("val_dice_pooled_at"),
        **single_pass,
    }


def _card_training(trainer: Trainer, config: TrainConfig) -> dict:
    """How the run trained: time, epochs, processes and threads, and the whole config (as JSON values)."""
    return {
        "seconds": round(trainer.elapsed(), 1),
        "epochs": trainer.epoch,
        "processes": int(os.environ.get("WORLD_SIZE", 1)),
        "torch_threads": torch.get_num_threads(),
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
    }


def default_run_dir(organ: str, arch: str, fold: int) -> Path:
    """Where `medseg train` writes a run unless told (and where `make cv` finds the shipped fold 0)."""
    return Path(".medseg/runs") / f"{organ}-{arch}-fold{fold}"


def augment_config(recipe: Recipe) -> AugmentConfig:
    """The recipe's `augment` section as an AugmentConfig (YAML lists become the tuples it holds)."""
    names = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = set(recipe.augment) - names
    if unknown:
        raise RecipeError(
            f"{recipe.path}: unknown augment field(s) {', '.join(sorted(unknown))}; "
            f"trainer.augment.AugmentConfig has {', '.join(sorted(names))}"
        )
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.augment.items()})


def default_config(organ: str, *, services_dir: Path = SERVICES_DIR, **overrides) -> TrainConfig:
    """The organ's recipe (services/<organ>/recipe.yaml) as a TrainConfig; overrides that are not None win."""
    recipe = load_recipe(organ, services_dir)
    cfg = {**recipe.train_config(), **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(augment=augment_config(recipe), **cfg)
