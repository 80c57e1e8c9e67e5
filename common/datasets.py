"""The dataset format: labelled datasets in the object store, shared by the trainer (fetches what it trains
on) and the gateway (uploads through the API and `medseg dataset push`, and records them in its database:
gateway/datasets.py; nothing here touches a database).

    push_dataset(store, organ, path, name=None) -> manifest dict (the caller records it)
    fetch_dataset(store, dataset_id, cache_dir) -> local dir with images/ and masks/ (sha256-verified)
    list_datasets(store) -> manifest summaries (without the per-file list)

Input is a directory or a zip in one of two layouts (optionally inside one top-level folder):
  "paired": `NNN.png` + `NNN_mask.png` side by side (the liver set);
  "split":  `images/X.png` + `masks/X.png` (the MoNuSeg set).
A dataset may name each pair's group (its patient or volume, so the trainer never validates on a patient
it trained on): a `groups.csv` beside the images (`name,group` header, then one row per pair, every pair
exactly once; `name` is the image's file name without its suffix). The groups go into the manifest (each
pair's `group`); without the file the pairs have none and the trainer groups them by the organ's recipe.
Everything is validated before the first byte is uploaded; the first problem raises `DatasetError`
naming the file and the reason. In the bucket a dataset is `<id>/images/<file>`, `<id>/masks/<file>` (a
mask keeps its image's file name, so `trainer.data.find_pairs` pairs them) and `<id>/manifest.json`,
written last: a dataset without a manifest is incomplete and never listed. Any failure while uploading
deletes what was uploaded.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import stat
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np

from common.errors import InvalidInput, MedSegError, NotFound
from common.objectstore import ObjectStore, sha256_file
from services.imaging import decode_image
from services.spec import organ_dirs

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "medseg-dataset/1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"}
MASK_SUFFIX = "_mask"
GROUPS_FILE = "groups.csv"  # optional: the group (patient, volume) of every pair
MAX_GROUP_CHARS = 64
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# Files people's archivers add; skipped silently. Anything else that is not an image is refused.
JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
JUNK_DIRS = {"__MACOSX"}
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".dcm": "application/dicom",
}


class DatasetError(InvalidInput):
    """The dataset is refused; the message names the file and the reason."""

    code = "invalid_dataset"


class DatasetIntegrityError(MedSegError):
    """A stored dataset does not match its manifest (corrupted or tampered with in the object store)."""

    code, http_status, grpc_code = "dataset_corrupt", 500, "DATA_LOSS"


@dataclass(frozen=True)
class DatasetLimits:
    """Bounds on what an upload may make us read; zips are checked from their headers before reading."""

    max_entries: int = 20_000
    max_file_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 4 * 1024 * 1024 * 1024
    max_compression_ratio: float = 100.0  # PNG/JPEG barely compress; a bomb compresses 1000:1
    min_ratio_check_bytes: int = 1024 * 1024  # tiny files may compress well legitimately


# --- decoding (services.imaging: one decoder for the whole platform) ---------------------------------
def _decode(data: bytes) -> np.ndarray:
    """Decoded pixels as float in [0, 1] (H×W or H×W×C); ValueError (ImageDecodeError) if not an image."""
    return decode_image(data).array


# --- reading a directory or a zip -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    name: str  # POSIX path relative to the dataset root
    size: int
    read: Callable[[], bytes]


def _check_name(name: str) -> str:
    """Refuse absolute paths, drive letters, backslashes and `..`; return the normalised POSIX name."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(
            f"{name}: absolute or Windows-style path refused (entries must be relative)",
            code="dataset_path_refused",
            params={"name": name},
        )
    parts = PurePosixPath(name).parts
    if any(part == ".." for part in parts):
        raise DatasetError(
            f"{name}: path traversal ('..') refused", code="dataset_path_refused", params={"name": name}
        )
    return "/".join(p for p in parts if p != ".")


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    return any(p in JUNK_DIRS for p in parts) or parts[-1] in JUNK_NAMES or parts[-1].startswith("._")


