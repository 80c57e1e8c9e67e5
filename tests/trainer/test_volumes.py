"""The trainer's 3-D path (trainer.volumes) on real hippocampus MRI volumes (../shared/data/hippocampus3d,
read from there): the volumes as the organ server sees them, the augmentation, the serving threshold rule,
Dice per label, a smoke run of a few volumes that trains and packages into a .mar, and cross-validation by
volume."""

from __future__ import annotations

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from services.preprocess import normalize_mr
from services.spec import load_organ_spec, load_recipe
from services.volumes import Volume
from tests.data import SHARED_DATA
from trainer.augment import AugmentConfig
from trainer.loop import THRESHOLDS
from trainer.train import default_config, run_training
from trainer.volumes import (
    VolumeTrainer,
    augment_volumes,
    canonical_pair,
    find_volumes,
    label_map_at,
    load_volumes,
    per_label_dice,
)

HIPPO = SHARED_DATA / "hippocampus3d"
pytestmark = pytest.mark.skipif(not HIPPO.is_dir(), reason=f"{HIPPO} is not here (the shared data set)")


@pytest.fixture(scope="module")
def spec():
    return load_organ_spec("hippocampus")


def test_volumes_are_read_as_the_organ_server_sees_them(spec):
    name, image_path, label_path = find_volumes(HIPPO)[0]
    image = nib.load(image_path)
    served = Volume(np.asarray(image.dataobj, dtype=np.float32), image.affine, source="nifti").canonical()
    canonical, labels = canonical_pair(image_path, label_path)
    np.testing.assert_array_equal(canonical, served)  # the orientation the handler gets (z, y, x)
    assert labels.shape == canonical.shape and set(np.unique(labels)) == {0, 1, 2}

    volumes = load_volumes(HIPPO, spec, limit=2)
    z, y, x = volumes.shapes[0]
    assert volumes.images.shape == (2, 1, *spec.inference.size)
    # normalised by the one function the handler calls, then padded by repeating the far edge
    np.testing.assert_allclose(
        volumes.images[0, 0, :z, :y, :x].numpy(), normalize_mr(served, spec.per_volume)
    )
    assert torch.equal(volumes.images[0, 0, z:, :y, :x], volumes.images[0, 0, z - 1 : z, :y, :x].expand_as(
        volumes.images[0, 0, z:, :y, :x]))  # fmt: skip
    assert int(volumes.labels[0, z:].sum()) == 0 and torch.equal(volumes.labels[0, :z, :y, :x],
                                                                torch.from_numpy(labels))  # fmt: skip


def test_augmentation_keeps_labels_whole_and_moves_image_and_labels_together(spec):
    volumes = load_volumes(HIPPO, spec, limit=2)
    gen = torch.Generator().manual_seed(0)
    still = AugmentConfig(rotate_deg=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=(1.0, 1.0), noise_std=0)
    images, labels = augment_volumes(volumes.images, volumes.labels, still, gen)
    assert torch.allclose(images, volumes.images, atol=1e-5) and torch.equal(labels, volumes.labels)

    images, labels = augment_volumes(volumes.images, volumes.labels, AugmentConfig(rotate_deg=15.0), gen)
    assert images.shape == volumes.images.shape and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2}  # nearest: no label value made up between 1 and 2
    assert not torch.equal(labels, volumes.labels)
    # image and labels moved alike: the labelled voxels are still the hippocampus's intensities
    for i in range(2):
        inside, before = images[i, 0][labels[i] > 0], volumes.images[i, 0][volumes.labels[i] > 0]
        assert abs(float(inside.mean()) - float(before.mean())) < 0.35 * float(before.std())


def test_the_threshold_rule_is_the_servers_and_dice_is_per_label():
    probs = torch.tensor([[0.9, 0.5, 0.2, 0.1], [0.05, 0.2, 0.5, 0.3], [0.05, 0.3, 0.3, 0.6]])[:, None, None]
    # labelled where 1 - p(background) >= t, with the label of largest p (a tie goes to the first label)
    assert label_map_at(probs, 0.5).flatten().tolist() == [0, 2, 1, 2]
    assert label_map_at(probs, 0.8).flatten().tolist() == [0, 0, 1, 2]
    truth = torch.tensor([[[0, 2, 1, 1]]])
    pred = label_map_at(probs, 0.5)
    assert per_label_dice(pred, truth, 2) == pytest.approx([2 / 3, 2 / 3])
    assert per_label_dice(torch.zeros_like(truth), torch.zeros_like(truth), 2) == [1.0, 1.0]


