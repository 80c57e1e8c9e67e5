"""`medseg train …`: train a model for an organ (optionally under torchrun) and package it."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch.distributed as dist

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model for an organ and package it as a .mar")
    p.add_argument("--organ", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="local folder of image/mask pairs")
    src.add_argument("--dataset", help="dataset id in the object store")
    p.add_argument("--arch", default=None, help="architecture (see trainer.models)")
    p.add_argument("--run-dir", default=None, help="where the run writes its files (default .medseg/runs/…)")
    p.add_argument("--out", default=None, help="model store folder to write <organ>.mar and its card into")
    p.add_argument("--version", default=None, help="model version (default: date and time)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None, help="time budget")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs (smoke runs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from trainer.train import default_config, run_training

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    config = default_config(
        args.organ,
        arch=args.arch,
        epochs=args.epochs,
        time_budget_min=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        threads=args.threads,
    )
    run_dir = Path(args.run_dir or Path(".medseg/runs") / f"{args.organ}-{config.arch}-fold{args.fold}")
    data = args.data
    if args.dataset:
        from gateway.storage import ObjectStore
        from trainer.datasets import fetch_dataset  # object store → local cache

        data = fetch_dataset(ObjectStore.from_settings(), args.dataset, Path(".medseg/cache/datasets"))
    try:
        result = run_training(
            args.organ,
            data,
            run_dir,
            config,
            fold=args.fold,
            folds=args.folds,
            limit=args.limit,
            resume=args.resume,
        )
        if "card" in result and args.out:
            from trainer.publish import publish_run

            publish_run(run_dir, args.organ, Path(args.out), version=args.version)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0