def _zip_entries(path: Path, limits: DatasetLimits) -> tuple[list[_Entry], zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(path)
    except Exception as exc:  # a damaged central directory raises more than BadZipFile (see _zip_reader)
        raise DatasetError(
            f"{path.name}: not a readable zip file ({type(exc).__name__}: {exc})",
            code="dataset_not_zip",
            params={"name": path.name},
        ) from exc
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise DatasetError(
            f"{path.name}: {len(infos)} entries, more than the limit of {limits.max_entries}",
            code="dataset_too_many_files",
            params={"name": path.name, "limit": limits.max_entries},
        )
    entries, total, seen, lock = [], 0, set(), threading.Lock()
    for info in infos:
        name = _check_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DatasetError(
                f"{info.filename}: symbolic link refused",
                code="dataset_symlink",
                params={"name": info.filename},
            )
        if info.is_dir() or _is_junk(name):
            continue
        if info.flag_bits & 0x1:
            raise DatasetError(
                f"{info.filename}: encrypted entries are not supported",
                code="dataset_encrypted",
                params={"name": info.filename},
            )
        if info.compress_type not in ZIP_METHODS:
            raise DatasetError(
                f"{info.filename}: compression method {info.compress_type} is not supported "
                "(use deflate or no compression)",
                code="dataset_compression",
                params={"name": info.filename},
            )
        if name in seen:
            raise DatasetError(
                f"{info.filename}: duplicate entry", code="dataset_duplicate", params={"name": info.filename}
            )
        seen.add(name)
        if info.file_size > limits.max_file_bytes:
            raise DatasetError(
                f"{info.filename}: {info.file_size} bytes uncompressed, more than the "
                f"per-file limit of {limits.max_file_bytes}",
                code="dataset_file_too_large",
                params={"name": info.filename, "limit": limits.max_file_bytes},
            )
        if (
            info.file_size >= limits.min_ratio_check_bytes
            and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)
        ):
            raise DatasetError(
                f"{info.filename}: compression ratio {info.file_size / max(info.compress_size, 1):.0f}"
                f":1 looks like a zip bomb (limit {limits.max_compression_ratio:.0f}:1)",
                code="dataset_zip_bomb",
                params={"name": info.filename},
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise DatasetError(
                f"{info.filename}: archive expands to more than {limits.max_total_bytes} bytes",
                code="dataset_too_large",
                params={"name": info.filename, "limit": limits.max_total_bytes},
            )
        entries.append(_Entry(name, info.file_size, _zip_reader(archive, info, lock)))
    return entries, archive


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, lock: threading.Lock) -> Callable[[], bytes]:
    def read() -> bytes:
        # Never trust the header's size: stop as soon as the stream yields more than it declared.
        chunks, got = [], 0
        try:
            with lock, archive.open(info) as fh:  # one reader at a time on the shared file handle
                while chunk := fh.read(1024 * 1024):
                    got += len(chunk)
                    if got > info.file_size:
                        raise DatasetError(
                            f"{info.filename}: expands beyond its declared size (zip bomb?)",
                            code="dataset_zip_bomb",
                            params={"name": info.filename},
                        )
                    chunks.append(chunk)
        except DatasetError:
            raise
        except Exception as exc:  # zipfile on damaged input raises anything (zlib.error, NotImplementedError,
            # UnicodeDecodeError for a mangled name...): every one of them is this entry's fault
            raise DatasetError(
                f"{info.filename}: corrupt zip entry ({type(exc).__name__}: {exc})",
                code="dataset_corrupt_entry",
                params={"name": info.filename},
            ) from exc
        return b"".join(chunks)

    return read


def _dir_entries(root: Path, limits: DatasetLimits) -> list[_Entry]:
    entries, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in list(dirnames):
            if (Path(dirpath) / d).is_symlink():
                link = (Path(dirpath) / d).relative_to(root).as_posix()
                raise DatasetError(
                    f"{link}: symbolic link refused", code="dataset_symlink", params={"name": link}
                )
        for fname in filenames:
            full = Path(dirpath) / fname
            name = full.relative_to(root).as_posix()
            if _is_junk(name):
                continue
            if full.is_symlink():
                raise DatasetError(
                    f"{name}: symbolic link refused", code="dataset_symlink", params={"name": name}
                )
            size = full.stat().st_size
            if size > limits.max_file_bytes:
                raise DatasetError(
                    f"{name}: {size} bytes, more than the per-file limit of {limits.max_file_bytes}",
                    code="dataset_file_too_large",
                    params={"name": name, "limit": limits.max_file_bytes},
                )
            total += size
            if total > limits.max_total_bytes:
                raise DatasetError(
                    f"{name}: dataset is larger than {limits.max_total_bytes} bytes",
                    code="dataset_too_large",
                    params={"name": name, "limit": limits.max_total_bytes},
                )
            entries.append(_Entry(name, size, full.read_bytes))
            if len(entries) > limits.max_entries:
                raise DatasetError(
                    f"{root.name}: more than {limits.max_entries} files",
                    code="dataset_too_many_files",
                    params={"name": root.name, "limit": limits.max_entries},
                )
    return entries


