"""push / fetch / list datasets on a real SeaweedFS: real liver and MoNuSeg pairs, crafted bad zips."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from common.datasets import (
    DatasetError,
    DatasetIntegrityError,
    dataset_hash,
    fetch_dataset,
    list_datasets,
    push_dataset,
    validate_dataset,
)
from common.errors import ServiceUnavailable
from common.settings import get_settings
from gateway.commands import datasets as datasets_command
from gateway.core.db import make_engine, session_scope
from gateway.datasets import record_dataset
from gateway.models import AuditLog, Dataset
from tests.data import SHARED_DATA

pytestmark = pytest.mark.integration

DATA = SHARED_DATA
LIVER = DATA / "liver" / "train"
MONUSEG = DATA / "monuseg" / "train"


def _need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _liver_zip(tmp_path: Path, n: int, folder: str = "train") -> Path:
    src = _need(LIVER)
    path = tmp_path / f"liver{n}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            for name in (f"{i:03d}.png", f"{i:03d}_mask.png"):
                zf.write(src / name, f"{folder}/{name}" if folder else name)
    return path


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


GOOD_IMAGE = _png(np.full((32, 32), 100, np.uint8))
GOOD_MASK = _png(np.pad(np.full((8, 8), 255, np.uint8), 12))
TWO_PAIRS = {
    "000.png": GOOD_IMAGE,
    "000_mask.png": GOOD_MASK,
    "001.png": GOOD_IMAGE,
    "001_mask.png": GOOD_MASK,
}


def _zip(tmp_path: Path, entries: dict[str, bytes], name: str = "bad.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
    return path


def _objects(store) -> list[str]:
    return [o.key for o in store.list(store.buckets.datasets)]


def test_push_liver_zip_manifest_matches_the_files(clean_buckets, tmp_path):
    store = clean_buckets
    manifest = push_dataset(store, "liver", _liver_zip(tmp_path, 5), name="liver five")

    assert manifest["pair_count"] == 5 and manifest["layout"] == "paired" and manifest["name"] == "liver five"
    hashes, total = [], 0
    for i, pair in enumerate(manifest["pairs"]):
        for kind, source in (("image", f"{i:03d}.png"), ("mask", f"{i:03d}_mask.png")):
            rec = pair[kind]
            original = (LIVER / source).read_bytes()
            assert (
                rec["source"] == source and rec["size"] == len(original) and rec["sha256"] == _sha(original)
            )
            assert (rec["width"], rec["height"]) == (512, 512)
            assert store.get_bytes(store.buckets.datasets, f"{manifest['id']}/{rec['key']}") == original
            hashes.append(rec["sha256"])
            total += len(original)
        assert pair["image"]["key"] == f"images/{i:03d}.png" and pair["mask"]["key"] == f"masks/{i:03d}.png"
    assert manifest["dataset_hash"] == dataset_hash(hashes) and manifest["size_bytes"] == total
    stored = json.loads(store.get_bytes(store.buckets.datasets, f"{manifest['id']}/manifest.json"))
    assert stored == manifest
    assert [m["id"] for m in list_datasets(store)] == [manifest["id"]]
    assert "pairs" not in list_datasets(store)[0]


def test_push_monuseg_dir_then_fetch_gives_a_verified_trainable_copy(clean_buckets, tmp_path):
    store = clean_buckets
    src = _need(MONUSEG)
    names = sorted(p.name for p in (src / "images").iterdir())[:2]
    root = tmp_path / "monuseg2"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for name in names:
            shutil.copyfile(src / sub / name, root / sub / name)

    manifest = push_dataset(store, "cells", root)
    assert manifest["pair_count"] == 2 and manifest["layout"] == "split"
    assert {p["image"]["width"] for p in manifest["pairs"]} == {1000}

    local = fetch_dataset(store, manifest["id"], tmp_path / "cache")
    for name in names:
        assert (local / "images" / name).read_bytes() == (src / "images" / name).read_bytes()
        assert (local / "masks" / name).read_bytes() == (src / "masks" / name).read_bytes()
    from trainer.data import find_pairs  # the trainer reads the fetched copy as-is

    assert [n for n, _, _ in find_pairs(local)] == [Path(n).stem for n in names]
    assert (
        fetch_dataset(store, manifest["id"], tmp_path / "cache") == local
    )  # cached: verified, not refetched


def test_fetch_detects_a_corrupted_object(clean_buckets, tmp_path):
    store = clean_buckets
    manifest = push_dataset(store, "liver", _liver_zip(tmp_path, 1))
    key = f"{manifest['id']}/{manifest['pairs'][0]['mask']['key']}"
    store.put_bytes(store.buckets.datasets, key, GOOD_MASK)  # tampered in the store
    with pytest.raises(DatasetIntegrityError, match="sha256"):
        fetch_dataset(store, manifest["id"], tmp_path / "cache")


def test_push_records_a_dataset_row(clean_buckets, tmp_path, db_session):
    manifest = push_dataset(clean_buckets, "liver", _liver_zip(tmp_path, 2))
    record_dataset(
        db_session, clean_buckets, manifest, actor="cli", notes="n"
    )  # what `medseg dataset push` does
    row = db_session.get(Dataset, manifest["id"])
    assert row.pair_count == 2 and row.dataset_hash == manifest["dataset_hash"] and row.status == "ready"
    assert row.manifest_key == f"{manifest['id']}/manifest.json" and row.notes == "n"


def test_cli_push_records_the_dataset_in_the_gateway_database(
    clean_buckets, s3_settings, tmp_path, monkeypatch, capsys
):
    """`medseg dataset push` (a gateway command: the gateway owns the database) stores, then records."""
    for name, value in (
        ("MEDSEG_S3_ENDPOINT", s3_settings.s3_endpoint),
        ("MEDSEG_S3_ACCESS_KEY", s3_settings.s3_access_key),
        ("MEDSEG_S3_SECRET_KEY", s3_settings.s3_secret_key),
        ("MEDSEG_STATE_DIR", str(tmp_path / "state")),
    ):
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    parser = argparse.ArgumentParser()
    datasets_command.add_commands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(
            ["dataset", "push", "--organ", "liver", "--notes", "n", str(_liver_zip(tmp_path, 2))]
        )
        assert args.func(args) == 0
        url = get_settings().sqlalchemy_url
    finally:
        get_settings.cache_clear()
    (manifest,) = list_datasets(clean_buckets)
    assert manifest["id"] in capsys.readouterr().out
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            row = session.get(Dataset, manifest["id"])
            assert row.pair_count == 2 and row.dataset_hash == manifest["dataset_hash"] and row.notes == "n"
            assert (
                session.scalar(select(AuditLog.action).where(AuditLog.target == manifest["id"]))
                == "dataset.push"
            )
    finally:
        engine.dispose()


def _symlink_zip(tmp_path: Path) -> Path:
    path = tmp_path / "symlink.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("000.png", GOOD_IMAGE)
        link = zipfile.ZipInfo("000_mask.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return path


def _bomb_zip(tmp_path: Path) -> Path:
    return _zip(tmp_path, {"000.png": GOOD_IMAGE, "000_mask.png": b"\0" * (8 * 1024 * 1024)}, "bomb.zip")


BAD_ZIPS = {
    "traversal": (
        lambda t: _zip(t, {"../000.png": GOOD_IMAGE, "../000_mask.png": GOOD_MASK}),
        r"\.\./000\.png: path traversal",
    ),
    "absolute": (lambda t: _zip(t, {"/tmp/000.png": GOOD_IMAGE}), r"/tmp/000\.png: absolute"),
    "zip bomb": (_bomb_zip, r"000_mask\.png: compression ratio"),
    "missing mask": (
        lambda t: _zip(t, {"000.png": GOOD_IMAGE, "000_mask.png": GOOD_MASK, "001.png": GOOD_IMAGE}),
        r"001\.png: missing mask",
    ),
    "non-binary mask": (
        lambda t: _zip(
            t, {"000.png": GOOD_IMAGE, "000_mask.png": _png(np.arange(1024, dtype=np.uint8).reshape(32, 32))}
        ),
        r"000_mask\.png: mask is not binary",
    ),
    "corrupt image": (
        lambda t: _zip(t, {"000.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, "000_mask.png": GOOD_MASK}),
        r"000\.png: not a decodable image",
    ),
    "size mismatch": (
        lambda t: _zip(t, {"000.png": GOOD_IMAGE, "000_mask.png": _png(np.zeros((16, 16), np.uint8))}),
        r"000_mask\.png: mask is 16×16 but its image 000\.png is 32×32",
    ),
    "no entries": (lambda t: _zip(t, {}), r"empty"),
    "symlink": (_symlink_zip, r"000_mask\.png: symbolic link"),
    "mask without image": (
        lambda t: _zip(t, {"images/a.png": GOOD_IMAGE, "masks/a.png": GOOD_MASK, "masks/b.png": GOOD_MASK}),
        r"masks/b\.png: mask without an image",
    ),
    "groups without a header": (
        lambda t: _zip(t, {**TWO_PAIRS, "groups.csv": b"000,p1\n001,p2\n"}),
        r"groups\.csv: the first line must be the header `name,group`",
    ),
    "group of an unknown pair": (
        lambda t: _zip(t, {**TWO_PAIRS, "groups.csv": b"name,group\n000,p1\n001,p2\n002,p2\n"}),
        r"groups\.csv line 4: '002' is not a pair of this dataset",
    ),
    "pair without a group": (
        lambda t: _zip(t, {**TWO_PAIRS, "groups.csv": b"name,group\n000,p1\n"}),
        r"groups\.csv: 1 pair\(s\) without a group, e\.g\. '001'",
    ),
    "pair listed twice": (
        lambda t: _zip(t, {**TWO_PAIRS, "groups.csv": b"name,group\n000,p1\n000,p2\n001,p2\n"}),
        r"groups\.csv line 3: '000' is listed twice",
    ),
    "empty group": (
        lambda t: _zip(t, {**TWO_PAIRS, "groups.csv": b"name,group\n000,\n001,p2\n"}),
        r"groups\.csv line 2: the group of '000' must be 1 to 64 printable characters",
    ),
    "groups not text": (
        lambda t: _zip(t, {**TWO_PAIRS, "groups.csv": b"\xff\xfe\x00n"}),
        r"groups\.csv: not UTF-8 text",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_bad_zip_is_refused_naming_the_entry_and_leaves_nothing(clean_buckets, tmp_path, case):
    make, message = BAD_ZIPS[case]
    with pytest.raises(DatasetError, match=message):
        push_dataset(clean_buckets, "liver", make(tmp_path))
    assert _objects(clean_buckets) == []


def test_good_synthetic_zip_is_accepted(clean_buckets, tmp_path):
    """The bad-zip cases differ from this one only by the defect, so each refusal is about that defect."""
    path = _zip(
        tmp_path,
        {
            "000.png": GOOD_IMAGE,
            "000_mask.png": GOOD_MASK,
            "001.png": GOOD_IMAGE,
            "001_mask.png": _png((np.eye(32) > 0).astype(np.uint8)),
        },
    )
    assert push_dataset(clean_buckets, "liver", path)["pair_count"] == 2


def test_groups_csv_names_each_pairs_patient_in_the_manifest_and_the_trainer_splits_by_them(
    clean_buckets, tmp_path
):
    """An upload may name each pair's patient (groups.csv beside the images); the manifest keeps it per pair
    and a fetched copy is grouped by it, whatever the organ's recipe would have found."""
    store = clean_buckets
    groups = b"name,group\r\n000,patient-A\r\n001,patient-B\r\n"  # as a spreadsheet saves it
    path = _zip(tmp_path, {"up/000.png": GOOD_IMAGE, "up/000_mask.png": GOOD_MASK, "up/001.png": GOOD_IMAGE,
                           "up/001_mask.png": GOOD_MASK, "up/groups.csv": groups}, "grouped.zip")  # fmt: skip
    assert validate_dataset(path) == ("paired", 2)
    manifest = push_dataset(store, "liver", path)
    assert [(p["name"], p["group"]) for p in manifest["pairs"]] == [
        ("000", "patient-A"),
        ("001", "patient-B"),
    ]
    assert not any(o.endswith("groups.csv") for o in _objects(store))  # the manifest holds the groups
    ungrouped = push_dataset(store, "liver", _zip(tmp_path, TWO_PAIRS, "plain.zip"))
    assert all("group" not in p for p in ungrouped["pairs"])

    from services.spec import load_organ_spec  # the trainer reads the fetched copy's groups
    from trainer.data import load_pairs, pair_groups

    local = fetch_dataset(store, manifest["id"], tmp_path / "cache")
    trained = pair_groups(local, load_pairs(local, load_organ_spec("liver")), "volumes")
    assert (trained.source, trained.labels) == ("dataset", ["patient-A", "patient-B"])


