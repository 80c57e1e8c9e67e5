"""The training loop: a fixed sequence of hooks (nnU-Net style). A variant overrides one hook
(e.g. `build_loss`) instead of copying the loop.

Runs single-process or under `torchrun` (DDP over gloo on the CPU): every rank trains on its own slice
of each epoch's batches; rank 0 validates, checkpoints and decides when to stop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.losses import DiceFocalLoss
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from services.networks import create_model
from services.preprocess import Restore, normalize, pad_to_multiple, probabilities, restore
from services.spec import LOSSES, OrganSpec
from trainer.augment import AugmentConfig, augment
from trainer.data import PairSet

log = logging.getLogger(__name__)

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class TrainConfig:
    arch: str = "erunet"
    widths: tuple[int, ...] | None = None
    epochs: int = 200
    time_budget_min: float = 40.0  # the LR schedule and the run end when either budget is spent
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.03  # fraction of the budget
    patience: int = 40  # epochs without a better validation Dice
    val_every: int = 1  # validate every N epochs (and always after the last); full-size validation is costly
    samples_per_epoch: int | None = None  # default: one pass over the training images
    # dicefocal | dicefocal-batch | bce; dicefocal-batch takes Dice over the whole batch's pixels instead of
    # averaging it per crop (a crop with few nuclei then weighs by its pixels, as in the tile's pixel Dice)
    loss: str = "dicefocal"  # services.spec.LOSSES
    seed: int = 0
    threads: int | None = None
    # f32 | bf16: the training forward pass under torch.autocast in bfloat16 (weights, optimiser and loss stay
    # f32); on a CPU with AMX (this machine) a 3-D step is 2.4× faster. Validation and export are f32.
    precision: str = "f32"
    # decay per step of an exponential moving average of the weights (0: none). Where one is kept, the average
    # is what is validated, kept (best.pt, the checkpoint's "model") and exported; training steps the weights.
    ema: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two binary masks; two empty masks agree perfectly."""
    pred, target = pred.bool(), target.bool()
    total = int(pred.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & target).sum()) / total


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def network(arch: str, widths, channels: int) -> nn.Module:
    """A fresh network of a run's architecture (its config's arch and widths; None: the architecture's
    default widths): what the run's checkpoints load into."""
    sized = {"widths": tuple(widths)} if widths else {}
    return create_model(arch, in_channels=channels, out_channels=1, **sized)


def last_epoch_network(run_dir: Path, channels: int) -> nn.Module:
    """A run's network with the weights it ended with (its checkpoint.pt), in eval mode."""
    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = network(state["config"]["arch"], state["config"].get("widths"), channels)
    model.load_state_dict(state["model"])
    return model.eval()


def predict_full(
    model: nn.Module, pairs: PairSet, i: int, spec: OrganSpec, memory_format=torch.contiguous_format
) -> torch.Tensor:
    """Probability map of pair i at its original size, as the organ server returns it (call under no_grad)."""
    img = pairs.images[i : i + 1].float() / 255.0
    full = pairs.full_masks[i]
    x = normalize(img, spec)
    if spec.inference.mode == "resize":
        how = Restore(full.shape[0], full.shape[1], resized=True)
    else:
        x, how = pad_to_multiple(x, spec.inference.pad_multiple)
    return restore(probabilities(model, x.contiguous(memory_format=memory_format), spec), how)