# --- layout and pairing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pair:
    name: str  # the pair's stem, e.g. "000"
    image: _Entry
    mask: _Entry


def _strip_common_root(entries: list[_Entry]) -> list[_Entry]:
    """`train/000.png` → `000.png` when everything sits in one top-level folder (a zipped directory)."""
    while entries and all("/" in e.name for e in entries):
        tops = {e.name.split("/", 1)[0] for e in entries}
        if len(tops) != 1 or tops == {"images"} or tops == {"masks"}:
            break
        entries = [_Entry(e.name.split("/", 1)[1], e.size, e.read) for e in entries]
    return entries


def _pair_entries(entries: list[_Entry]) -> tuple[str, list[_Pair], _Entry | None]:
    """(layout, pairs, the groups.csv entry if there is one)."""
    entries = _strip_common_root(entries)
    groups = next((e for e in entries if e.name == GROUPS_FILE), None)
    entries = [e for e in entries if e is not groups]
    if not entries:
        raise DatasetError("the dataset is empty: no image/mask files found", code="dataset_empty")
    for e in entries:
        if PurePosixPath(e.name).suffix.lower() not in IMAGE_SUFFIXES:
            accepted = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetError(
                f"{e.name}: unexpected file (accepted: {accepted})",
                code="dataset_unexpected_file",
                params={"name": e.name, "accepted": accepted},
            )
    split = any(e.name.startswith(("images/", "masks/")) for e in entries)
    images: dict[str, _Entry] = {}
    masks: dict[str, _Entry] = {}
    for e in entries:
        path = PurePosixPath(e.name)
        if split:
            if len(path.parts) != 2 or path.parts[0] not in ("images", "masks"):
                raise DatasetError(
                    f"{e.name}: in the images/ + masks/ layout every file must sit directly "
                    "in images/ or masks/",
                    code="dataset_layout",
                    params={"name": e.name},
                )
            target = images if path.parts[0] == "images" else masks
            stem = path.stem
        else:
            if len(path.parts) != 1:
                raise DatasetError(
                    f"{e.name}: unexpected folder; use NNN.png + NNN_mask.png side by side, "
                    "or images/X.png + masks/X.png",
                    code="dataset_layout",
                    params={"name": e.name},
                )
            is_mask = path.stem.endswith(MASK_SUFFIX)
            target = masks if is_mask else images
            stem = path.stem[: -len(MASK_SUFFIX)] if is_mask else path.stem
        if stem in target:
            raise DatasetError(
                f"{e.name}: two files for '{stem}' ({target[stem].name} and {e.name})",
                code="dataset_two_files",
                params={"name": e.name, "other": target[stem].name},
            )
        target[stem] = e
    for stem, image in sorted(images.items()):
        if stem not in masks:
            expected = f"masks/{stem}.png" if split else f"{stem}{MASK_SUFFIX}.png"
            raise DatasetError(
                f"{image.name}: missing mask (expected {expected})",
                code="dataset_missing_mask",
                params={"name": image.name, "expected": expected},
            )
    for stem, mask in sorted(masks.items()):
        if stem not in images:
            raise DatasetError(
                f"{mask.name}: mask without an image", code="dataset_mask_alone", params={"name": mask.name}
            )
    return ("split" if split else "paired"), [_Pair(s, images[s], masks[s]) for s in sorted(images)], groups