def test_symlink_in_a_directory_is_refused(clean_buckets, tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "000.png").write_bytes(GOOD_IMAGE)
    (root / "000_mask.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(DatasetError, match="000_mask.png: symbolic link"):
        push_dataset(clean_buckets, "liver", root)


def test_unknown_organ_is_refused(clean_buckets, tmp_path):
    with pytest.raises(DatasetError, match="known organs"):
        push_dataset(clean_buckets, "spleen", _liver_zip(tmp_path, 1))


def test_failure_during_upload_deletes_what_was_uploaded(clean_buckets, tmp_path):
    store = clean_buckets
    real_put, calls = store.put_bytes, []

    def flaky_put(bucket, key, data, content_type="application/octet-stream"):
        calls.append(key)
        if len(calls) == 5:
            raise ServiceUnavailable("object store unavailable: injected failure")
        return real_put(bucket, key, data, content_type)

    store.put_bytes = flaky_put
    try:
        with pytest.raises(ServiceUnavailable, match="injected"):
            push_dataset(store, "liver", _liver_zip(tmp_path, 4))
    finally:
        del store.put_bytes
    assert len(calls) >= 5
    assert _objects(store) == []
    assert list_datasets(store) == []


@pytest.mark.slow
def test_push_the_whole_liver_folder_as_a_zip(clean_buckets, tmp_path):
    src = _need(LIVER)
    pairs = len(list(src.glob("*_mask.png")))
    manifest = push_dataset(clean_buckets, "liver", _liver_zip(tmp_path, pairs, folder=""))
    assert pairs == 400 and manifest["pair_count"] == 400
    assert len(_objects(clean_buckets)) == 801  # 400 images + 400 masks + manifest
