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
    cv = card.get("cross_validation") or {}
    if "grouping" not in cv:  # shuffled folds from before grouped CV: fold 0 is the shipped run
        folds = cv.get("folds", [])
        metrics = card["metrics"]
        if "inference" in cv and cv["inference"] != card["rescored"]["inference"]:
            metrics = card["rescored"]["before"]["metrics"]  # the folds were scored served another way
        assert not folds or folds[0]["val_dice"] == pytest.approx(metrics["val_dice"])


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
def test_grouped_cross_validation_holds_out_each_group_once_at_the_cards_threshold(card_path):
    """A card's grouped figures: every fold holds out its own group(s), and the mean it reports is the mean
    of the folds at the card's default threshold."""
    card = json.loads(card_path.read_text())
    cv = card.get("cross_validation") or {}
    if "grouping" not in cv:
        pytest.skip(f"{card_path.name}: no grouped cross-validation")
    held_out = [set(f["validation_groups"]) for f in cv["folds"]]
    assert all(held_out) and sum(map(len, held_out)) == len(set().union(*held_out))
    threshold = f"{card['default_threshold']:.1f}"
    assert cv["default_threshold"] == card["default_threshold"]
    at_default = [f["val_dice_at_threshold"][threshold] for f in cv["folds"]]
    assert cv["mean_val_dice"] == pytest.approx(sum(at_default) / len(at_default))
    assert "describes" in cv  # which model(s) the figures are of: the fold runs, not always the shipped one