def parse_groups(text: str, names: list[str], where: str = GROUPS_FILE) -> dict[str, str]:
    """{pair name: group} from the text of a groups.csv naming every one of `names` exactly once; a
    DatasetError naming `where`, the line and the fix otherwise."""
    rows = [
        (number, row)
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1)
        if any(cell.strip() for cell in row)
    ]
    if not rows or [c.strip().lower() for c in rows[0][1]] != ["name", "group"]:
        raise DatasetError(f"{where}: the first line must be the header `name,group`", code="dataset_groups")
    known, groups = set(names), {}
    for number, row in rows[1:]:
        if len(row) != 2:
            raise DatasetError(
                f"{where} line {number}: expected 2 columns (name,group), got {len(row)}",
                code="dataset_groups",
            )
        name, group = (cell.strip() for cell in row)
        if name not in known:
            raise DatasetError(
                f"{where} line {number}: {name!r} is not a pair of this dataset", code="dataset_groups"
            )
        if name in groups:
            raise DatasetError(f"{where} line {number}: {name!r} is listed twice", code="dataset_groups")
        if not group or len(group) > MAX_GROUP_CHARS or not group.isprintable():
            raise DatasetError(
                f"{where} line {number}: the group of {name!r} must be 1 to {MAX_GROUP_CHARS} printable "
                "characters (a patient or volume id)",
                code="dataset_groups",
            )
        groups[name] = group
    missing = [n for n in names if n not in groups]
    if missing:
        raise DatasetError(
            f"{where}: {len(missing)} pair(s) without a group, e.g. {missing[0]!r} (name every pair or none)",
            code="dataset_groups",
        )
    return groups


def _read_groups(entry: _Entry | None, pairs: list[_Pair]) -> dict[str, str] | None:
    if entry is None:
        return None
    try:
        text = entry.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{entry.name}: not UTF-8 text ({exc})", code="dataset_groups") from exc
    return parse_groups(text, [p.name for p in pairs], entry.name)


# --- validation --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CheckedFile:
    entry: _Entry
    key: str  # relative to the dataset prefix
    size: int
    sha256: str
    width: int
    height: int


def _binary_mask_problem(mask: np.ndarray) -> str | None:
    """None if the mask is binary ({0, max} or {0, 1} as stored), else what is wrong."""
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            return "mask has differing colour channels (expected a single-channel 0/255 or 0/1 image)"
        mask = mask[..., 0]
    values = np.unique(mask)
    nonzero = values[values != 0]
    if len(nonzero) == 0:
        return None
    # decode_image divides by the stored type's maximum: 255 → 1.0; a stored 1 → 1/255 or 1/65535
    if len(nonzero) == 1 and any(np.isclose(nonzero[0], v) for v in (1.0, 1 / 255, 1 / 65535)):
        return None
    shown = ", ".join(str(int(round(v * 255))) for v in values[:6]) + (", …" if len(values) > 6 else "")
    return f"mask is not binary: values {shown} (expected {{0, 255}} or {{0, 1}})"


def _check_pair(pair: _Pair) -> tuple[_CheckedFile, _CheckedFile]:
    image_bytes = pair.image.read()
    try:
        image = _decode(image_bytes)
    except ValueError as exc:
        raise DatasetError(
            f"{pair.image.name}: not a decodable image ({exc})",
            code="dataset_undecodable",
            params={"name": pair.image.name},
        ) from exc
    mask_bytes = pair.mask.read()
    try:
        mask = _decode(mask_bytes)
    except ValueError as exc:
        raise DatasetError(
            f"{pair.mask.name}: not a decodable mask ({exc})",
            code="dataset_undecodable",
            params={"name": pair.mask.name},
        ) from exc
    if mask.shape[:2] != image.shape[:2]:
        raise DatasetError(
            f"{pair.mask.name}: mask is {mask.shape[1]}×{mask.shape[0]} but its image "
            f"{pair.image.name} is {image.shape[1]}×{image.shape[0]}",
            code="dataset_size_mismatch",
            params={"name": pair.mask.name, "image": pair.image.name},
        )
    problem = _binary_mask_problem(mask)
    if problem:
        raise DatasetError(
            f"{pair.mask.name}: {problem}", code="dataset_mask_values", params={"name": pair.mask.name}
        )
    h, w = image.shape[:2]
    image_file = PurePosixPath(pair.image.name).name
    return (
        _CheckedFile(
            pair.image,
            f"images/{image_file}",
            len(image_bytes),
            hashlib.sha256(image_bytes).hexdigest(),
            w,
            h,
        ),
        # the mask takes its image's file name: find_pairs() pairs images/X with masks/X
        _CheckedFile(
            pair.mask, f"masks/{image_file}", len(mask_bytes), hashlib.sha256(mask_bytes).hexdigest(), w, h
        ),
    )


def dataset_hash(file_hashes: list[str]) -> str:
    """sha256 over the sorted per-file sha256 hex digests (one per line): same files → same hash."""
    return hashlib.sha256("\n".join(sorted(file_hashes)).encode()).hexdigest()


