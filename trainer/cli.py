"""`medseg train …` and `medseg model register|set-default|list`.

    medseg train --organ liver --dataset liver-0123abcd --out model-store --register --set-default
    medseg train --organ liver --out model-store      # the recipe's data, architecture and budget
    medseg model register --organ liver --mar model-store/liver.mar --set-default

`train` trains one fold (optionally under torchrun) by the organ's recipe (services/<organ>/recipe.yaml:
architecture, widths, budget, batch size, augmentation and, without --data/--dataset, the training data;
options given here win), packages the run as a .mar with its card, uploads the run's files to the runs
bucket (`--upload-run`) and registers the .mar with the organ's TorchServe (`--register`, made the default
with `--set-default`). The organ server's gRPC management address is `Settings.organ_host` at the port in
services/<organ>/config.properties and its key is read from the key_file.json its TorchServe wrote under
the state dir, unless --management-address / --management-key-file say otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch.distributed as dist

from common.datasets import fetch_dataset
from common.errors import InvalidInput, MedSegError
from common.launcher import LauncherError, read_keys
from common.model_store import management_client, mar_manifest, register_version
from common.objectstore import ObjectStore
from common.settings import get_settings
from services.spec import LOSSES, PRECISIONS
from trainer.data import recipe_data
from trainer.publish import default_run_id, default_version, publish_run, upload_run

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model for an organ and package it as a .mar")
    p.add_argument("--organ", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="local folder of image/mask pairs (default: the recipe's data.train)")
    src.add_argument("--dataset", help="dataset id in the object store (fetched to a sha256-verified cache)")
    p.add_argument("--arch", default=None, help="architecture (see services.networks; default: the recipe's)")
    p.add_argument("--widths", default=None, help="channel widths, comma-separated (e.g. 6,12,24)")
    p.add_argument("--run-dir", default=None, help="where the run writes its files (default .medseg/runs/…)")
    p.add_argument("--run-id", default=None, help="run id in the runs bucket (default: time, arch, fold)")
    p.add_argument("--out", default=None, help="model store folder to write <organ>.mar and its card into")
    p.add_argument("--version", default=None, help="model version (default: date and time)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument(
        "--folds",
        type=int,
        default=5,
        help="grouped folds (leave-one-group-out when fewer groups); 1 trains on every pair with nothing "
        "held out, for a final model whose figures come from `make cv`",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None, help="time budget (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--val-every", type=int, default=None, help="validate every N epochs (and after the last)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs (smoke runs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--precision", choices=PRECISIONS, default=None, help="training forward pass (default: the recipe's)"
    )
    p.add_argument(
        "--ema",
        type=float,
        default=None,
        help="decay per step of the weights' moving average, e.g. 0.99 (default: the recipe's)",
    )
    p.add_argument("--loss", choices=LOSSES, default=None, help="training loss (default: the recipe's)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--upload-run", action="store_true", help="upload the run files to the runs bucket")
    p.add_argument(
        "--register",
        action="store_true",
        help="upload the .mar to the models bucket and register it with the organ's TorchServe",
    )
    p.add_argument("--set-default", action="store_true", help="with --register: make the new version default")
    _management_options(p)
    p.set_defaults(func=train_command)

    model = sub.add_parser("model", help="register model versions with an organ's TorchServe")
    msub = model.add_subparsers(dest="model_command", required=True)
    reg = msub.add_parser("register", help="upload a .mar and register it as a new version")
    reg.add_argument("--organ", required=True)
    reg.add_argument("--mar", required=True, type=Path, help="the .mar (its card <name>.json beside it)")
    reg.add_argument("--version", default=None, help="the packaged version (default: read from the .mar)")
    reg.add_argument("--model-name", default=None, help="default: the organ's name (what the gateway calls)")
    reg.add_argument("--set-default", action="store_true", help="make the new version the default")
    _management_options(reg)
    reg.set_defaults(func=register_command)

    default = msub.add_parser("set-default", help="make a registered version the default")
    default.add_argument("--organ", required=True)
    default.add_argument("--version", required=True)
    default.add_argument("--model-name", default=None)
    _management_options(default)
    default.set_defaults(func=set_default_command)

    listing = msub.add_parser("list", help="versions registered with the organ's TorchServe")
    listing.add_argument("--organ", required=True)
    listing.add_argument("--model-name", default=None)
    _management_options(listing)
    listing.set_defaults(func=list_command)


def _management_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--management-address", default=None, help="HOST:PORT of the organ's gRPC management API")
    p.add_argument(
        "--management-key-file",
        type=Path,
        default=None,
        help="TorchServe key_file.json (default: the one under the state dir)",
    )


def _store():
    store = ObjectStore.from_settings(get_settings())
    store.ensure_buckets()
    return store


def _management(args: argparse.Namespace):
    key = None
    if args.management_key_file is not None:
        try:
            key = read_keys(args.management_key_file).management
        except LauncherError as exc:
            raise InvalidInput(str(exc)) from exc
    return management_client(args.organ, address=args.management_address, key=key)


def _fail(exc: MedSegError) -> int:
    print(f"error: {exc.message}", file=sys.stderr)
    return 2


def train_command(args: argparse.Namespace) -> int:
    # Not a cycle: trainer.train pulls in MONAI (seconds), and every `medseg` command (`serve` too) loads
    # this module to build its parser, so training's imports wait until `medseg train` runs.
    from trainer.train import default_run_dir, run_training

    if args.set_default and not args.register:
        return _fail(InvalidInput("--set-default needs --register"))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    mgmt = None
    try:
        config = _train_config(args)
        run_dir = Path(args.run_dir or default_run_dir(args.organ, config.arch, args.fold))
        version = args.version or default_version()
        run_id = args.run_id or default_run_id(config.arch, args.fold)
        store = _store() if (args.dataset or args.upload_run or args.register) else None
        if args.register and rank == 0:
            # fail before an hour of training, not after it
            mgmt = _management(args)
            mgmt.list_models(timeout=10)
        data = _training_data(args, store, distributed)
        result = run_training(
            args.organ, data, run_dir, config,
            fold=args.fold, folds=args.folds, limit=args.limit, resume=args.resume, run_id=run_id,
        )  # fmt: skip
        if rank != 0 or "card" not in result:
            return 0
        _publish_trained(args, store, mgmt, run_dir, run_id, version)
    except MedSegError as exc:
        return _fail(exc)
    except (ValueError, FileNotFoundError) as exc:  # bad options or data: the message names the fix
        return _fail(InvalidInput(str(exc)))
    finally:
        if mgmt is not None:
            mgmt.close()
        if distributed:
            dist.destroy_process_group()
    return 0


def _train_config(args: argparse.Namespace):
    """The organ's training config with the command line's overrides."""
    from trainer.train import default_config  # see train_command: MONAI loads only for `medseg train`

    return default_config(
        args.organ,
        arch=args.arch,
        widths=tuple(int(w) for w in args.widths.split(",")) if args.widths else None,
        epochs=args.epochs,
        time_budget_min=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        val_every=args.val_every,
        threads=args.threads,
        precision=args.precision,
        ema=args.ema,
        loss=args.loss,
    )


def _training_data(args: argparse.Namespace, store, distributed: bool):
    """--data, else the recipe's data; a --dataset of the gateway is fetched into the local cache."""
    data = args.data
    if not args.data and not args.dataset:
        data = recipe_data(args.organ)
    if args.dataset:
        data = _fetch(store, args.dataset, get_settings().state_dir / "cache" / "datasets", distributed)
    return data


