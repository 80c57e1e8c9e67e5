"""The dataset zip validator (common.datasets, behind POST /api/v1/datasets) under hostile archives
(hypothesis): random member names (traversal, absolute, Windows-style, duplicates, junk), corrupt
members and corrupted archives are refused with a DatasetError naming the file, never another exception.
The hand-written bad zips live in tests/datasets and tests/api/routes/test_datasets.py."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from common.datasets import DatasetError, DatasetLimits, validate_dataset

LIMITS = DatasetLimits(max_entries=40, max_file_bytes=256 * 1024, max_total_bytes=1024 * 1024)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = _png(np.random.default_rng(8).integers(0, 256, (24, 24), dtype=np.uint8))  # noise: deflates badly
MASK = _png(np.pad(np.full((8, 8), 255, np.uint8), 8))
CONTENTS = {
    "image": IMAGE,
    "mask": MASK,
    "corrupt": IMAGE[:40] + b"\0" * 60,
    "empty": b"",
    "text": b"not an image at all",
    "other size": _png(np.zeros((16, 16), np.uint8)),
    "grey mask": _png(np.arange(576, dtype=np.uint16).reshape(24, 24).astype(np.uint8)),
}
NAMES = st.one_of(
    st.sampled_from(
        [
            "000.png", "000_mask.png", "001.png", "001_mask.png", "images/a.png", "masks/a.png",
            "set/000.png", "set/000_mask.png", "../000.png", "a/../../000_mask.png", "/etc/000.png",
            "C:\\000.png",
            "images\\a.png", "./000.png", "images/", "__MACOSX/._000.png", ".DS_Store", "notes.txt", "",
            "images/sub/a.png", "0" * 300 + ".png", "dé/ü.png", "a:b.png",
        ]
    ),
    st.text(alphabet="abc./_\\-:", max_size=16).map(lambda s: s + ".png"),
)  # fmt: skip


@st.composite
def archives(draw) -> tuple[bytes, list[str]]:
    """A zip of 1-8 members (names may repeat), each stored or deflated, optionally damaged afterwards:
    a few bytes anywhere, or the compression method of the first member."""
    members = draw(st.lists(st.tuples(NAMES, st.sampled_from(sorted(CONTENTS))), min_size=1, max_size=8))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members:
            method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
            info = zipfile.ZipInfo(name or "x")
            info.compress_type = method
            with _no_warning():
                zf.writestr(info, CONTENTS[content])
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # an unknown compression method in one member's local and central header
        method = draw(st.sampled_from([1, 6, 9, 14, 93, 99]))
        for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            at = data.find(signature)
            if at >= 0:
                data[at + offset] = method
    return bytes(data), [name or "x" for name, _ in members]


class _no_warning:
    """zipfile warns on duplicate names: duplicates are exactly what we want to write."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def check_archive(tmp: Path, data: bytes, names: list[str]) -> None:
    path = tmp / "upload.zip"
    path.write_bytes(data)
    try:
        layout, pairs = validate_dataset(path, LIMITS)
    except DatasetError as exc:
        message = str(exc)
        try:  # the names as stored: damage to the archive may have changed the ones we wrote
            names = names + zipfile.ZipFile(path).namelist()
        except Exception:
            pass
        named = {path.name, *names, *(n.strip("/").split("/")[-1] for n in names)}
        assert any(n and n in message for n in named) or "empty" in message, message
        return
    assert layout in ("paired", "split") and pairs >= 1


@settings(
    max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
@given(archives())
def test_hostile_archives_are_refused_naming_the_file_or_accepted(tmp_path_factory, archive):
    check_archive(tmp_path_factory.mktemp("zip"), *archive)


# --- what the properties found: zipfile errors beyond BadZipFile escaped as 500s ---------------------------
def _two_members(method: int = zipfile.ZIP_DEFLATED) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("000.png", IMAGE)
        zf.writestr("000_mask.png", MASK)
    return bytearray(buf.getvalue())


def _damaged_deflate() -> bytes:
    data = _two_members()
    start = 30 + len("000.png")  # the first member's compressed data, after its local header
    data[start : start + 8] = b"\xff" * 8  # zlib.error: invalid stored block lengths / distance too far
    return bytes(data)


def _unknown_method() -> bytes:
    data = _two_members()
    data[8] = 99  # local header compression method (AES in WinZip's extension): NotImplementedError
    data[data.find(b"PK\x01\x02") + 10] = 99
    return bytes(data)


def _future_version() -> bytes:
    data = _two_members()
    data[4] = 64  # "version needed to extract" 6.4 in the local header: NotImplementedError at open()
    data[data.find(b"PK\x01\x02") + 6] = 64
    return bytes(data)


def _mangled_utf8_name() -> bytes:
    data = _two_members(zipfile.ZIP_STORED)
    for signature, flags, name in ((b"PK\x03\x04", 7, 30), (b"PK\x01\x02", 9, 46)):
        at = data.find(signature)
        data[at + flags] |= 0x08  # the UTF-8 flag is bit 11: bit 3 of the flags' high byte
        data[at + name] = 0xA9  # not valid UTF-8: UnicodeDecodeError reading the name
    return bytes(data)


@pytest.mark.parametrize(
    "make, names",
    [
        (_damaged_deflate, "000.png"),
        (_unknown_method, "000.png"),
        (_future_version, "upload.zip"),
        (_mangled_utf8_name, "upload.zip"),
    ],
    ids=["damaged deflate stream", "unknown compression method", "future zip version", "mangled utf-8 name"],
)
def test_damaged_archives_are_refused_naming_the_entry(tmp_path, make, names):
    path = tmp_path / "upload.zip"
    path.write_bytes(make())
    with pytest.raises(DatasetError, match=names.replace(".", r"\.")):
        validate_dataset(path, LIMITS)


def test_upload_of_a_damaged_archive_is_a_400_naming_the_entry(world):
    response = world.client("doctor").post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("set.zip", _damaged_deflate())}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "dataset_corrupt_entry"
    assert response.json()["error"]["params"] == {"name": "000.png"}
    assert response.json()["error"]["message"].startswith("000.png: corrupt zip entry")
