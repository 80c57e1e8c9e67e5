"""The shipped model cards describe the shipped archives and the data they were trained on."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from tests.data import SHARED_DATA
from trainer.train import dataset_hash

REPO = Path(__file__).resolve().parents[2]
CARDS = sorted((REPO / "model-store").glob("*.json"))


def test_there_are_shipped_models():
    assert {card.stem for card in CARDS} >= {"liver", "cells"}


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
def test_card_matches_its_archive_and_its_data(card_path):
    card = json.loads(card_path.read_text())
    mar = card_path.with_name(card["mar_file"])
    assert hashlib.sha256(mar.read_bytes()).hexdigest() == card["mar_sha256"]
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelVersion"] == card["version"]
    # the same hash a `medseg dataset push` of that folder gets (common.datasets manifests)
    source = REPO / card["dataset"]["source"]
    if not source.is_dir():
        pytest.skip(f"shared data not found under {SHARED_DATA}")
    assert dataset_hash(source) == card["dataset"]["hash"]
    folds = (card.get("cross_validation") or {}).get("folds", [])
    assert not folds or folds[0]["val_dice"] == pytest.approx(card["metrics"]["val_dice"])