def _publish_trained(args: argparse.Namespace, store, mgmt, run_dir: Path, run_id: str, version: str) -> None:
    """After training (rank 0): package the run, upload its files, register the archive, as asked."""
    mar = None
    if args.out or args.register:
        mar = publish_run(run_dir, args.organ, Path(args.out or run_dir / "package"), version=version)
        print(f"packaged {mar} (version {version})")
    if args.upload_run:
        keys = upload_run(store, args.organ, run_id, run_dir)
        print(f"run {run_id}: {len(keys)} file(s) in {store.buckets.runs}/{args.organ}/{run_id}/")
    if args.register:
        done = register_version(store, mgmt, mar, args.organ, version, set_default=args.set_default)
        _report_registration(done, args.out)


def _fetch(store, dataset_id: str, cache: Path, distributed: bool) -> Path:
    """Fetch the dataset into the local cache; under torchrun rank 0 downloads, the others then find it
    cached (each still verifies every sha256)."""
    if not distributed:
        return fetch_dataset(store, dataset_id, cache)
    root = fetch_dataset(store, dataset_id, cache) if dist.get_rank() == 0 else None
    dist.barrier()
    return root or fetch_dataset(store, dataset_id, cache)


def register_command(args: argparse.Namespace) -> int:
    try:
        version = args.version or str(mar_manifest(args.mar).get("modelVersion", ""))
        with _management(args) as mgmt:
            done = register_version(
                _store(),
                mgmt,
                args.mar,
                args.organ,
                version,
                set_default=args.set_default,
                model_name=args.model_name,
            )
    except MedSegError as exc:
        return _fail(exc)
    _report_registration(done, args.mar.parent)
    return 0


def set_default_command(args: argparse.Namespace) -> int:
    try:
        with _management(args) as mgmt:
            mgmt.set_default(args.model_name or args.organ, args.version)
    except MedSegError as exc:
        return _fail(exc)
    print(f"{args.model_name or args.organ} version {args.version} is now the default")
    return 0


def list_command(args: argparse.Namespace) -> int:
    name = args.model_name or args.organ
    try:
        with _management(args) as mgmt:
            versions = mgmt.describe(name, "all")
            default = mgmt.describe(name)[0]["modelVersion"]
    except MedSegError as exc:
        return _fail(exc)
    for d in versions:
        ready = sum(w.get("status") == "READY" for w in d.get("workers", []))
        mark = "*" if d["modelVersion"] == default else " "
        print(f"{mark} {name} {d['modelVersion']:20} workers ready: {ready}  {d.get('modelUrl', '')}")
    return 0


def _report_registration(done: dict, model_store: str | Path | None) -> None:
    print(json.dumps(done, indent=1))
    if not done["default"]:
        return
    gateway_store = Path(get_settings().model_store_dir).resolve()
    if model_store is None or Path(model_store).resolve() != gateway_store:
        # the gateway reports the version named by the card in its model store, not TorchServe's default
        log.warning(
            "%s version %s is TorchServe's default now, but the gateway reports the version in %s/%s.json; "
            "package with --out %s so both agree",
            done["model_name"],
            done["version"],
            gateway_store,
            done["organ"],
            gateway_store,
        )