class Trainer:
    """Hooks, in order: build_model, build_loss, build_optimizer; per epoch: on_epoch_start, train_step × n,
    validate, on_epoch_end (checkpoint, early stopping). Override one to make a variant."""

    def __init__(
        self, spec: OrganSpec, train: PairSet, val: PairSet, config: TrainConfig, run_dir: str | Path
    ):
        self.spec, self.train_set, self.val_set, self.cfg = spec, train, val, config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = _world()
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        self.model = self.build_model()
        self.net: nn.Module = (
            nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        )
        self.loss_fn = self.build_loss()
        self.optimizer = self.build_optimizer()
        self.ema: AveragedModel | None = None  # made by fit() (or a resumed checkpoint) when cfg.ema is set
        self.trained_weights_scores: dict | None = None
        self.epoch = 0
        self.best_dice = -1.0
        self.best_epoch = -1
        self.history: list[dict] = []
        self.elapsed_before = 0.0  # seconds spent in earlier (resumed) sessions

    @property
    def served(self) -> nn.Module:
        """The network validated, kept and exported: the weights' moving average while a run keeps one,
        else the trained network itself (also in a Trainer made only to score weights)."""
        return self.model if self.ema is None else self.ema.module

    def _keep_average(self) -> None:
        if self.cfg.ema and self.ema is None:
            if not 0.0 < self.cfg.ema < 1.0:
                raise ValueError(f"ema must be a decay between 0 and 1 (e.g. 0.99), not {self.cfg.ema!r}")
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema))
            self.ema.module.eval()

    # --- hooks ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = network(self.cfg.arch, self.cfg.widths, self.spec.channels)
        return model.to(memory_format=self.memory_format)

    @property
    def memory_format(self) -> torch.memory_format:
        """channels_last for f32, where oneDNN's convolutions are fastest in it; the default layout under
        bf16 autocast, where channels_last made a step of the liver network slower than f32 (one thread,
        batch 8 at 256²: bf16 0.85-0.88 s contiguous against 2.36-2.38 s channels_last, f32 1.56-1.61 s
        channels_last; docs/liver-grouped-cv.md, "Training in bfloat16")."""
        return torch.contiguous_format if self.cfg.precision == "bf16" else torch.channels_last

    def build_loss(self) -> nn.Module:
        if self.cfg.loss in ("dicefocal", "dicefocal-batch"):
            # Dice + binary focal, weighted α = β = 0.5.
            return DiceFocalLoss(
                sigmoid=True,
                lambda_dice=0.5,
                lambda_focal=0.5,
                gamma=2.0,
                batch=self.cfg.loss == "dicefocal-batch",
            )
        if self.cfg.loss == "bce":
            return nn.BCEWithLogitsLoss()
        raise KeyError(f"unknown loss {self.cfg.loss!r}; valid: {', '.join(LOSSES)}")

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def learning_rate(self, progress: float) -> float:
        """Linear warm-up then cosine decay over the run's progress (0 → 1)."""
        if progress < self.cfg.warmup:
            return self.cfg.lr * max(progress / self.cfg.warmup, 0.05)
        p = (progress - self.cfg.warmup) / (1 - self.cfg.warmup)
        return self.cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    def on_epoch_start(self, progress: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(progress)
        self.net.train()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.train_set.images[idx].float() / 255.0
        masks = self.train_set.masks[idx].float()
        images, masks = augment(images, masks, self.cfg.augment, self.gen)
        x = normalize(images, self.spec).contiguous(memory_format=self.memory_format)
        return x, masks

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            out = self.net(x)
        loss = self.loss_fn(out.float(), y)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(loss.detach())

    @torch.no_grad()
    def predict_val(self, i: int) -> torch.Tensor:
        """Probability map of validation case i at its original size (as the organ server returns it)."""
        return predict_full(self.served, self.val_set, i, self.spec, self.memory_format)

    @torch.no_grad()
    def validate(self) -> dict:
        """Scores on the validation set; None and empty ones when nothing is held out (a final model)."""
        if len(self.val_set) == 0:
            return {"val_dice": None, "val_loss": None, "val_dice_at": {}, "val_dice_pooled_at": {},
                    "val_dice_per_case": {}}  # fmt: skip
        self.served.eval()
        per_threshold = {t: [] for t in THRESHOLDS}
        overlap = {t: [0, 0] for t in THRESHOLDS}  # over every validation pixel: (2|P∩T|, |P|+|T|)
        losses = []
        for i in range(len(self.val_set)):
            prob = self.predict_val(i)
            target = self.val_set.full_masks[i]
            truth = target.bool()
            for t in THRESHOLDS:
                pred = prob >= t
                per_threshold[t].append(dice_score(pred, target))
                overlap[t][0] += 2 * int((pred & truth).sum())
                overlap[t][1] += int(pred.sum()) + int(truth.sum())
            losses.append(
                float(
                    self.loss_fn(
                        torch.logit(prob.clamp(1e-4, 1 - 1e-4))[None, None], target.float()[None, None]
                    )
                )
            )
        dice_at = {f"{t:.1f}": float(np.mean(v)) for t, v in per_threshold.items()}
        return {
            "val_dice": dice_at["0.5"],
            "val_loss": float(np.mean(losses)),
            "val_dice_at": dice_at,
            # one Dice over all validation pixels: a held-out volume's 3-D Dice
            "val_dice_pooled_at": {f"{t:.1f}": a / b if b else 1.0 for t, (a, b) in overlap.items()},
            "val_dice_per_case": dict(zip(self.val_set.names, per_threshold[0.5], strict=True)),
        }

    def score_trained_weights(self) -> dict:
        """With a moving average: the trained weights of the last step scored as well, what the run would
        serve without the average (the same run, so the two compare pair by pair)."""
        ema, self.ema = self.ema, None  # validate() scores `served`: the trained network while ema is None
        try:
            scores = self.validate()
        finally:
            self.ema = ema
        return {k: v for k, v in scores.items() if k != "val_dice_per_case"}

    def on_epoch_end(self, record: dict) -> bool:
        """Record, checkpoint, and return True to stop early."""
        self.history.append(record)
        if record["val_dice"] is None or record["val_dice"] > self.best_dice:  # nothing held out: the latest
            self.best_dice, self.best_epoch = record["val_dice"], record["epoch"]
            torch.save(self.served.state_dict(), self.run_dir / "best.pt")
        self.save_checkpoint()
        self.write_metrics()
        return record["epoch"] - self.best_epoch >= self.cfg.patience

    # --- state ------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "model": self.served.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "best_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "elapsed": self.elapsed_before + (time.monotonic() - self.started),
            "gen": self.gen.get_state(),
            "config": asdict(self.cfg),
        }
        if self.ema is not None:  # "model" is the average; a resumed run needs what it averages
            state["trained_model"] = self.model.state_dict()
            state["ema"] = self.ema.state_dict()
        tmp = self.run_dir / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.run_dir / "checkpoint.pt")  # a crash mid-save never corrupts the last checkpoint

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state.get("trained_model", state["model"]))
        if "ema" in state:
            self._keep_average()
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best_dice, self.best_epoch = state["epoch"], state["best_dice"], state["best_epoch"]
        self.history, self.elapsed_before = state["history"], state["elapsed"]
        self.gen.set_state(state["gen"])
        log.info("resumed from %s at epoch %d (best Dice %s)", path, self.epoch, self.best_dice)

    def write_metrics(self) -> None:
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        summary = {
            "best_epoch": self.best_epoch,
            "best_val_dice": self.best_dice,
            "epochs_run": self.epoch,
            "train_seconds": round(self.elapsed(), 1),
            "val_dice_at_best": best["val_dice_at"] if best else None,
            "val_dice_per_case_at_best": best["val_dice_per_case"] if best else None,
            "history": [{k: v for k, v in h.items() if k != "val_dice_per_case"} for h in self.history],
        }
        if self.trained_weights_scores is not None:
            summary["trained_weights_at_end"] = self.trained_weights_scores
        (self.run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started)

    # --- the loop ---------------------------------------------------------------------------------
    def end_epoch(self, train_loss: float) -> bool:
        """Validate the current weights, record the epoch and log it; True means stop early."""
        self.unvalidated_loss = None
        record = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(self.elapsed(), 1),
            **self.validate(),
        }
        stop = self.on_epoch_end(record)
        if record["val_dice"] is None:
            log.info("epoch %d  loss %.4f  (nothing held out)  %.0fs", self.epoch, record["train_loss"],
                     record["seconds"])  # fmt: skip
            return stop
        log.info(
            "epoch %d  loss %.4f  val loss %.4f  val Dice %.4f  (best %.4f @ %d)  %.0fs",
            self.epoch,
            record["train_loss"],
            record["val_loss"],
            record["val_dice"],
            self.best_dice,
            self.best_epoch,
            record["seconds"],
        )
        return stop

    def fit(self) -> dict:
        self.started = time.monotonic()
        self._keep_average()
        self.unvalidated_loss: float | None = None
        cfg = self.cfg
        budget = cfg.time_budget_min * 60
        n_train = len(self.train_set)
        samples = cfg.samples_per_epoch or n_train
        steps = max(1, samples // (cfg.batch_size * self.world))
        while self.epoch < cfg.epochs:
            progress = torch.tensor([max(self.epoch / cfg.epochs, self.elapsed() / budget)])
            if self.world > 1:
                dist.broadcast(progress, 0)  # every rank follows rank 0's clock
            if progress.item() >= 1.0:
                break
            self.on_epoch_start(progress.item())
            order = torch.randint(
                0,
                n_train,
                (steps * cfg.batch_size * self.world,),
                generator=torch.Generator().manual_seed(cfg.seed + self.epoch),
            )
            mine = order.view(steps, self.world, cfg.batch_size)[:, self.rank]
            losses = [
                self.train_step(*self.batch(idx))
                for idx in tqdm(mine, desc=f"epoch {self.epoch + 1}", leave=False, disable=self.rank != 0)
            ]
            self.epoch += 1
            stop = torch.tensor([0])
            if self.rank == 0:
                if self.epoch % cfg.val_every == 0 or self.epoch >= cfg.epochs:
                    stop[0] = int(self.end_epoch(float(np.mean(losses))))
                else:
                    self.unvalidated_loss = float(np.mean(losses))
            if self.world > 1:
                dist.broadcast(stop, 0)
            if stop.item():
                log.info("early stop: no better validation Dice for %d epochs", cfg.patience)
                break
        if self.rank == 0:
            if self.unvalidated_loss is not None:  # budget ended between validations
                self.end_epoch(self.unvalidated_loss)
            if self.ema is not None and len(self.val_set):
                self.trained_weights_scores = self.score_trained_weights()
            self.write_metrics()
        return {
            "best_val_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "seconds": self.elapsed(),
        }