def _file_record(f: _CheckedFile) -> dict:
    return {
        "key": f.key,
        "source": f.entry.name,
        "size": f.size,
        "sha256": f.sha256,
        "width": f.width,
        "height": f.height,
    }


def _pair_record(image: _CheckedFile, mask: _CheckedFile, groups: dict[str, str]) -> dict:
    """A manifest's pair: its name, both files and, when the dataset names groups, its group."""
    name = PurePosixPath(image.key).stem
    record = {"name": name, "image": _file_record(image), "mask": _file_record(mask)}
    if name in groups:
        record["group"] = groups[name]
    return record


def manifest_groups(manifest: dict) -> dict[str, str] | None:
    """{pair name: group} of a manifest whose pairs name their groups, else None."""
    groups = {p["name"]: p["group"] for p in manifest.get("pairs", []) if p.get("group")}
    return groups or None


# --- push / fetch / list -----------------------------------------------------------------------------------
def _known_organs() -> list[str]:
    return list(organ_dirs())


@contextlib.contextmanager
def _open_source(path: Path, limits: DatasetLimits) -> Iterator[list[_Entry]]:
    """The files of a directory or zip (the zip stays open while the caller reads entries)."""
    if path.is_dir():
        yield _dir_entries(path, limits)
    elif path.is_file() and zipfile.is_zipfile(path):
        entries, archive = _zip_entries(path, limits)
        try:
            yield entries
        finally:
            archive.close()
    elif path.exists():
        raise DatasetError(
            f"{path.name}: expected a directory or a .zip file",
            code="dataset_not_zip",
            params={"name": path.name},
        )
    else:
        raise DatasetError(
            f"{path}: no such file or directory", code="dataset_not_zip", params={"name": path.name}
        )


def validate_dataset(path: str | Path, limits: DatasetLimits | None = None) -> tuple[str, int]:
    """Read and check every pair without uploading; returns (layout, number of pairs)."""
    with _open_source(Path(path), limits or DatasetLimits()) as entries:
        layout, pairs, groups = _pair_entries(entries)
        _read_groups(groups, pairs)
        for pair in pairs:
            _check_pair(pair)
    return layout, len(pairs)


