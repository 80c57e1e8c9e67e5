"""trainer.rescore: a run trained under one inference mode, scored again under the organ's current one."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from services.preprocess import normalize
from services.spec import OrganSpec, load_organ_spec, load_spec
from tests.data import SHARED_DATA
from trainer.data import kfold_indices, load_pairs
from trainer.inference_modes import tile_probabilities
from trainer.loop import THRESHOLDS, dice_score, last_epoch_network
from trainer.rescore import main

CELLS = SHARED_DATA / "monuseg" / "train"


@pytest.fixture(scope="module")
def sliding_run(cells_smoke_run, tmp_path_factory):
    """A smoke cells run whose spec says it was validated through 256² sliding windows."""
    run = tmp_path_factory.mktemp("runs") / "cells-sliding"
    shutil.copytree(cells_smoke_run, run)
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    spec["inference"] = {"mode": "sliding", "size": [256, 256], "overlap": 0.25, "pad_multiple": 16}
    (run / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return run


def test_rescore_scores_the_weights_as_the_organ_now_serves_them(sliding_run, tmp_path):
    before = json.loads((sliding_run / "card.json").read_text())
    out = tmp_path / "cells-whole"
    assert main(["--organ", "cells", "--run", str(sliding_run), "--out", str(out), "--data", str(CELLS)]) == 0

    spec = load_spec(out / "spec.yaml")
    assert spec.inference == load_organ_spec("cells").inference  # the organ's current way: whole tiles
    assert spec.mean == load_spec(sliding_run / "spec.yaml").mean  # the run's own normalisation kept
    card = json.loads((out / "card.json").read_text())
    assert card["rescored"]["before"]["inference"]["mode"] == "sliding"
    assert card["rescored"]["before"]["metrics"] == before["metrics"]
    assert card["default_threshold"] == spec.default_threshold
    dice_at = card["metrics"]["val_dice_at_threshold"]
    assert spec.default_threshold == float(max(dice_at, key=dice_at.get))

    # the same figures, computed independently through the serving path on the held-out tile, for the best
    # weights and for the weights the run ended with (the last epoch: what `make cv` tables)
    assert_served_figures(card["metrics"]["val_dice_at_threshold"], card, spec, out / "model.ts", 1e-3)
    last = card["metrics"]["last_epoch"]
    assert last["epoch"] == 1
    assert_served_figures(last["val_dice_at_threshold"], card, spec, last_epoch_network(out, 3), 1e-3)
    # the source run is left as it was
    assert json.loads((sliding_run / "card.json").read_text()) == before


def test_a_shipped_archive_is_scored_in_its_runtime_and_packed_again(sliding_run, tmp_path):
    shipped, store = tmp_path / "shipped", tmp_path / "store"
    run = ["--organ", "cells", "--run", str(sliding_run), "--out", str(tmp_path / "run")]
    assert main([*run, "--data", str(CELLS), "--package", str(shipped), "--version", "1.0"]) == 0
    before = json.loads((shipped / "cells.json").read_text())
    assert before["version"] == "1.0" and "rescored" in before  # a rescored run, packaged
    old_spec = yaml.safe_load(zipfile.ZipFile(shipped / "cells.mar").read("spec.yaml"))
    assert old_spec["inference"]["mode"] == "whole"
    old_spec["inference"]["tta"] = "none"  # served another way than the organ's spec now says
    old_spec["default_threshold"] = 0.3  # a threshold chosen otherwise (grouped folds): kept
    with zipfile.ZipFile(shipped / "cells.mar") as mar:
        items = {name: mar.read(name) for name in mar.namelist()}
    items["spec.yaml"] = yaml.safe_dump(old_spec, sort_keys=False).encode()
    with zipfile.ZipFile(shipped / "cells.mar", "w") as mar:
        for name, body in items.items():
            mar.writestr(name, body)

    argv = ["--organ", "cells", "--run", str(shipped / "cells.mar"), "--data", str(CELLS)]
    assert main([*argv, "--package", str(store), "--version", "1.1"]) == 0
    card = json.loads((store / "cells.json").read_text())
    with zipfile.ZipFile(store / "cells.mar") as mar:
        packed = OrganSpec.from_dict(yaml.safe_load(mar.read("spec.yaml")))
        assert mar.read("model.pt") == items["model.pt"]  # the same network
    assert packed.inference == load_organ_spec("cells").inference and packed.inference.tta == "flips"
    assert packed.mean == OrganSpec.from_dict(old_spec).mean and packed.runtime == old_spec["runtime"]
    assert card["version"] == "1.1" and card["repackaged"]["from_version"] == "1.0"
    assert card["rescored"]["runtime"] == packed.runtime
    assert card["rescored"]["before"]["inference"]["tta"] == "none"
    assert card["rescored"]["before"]["metrics"] == before["metrics"]
    assert card["rescored"]["earlier"] == before["rescored"]  # the earlier rescoring is kept
    assert card["default_threshold"] == packed.default_threshold == old_spec["default_threshold"]

    # the figures against the run's TorchScript weights through the serving path, on the same held-out tile
    dice_at = card["metrics"]["val_dice_at_threshold"]
    assert_served_figures(dice_at, card, packed, tmp_path / "run" / "model.ts", tolerance=2e-3)


def assert_served_figures(dice_at: dict, card: dict, spec, model, tolerance: float) -> None:
    """`dice_at` (a card's Dice per threshold) against `model` (a network or the path of its TorchScript)
    run through the serving path on the card's held-out tile."""
    data = load_pairs(CELLS, spec, limit=3)
    _, val = kfold_indices(len(data), 3, 0, card["split"]["seed"])
    model = (torch.jit.load(str(model)) if isinstance(model, Path) else model).eval()
    with torch.inference_mode():
        probs = [
            tile_probabilities(model, normalize(data.images[i : i + 1].float() / 255.0, spec), spec)
            for i in val
        ]
    for t in THRESHOLDS:
        expected = np.mean([dice_score(p >= t, data.full_masks[i]) for p, i in zip(probs, val, strict=True)])
        assert dice_at[f"{t:.1f}"] == pytest.approx(expected, abs=tolerance)
