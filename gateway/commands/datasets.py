"""`medseg dataset push|list|fetch`: labelled datasets in the object store (the format: common/datasets.py).

A gateway command because `push` records the dataset in the gateway's database (gateway/datasets.py), which
the gateway alone owns; `list` and `fetch` read only the object store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from common.datasets import fetch_dataset, list_datasets, push_dataset
from common.errors import MedSegError
from common.objectstore import ObjectStore
from common.settings import get_settings
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.datasets import record_dataset

logger = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    """Register `dataset` and its sub-commands on the top-level `medseg` parser."""
    parser = subparsers.add_parser("dataset", help="push, list and fetch labelled datasets")
    sub = parser.add_subparsers(dest="dataset_command", required=True)

    push = sub.add_parser("push", help="validate a directory or zip of image/mask pairs and upload it")
    push.add_argument("--organ", required=True, help="organ the masks label (a folder under services/)")
    push.add_argument("--name", default=None, help="display name (default: the folder or zip name)")
    push.add_argument("--notes", default=None, help="free-text notes stored with the dataset")
    push.add_argument("--no-db", action="store_true", help="do not record the dataset in the database")
    push.add_argument("path", type=Path, help="DIR or ZIP: NNN.png + NNN_mask.png, or images/ + masks/")
    push.set_defaults(func=_push)

    listing = sub.add_parser("list", help="list complete datasets in the object store")
    listing.add_argument("--organ", default=None)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    fetch = sub.add_parser("fetch", help="download a dataset into a local cache (sha256-verified)")
    fetch.add_argument("dataset_id")
    fetch.add_argument("--cache-dir", type=Path, default=None, help="default: <state dir>/cache/datasets")
    fetch.set_defaults(func=_fetch)


def _store():
    store = ObjectStore.from_settings(get_settings())
    store.ensure_buckets()
    return store


def _push(args: argparse.Namespace) -> int:
    try:
        store = _store()
        bar = tqdm(desc="upload", unit="file", disable=None)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        if args.no_db:
            manifest = push_dataset(store, args.organ, args.path, args.name, progress=progress)
        else:
            url = get_settings().sqlalchemy_url
            run_migrations(url)  # before the upload: a database that is down fails fast, nothing stored
            with session_scope(make_engine(url)) as session:
                manifest = push_dataset(store, args.organ, args.path, args.name, progress=progress)
                # a failure here deletes the uploaded dataset again (record_dataset)
                record_dataset(session, store, manifest, actor="cli", action="dataset.push", notes=args.notes)
        bar.close()
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"dataset {manifest['id']}: {manifest['pair_count']} pairs, {manifest['size_bytes']} bytes, "
        f"hash {manifest['dataset_hash']}"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        rows = list_datasets(_store(), organ=args.organ)
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no datasets")
        return 0
    print(f"{'ID':24} {'ORGAN':8} {'PAIRS':>6} {'MB':>8}  {'CREATED':20} {'HASH':14} NAME")
    for m in rows:
        print(
            f"{m['id']:24} {m['organ']:8} {m['pair_count']:6d} {m['size_bytes'] / 1e6:8.1f}  "
            f"{m['created_at'][:19]:20} {m['dataset_hash'][:12]:14} {m['name']}"
        )
    return 0


def _fetch(args: argparse.Namespace) -> int:
    cache = args.cache_dir or get_settings().state_dir / "cache" / "datasets"
    try:
        root = fetch_dataset(_store(), args.dataset_id, cache)
    except MedSegError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(root)
    return 0