def push_dataset(
    store: ObjectStore,
    organ: str,
    path: str | Path,
    name: str | None = None,
    *,
    limits: DatasetLimits | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Validate `path` (directory or zip), upload it under a new dataset id, write the manifest last.

    Returns the manifest; recording it (the gateway's `Dataset` row) is the caller's business.
    Raises DatasetError (bad input, nothing uploaded) or ServiceUnavailable (store down; the partial upload
    is deleted when the store still answers).
    """
    organs = _known_organs()
    if organ not in organs:
        raise DatasetError(
            f"unknown organ {organ!r}; known organs: {', '.join(organs)}",
            code="unknown_organ",
            params={"organ": organ},
        )
    path = Path(path)
    with _open_source(path, limits or DatasetLimits()) as entries:
        layout, pairs, groups_entry = _pair_entries(entries)
        groups = _read_groups(groups_entry, pairs) or {}
        checked = [_check_pair(p) for p in pairs]
        return _upload(store, organ, path, name, layout, checked, groups, progress)


def _upload(store, organ, path, name, layout, checked, groups, progress) -> dict:
    files = [f for pair in checked for f in pair]
    dataset_id = f"{organ}-{uuid.uuid4().hex[:12]}"
    bucket = store.buckets.datasets
    manifest = {
        "format": MANIFEST_FORMAT,
        "id": dataset_id,
        "organ": organ,
        "name": name or path.stem,
        "created_at": datetime.now(UTC).isoformat(),
        "source": path.name,
        "layout": layout,
        "pair_count": len(checked),
        "size_bytes": sum(f.size for f in files),
        "dataset_hash": dataset_hash([f.sha256 for f in files]),
        "pairs": [_pair_record(img, msk, groups) for img, msk in checked],
    }
    logger.info("uploading dataset %s: %d pairs, %d bytes", dataset_id, len(checked), manifest["size_bytes"])
    try:
        _upload_files(store, bucket, dataset_id, files, progress)
        store.put_bytes(
            bucket,
            f"{dataset_id}/{MANIFEST}",
            json.dumps(manifest, indent=1).encode(),
            content_type="application/json",
        )
    except BaseException:
        _cleanup(store, bucket, dataset_id)
        raise
    logger.info("dataset %s ready (hash %s)", dataset_id, manifest["dataset_hash"][:12])
    return manifest


def _upload_files(
    store: ObjectStore,
    bucket: str,
    dataset_id: str,
    files: list[_CheckedFile],
    progress: Callable[[int, int], None] | None,
) -> None:
    def upload(f: _CheckedFile) -> None:
        data = f.entry.read()
        if hashlib.sha256(data).hexdigest() != f.sha256:  # changed between validation and upload
            raise DatasetError(
                f"{f.entry.name}: file changed while it was being uploaded",
                code="dataset_changed",
                params={"name": f.entry.name},
            )
        suffix = PurePosixPath(f.entry.name).suffix.lower()
        store.put_bytes(
            bucket,
            f"{dataset_id}/{f.key}",
            data,
            content_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
        )

    pool = ThreadPoolExecutor(max_workers=4)  # S3 puts are latency-bound, not CPU-bound
    try:
        for done, _ in enumerate(pool.map(upload, files), start=1):
            if progress:
                progress(done, len(files))
    finally:
        # on failure, drop the queued uploads (the store is probably down) and wait for running ones,
        # so the cleanup that follows sees every object that made it
        pool.shutdown(wait=True, cancel_futures=True)


def _cleanup(store: ObjectStore, bucket: str, dataset_id: str) -> None:
    try:
        deleted = store.delete_prefix(bucket, f"{dataset_id}/")
        logger.warning("upload of dataset %s failed; deleted %d uploaded object(s)", dataset_id, deleted)
    except MedSegError as exc:
        logger.error(
            "upload of dataset %s failed and its partial upload could not be deleted (%s); "
            "it has no manifest, so it is never listed or fetched",
            dataset_id,
            exc.message,
        )


def get_manifest(store: ObjectStore, dataset_id: str) -> dict:
    """The manifest of a complete dataset; NotFound when there is none (unknown or incomplete upload)."""
    if not dataset_id or "/" in dataset_id or ".." in dataset_id:
        raise InvalidInput(
            f"invalid dataset id {dataset_id!r}", code="unknown_dataset", params={"id": dataset_id}
        )
    try:
        return json.loads(store.get_bytes(store.buckets.datasets, f"{dataset_id}/{MANIFEST}"))
    except NotFound:
        raise NotFound(
            f"no dataset {dataset_id!r} in bucket {store.buckets.datasets}",
            code="unknown_dataset",
            params={"id": dataset_id},
        ) from None


def fetch_dataset(store: ObjectStore, dataset_id: str, cache_dir: str | Path) -> Path:
    """Download a dataset to `cache_dir/<id>/` (images/, masks/, manifest.json), verifying every sha256.

    Files already in the cache with the right hash are not downloaded again. Returns the local directory.
    """
    manifest = get_manifest(store, dataset_id)
    root = Path(cache_dir) / dataset_id
    bucket = store.buckets.datasets
    records = [pair[kind] for pair in manifest["pairs"] for kind in ("image", "mask")]
    local_manifest = root / MANIFEST
    local_manifest.unlink(missing_ok=True)  # written last again: its presence means "complete"
    for rec in _progress_iter(records, f"fetch {dataset_id}"):
        target = root / rec["key"]
        if target.exists() and sha256_file(target) == rec["sha256"]:
            continue
        store.download(bucket, f"{dataset_id}/{rec['key']}", target)
        if sha256_file(target) != rec["sha256"]:
            target.unlink()
            raise DatasetIntegrityError(
                f"dataset {dataset_id}: {rec['key']} does not match the sha256 in its "
                "manifest (corrupted in the object store)"
            )
    local_manifest.write_text(json.dumps(manifest, indent=1))
    return root


def _progress_iter(items: list, desc: str) -> Iterator:
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit="file", disable=None, leave=False))


def list_datasets(store: ObjectStore, organ: str | None = None) -> list[dict]:
    """Summaries (manifest without `pairs`) of complete datasets, oldest first."""
    bucket = store.buckets.datasets
    summaries = []
    for prefix in store.list(bucket, recursive=False):
        dataset_id = prefix.key.rstrip("/")
        if organ and not dataset_id.startswith(f"{organ}-"):
            continue
        try:
            manifest = get_manifest(store, dataset_id)
        except NotFound:
            continue  # incomplete upload
        summaries.append({k: v for k, v in manifest.items() if k != "pairs"})
    return sorted(summaries, key=lambda m: m["created_at"])