def test_smoke_run_trains_scores_each_label_and_packages_a_mar(spec, tmp_path):
    from trainer.package import build_mar

    config = default_config(
        "hippocampus", arch="unet_3d", widths=(4, 8, 16, 32), epochs=2, batch_size=2, samples_per_epoch=4,
        val_every=1, threads=1,
    )  # fmt: skip
    run = tmp_path / "run"
    result = run_training("hippocampus", HIPPO, run, config, fold=0, folds=4, limit=4)
    card = json.loads((run / "card.json").read_text())
    assert card["dataset"]["volumes"] == 4 and card["dataset"]["validation"] == 1
    assert card["training"]["config"]["loss"] == "dicefocal" and card["training"]["epochs"] == 2
    assert card["labels"] == ["anterior", "posterior"]
    per_label = card["metrics"]["last_epoch"]["val_dice_per_label_at_threshold"]
    assert set(per_label) == {f"{t:.1f}" for t in THRESHOLDS}
    assert set(per_label["0.5"]) == {"anterior", "posterior"}
    mean_at = card["metrics"]["last_epoch"]["val_dice_at_threshold"]
    assert mean_at["0.5"] == pytest.approx(np.mean(list(per_label["0.5"].values())))
    held_out = card["split"]["validation_groups"]
    assert len(held_out) == 1 and set(held_out) <= {n for n, *_ in find_volumes(HIPPO)[:4]}

    scripted = torch.jit.load(str(run / "model.ts"))
    x = torch.randn(1, 1, *spec.inference.size)
    assert scripted(x).shape == (1, 3, *spec.inference.size)  # background + two labels

    mar = build_mar(run / "model.ts", "hippocampus", result["spec"], tmp_path / "store", "hippocampus", "1",
                    card=card)  # fmt: skip
    names = set(zipfile.ZipFile(mar).namelist())
    assert {"model.pt", "model.onnx", "spec.yaml", "handler.py", "services/preprocess.py"} <= names
    packed = yaml.safe_load(zipfile.ZipFile(mar).read("spec.yaml"))
    assert packed["dimensions"] == 3 and packed["labels"] == ["anterior", "posterior"]
    assert packed["normalize"]["per_volume"] == spec.per_volume
    written = json.loads((tmp_path / "store" / "hippocampus.json").read_text())
    assert written["mar_file"] == "hippocampus.mar" and written["labels"] == ["anterior", "posterior"]


def test_the_recipe_drives_the_3d_path():
    recipe = load_recipe("hippocampus")
    assert recipe.data.layout == "nifti" and recipe.data.train == HIPPO.resolve()
    assert recipe.arch in ("unet_3d", "eru_net_3d")
    size = load_organ_spec("hippocampus").inference.size
    assert recipe.crop is None or all(c % 8 == 0 and c <= s for c, s in zip(recipe.crop, size, strict=True))
    assert not recipe.augment.get(
        "flips", False
    )  # one hippocampus per volume: a mirror image is the other side


def test_cross_validation_folds_are_by_volume():
    from trainer.cv import organ_groups
    from trainer.data import split_indices

    groups = organ_groups("hippocampus", HIPPO)
    assert len(groups.labels) == 208 == len(set(groups.labels))
    held_out = [set(split_indices(groups, 5, f, 0)[1].tolist()) for f in range(5)]
    assert sorted(i for h in held_out for i in h) == list(range(208))  # each volume held out exactly once


def test_the_cv_summary_gives_dice_per_label_and_their_mean():
    from trainer.cv import summarize, table

    def row(fold, anterior, posterior):
        per = {f"{t:.1f}": {"anterior": anterior, "posterior": posterior} for t in THRESHOLDS}
        mean_at = {t: (d["anterior"] + d["posterior"]) / 2 for t, d in per.items()}
        return {"fold": fold, "validation_groups": {"hippocampus_003": 1}, "validation_pairs": 1,
                "val_dice_at_threshold": mean_at, "val_dice_per_label_at_threshold": per,
                "best_threshold": 0.5, "best_epoch": {"val_dice_at_threshold": mean_at},
                "minutes": 10.0, "epochs": 3}  # fmt: skip

    summary = summarize("hippocampus", [row(0, 0.8, 0.7), row(1, 0.9, 0.8)], 0.5)
    assert summary["mean_val_dice_per_label"] == pytest.approx({"anterior": 0.85, "posterior": 0.75})
    assert summary["mean_val_dice"] == pytest.approx(0.8)
    assert "3-D Dice per label" in summary["figures"]
    assert "| mean | 0.8500 | 0.7500 | 0.8000 |" in table(summary)


@pytest.mark.parametrize("precision, forward_dtype", [("f32", torch.float32), ("bf16", torch.bfloat16)])
def test_a_training_step_runs_the_forward_in_the_configured_precision_and_keeps_f32_weights(
    spec, tmp_path, precision, forward_dtype
):
    volumes = load_volumes(HIPPO, spec, limit=3)
    config = default_config(
        "hippocampus", arch="unet_3d", widths=(4, 8, 16, 32), batch_size=2, threads=1, precision=precision
    )
    trainer = VolumeTrainer(
        spec, volumes.subset([0, 1]), volumes.subset([2]), config, tmp_path, crop=(16,) * 3
    )
    seen = []
    trainer.net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in trainer.net.parameters()]
    loss = trainer.train_step(*trainer.batch(torch.tensor([0, 1])))
    assert seen == [forward_dtype] and np.isfinite(loss) and loss > 0
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.net.parameters(), strict=True))
    assert trainer.predict_val(0).dtype == torch.float32  # validation (and export) stay f32
