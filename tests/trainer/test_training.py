"""Smoke training runs on a few real images: single process, resume, cells crops, and DDP with torchrun."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from services.spec import load_spec
from tests.data import SHARED_DATA
from tests.trainer.test_rescore import assert_served_figures
from trainer.data import kfold_indices
from trainer.loop import THRESHOLDS, last_epoch_network
from trainer.train import default_config, run_training

DATA = SHARED_DATA
LIVER = DATA / "liver" / "train"
CELLS = DATA / "monuseg" / "train"
REPO = Path(__file__).resolve().parents[2]


def test_kfold_partitions_the_data_four_to_one():
    vals = [kfold_indices(400, 5, f, seed=0)[1] for f in range(5)]
    assert sorted(np.concatenate(vals).tolist()) == list(range(400))
    train, val = kfold_indices(400, 5, 2, seed=0)
    assert len(train) == 320 and len(val) == 80 and not set(train) & set(val)
    assert np.array_equal(kfold_indices(400, 5, 2, seed=0)[1], val)  # fixed seed → same split
    with pytest.raises(ValueError, match="fold must be"):
        kfold_indices(10, 5, 5)


def tiny(organ, **kw):
    return default_config(organ, epochs=2, batch_size=2, widths=(6, 12, 24), threads=1, **kw)


def test_liver_smoke_run_writes_a_consistent_card_and_torchscript(tmp_path, monkeypatch):
    import trainer.train

    commits = iter(["c0ffee1", "later99"])  # the checkout moves on while a run trains
    monkeypatch.setattr(trainer.train, "git_commit", lambda: next(commits))
    result = run_training("liver", LIVER, tmp_path, tiny("liver"), limit=6)
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["commit"] == "c0ffee1"  # the code the run started from
    assert card["dataset"]["pairs"] == 6 and card["dataset"]["validation"] == 2
    assert card["training"]["epochs"] == 2
    assert set(card["metrics"]["val_dice_at_threshold"]) == {f"{t:.1f}" for t in THRESHOLDS}
    best_t = max(card["metrics"]["val_dice_at_threshold"], key=card["metrics"]["val_dice_at_threshold"].get)
    assert card["default_threshold"] == float(best_t)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # the exported TorchScript is the best checkpoint
    from services.networks import create_model

    model = create_model("erunet", in_channels=1, widths=(6, 12, 24)).eval()
    model.load_state_dict(torch.load(tmp_path / "best.pt"))
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)
    assert result["spec"].default_threshold == card["default_threshold"]


def test_resume_continues_from_the_checkpoint(tmp_path):
    run_training(
        "liver",
        LIVER,
        tmp_path,
        default_config("liver", epochs=1, batch_size=2, widths=(6, 12, 24), threads=1),
        limit=5,
    )
    result = run_training("liver", LIVER, tmp_path, tiny("liver"), limit=5, resume=True)
    assert result["epochs"] == 2
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_a_run_with_a_moving_average_validates_keeps_and_resumes_the_average(tmp_path):
    from trainer.loop import Trainer

    seen = []
    original = Trainer.validate

    def validate(self):  # what each epoch's validation judged, against the weights being trained
        seen.append((self.ema is not None and self.served is self.ema.module, _same(self.served, self.model)))
        return original(self)

    cfg = default_config("liver", epochs=1, batch_size=2, widths=(6, 12, 24), threads=1, ema=0.9)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "validate", validate)
        run_training("liver", LIVER, tmp_path, cfg, limit=5)
    assert seen == [(True, False), (False, True)]  # each epoch the average; at the end the trained weights
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["trained_weights_at_end"]["val_dice_at"]) == {f"{t:.1f}" for t in THRESHOLDS}
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    dataset = json.loads((tmp_path / "card.json").read_text())["dataset"]
    steps = (dataset["pairs"] - dataset["validation"]) // 2  # an epoch: one pass in batches of 2
    assert steps >= 1 and state["ema"]["n_averaged"] == steps  # one update a step
    best = torch.load(tmp_path / "best.pt")
    for k, v in state["model"].items():  # best.pt and the checkpoint's "model" hold the average
        torch.testing.assert_close(best[k], v)
    assert any(not torch.equal(v, state["trained_model"][k]) for k, v in state["model"].items())
    # resumed, the run goes on averaging from where it stopped
    run_training("liver", LIVER, tmp_path, dataclasses.replace(cfg, epochs=2), limit=5, resume=True)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["ema"]["n_averaged"] == 2 * steps
    # a Trainer made only to score weights (export, rescore) scores the network it is given
    scorer = Trainer(load_spec(tmp_path / "spec.yaml"), *[_pairs(tmp_path)] * 2, cfg, tmp_path / "score")
    assert scorer.served is scorer.model


def _same(a, b) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(p, q) for p, q in pairs)


def _pairs(run_dir):
    from trainer.data import load_pairs

    return load_pairs(LIVER, load_spec(run_dir / "spec.yaml"), limit=2)


def test_validation_every_n_epochs_still_judges_the_last_weights(tmp_path):
    cfg = default_config("liver", epochs=5, val_every=2, batch_size=2, widths=(6, 12, 24), threads=1)
    result = run_training("liver", LIVER, tmp_path, cfg, limit=4)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [2, 4, 5]
    assert result["epochs"] == 5


def test_cells_trains_on_crops_and_validates_on_whole_tiles(cells_smoke_run):
    run = cells_smoke_run  # one epoch on crops of two tiles, validated on the third (trainer/conftest.py)
    card = json.loads((run / "card.json").read_text())
    assert card["dataset"]["validation"] == 1
    spec = (run / "spec.yaml").read_text()
    assert "mode: whole" in spec and "tta: flips" in spec
    # epochs were chosen on single-pass validation; the card scores the best weights as they are served
    metrics = json.loads((run / "metrics.json").read_text())
    best = next(h for h in metrics["history"] if h["epoch"] == metrics["best_epoch"])
    assert card["metrics"]["val_dice_single_pass"] == best["val_dice"]
    assert set(card["metrics"]["val_dice_at_threshold"]) == {f"{t:.1f}" for t in THRESHOLDS}
    # the weights the run ended with, scored as served too (the honest figure `make cv` tables)
    last = card["metrics"]["last_epoch"]
    assert last["val_dice_single_pass"] == metrics["history"][-1]["val_dice"]
    served = load_spec(run / "spec.yaml")
    assert_served_figures(last["val_dice_at_threshold"], card, served, last_epoch_network(run, 3), 1e-3)


def test_ddp_with_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "common.cli",
        "train",
        "--organ",
        "liver",
        "--data",
        str(LIVER),
        "--limit",
        "6",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--run-dir",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["training"]["processes"] == 2


def test_a_liver_run_validates_on_a_whole_held_out_volume(tmp_path):
    """`medseg train --fold 2` on the liver data: the three volumes are found from the slices and fold 2
    holds out the smallest (slices 371-399) whole; the card says so and scores its last epoch too."""
    cfg = default_config("liver", epochs=1, batch_size=2, widths=(6, 12, 24), samples_per_epoch=2, threads=1)
    run_training("liver", LIVER, tmp_path, cfg, fold=2)
    card = json.loads((tmp_path / "card.json").read_text())
    split = card["split"]
    assert (split["group_source"], split["groups"], split["folds"]) == ("volumes", 3, 3)
    assert split["validation_groups"] == {"volume-2": 29} and "by volume" in split["grouping"]
    assert (card["dataset"]["train"], card["dataset"]["validation"]) == (371, 29)
    last = card["metrics"]["last_epoch"]
    assert last["epoch"] == 1 and set(last["val_dice_pooled_at_threshold"]) == {
        f"{t:.1f}" for t in THRESHOLDS
    }


def test_one_fold_trains_on_every_pair_and_keeps_the_last_epoch(tmp_path):
    """`medseg train --folds 1`: a final model on every pair (its figures come from grouped `make cv`)."""
    run_training("liver", LIVER, tmp_path, tiny("liver"), limit=4, folds=1)
    card = json.loads((tmp_path / "card.json").read_text())
    assert (card["dataset"]["train"], card["dataset"]["validation"]) == (4, 0)
    assert card["split"]["folds"] == 1 and card["split"]["validation_groups"] == {}
    assert card["metrics"]["val_dice"] is None and card["metrics"]["best_epoch"] == 2  # the last epoch
    assert card["default_threshold"] == 0.5  # the spec's: nothing to calibrate on
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    best = torch.load(tmp_path / "best.pt")
    assert all(torch.equal(best[k], v) for k, v in checkpoint["model"].items())
    with pytest.raises(ValueError, match="one fold .* is fold 0, not 1"):
        run_training("liver", LIVER, tmp_path / "again", tiny("liver"), limit=4, folds=1, fold=1)


@pytest.mark.parametrize(
    "precision, forward_dtype, layout",
    [("f32", torch.float32, torch.channels_last), ("bf16", torch.bfloat16, torch.contiguous_format)],
)
def test_a_2d_step_runs_in_the_configured_precision_and_the_layout_that_is_fast_in_it(
    tmp_path, precision, forward_dtype, layout
):
    from services.spec import load_organ_spec
    from trainer.data import load_pairs
    from trainer.loop import Trainer

    spec = load_organ_spec("liver")
    pairs = load_pairs(LIVER, spec, limit=3)
    config = tiny("liver", precision=precision)
    trainer = Trainer(spec, pairs.subset([0, 1]), pairs.subset([2]), config, tmp_path)
    seen = []
    trainer.net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    x, y = trainer.batch(torch.tensor([0, 1]))
    # a 3×3 convolution of several channels, whose weight is in one layout only (1×1 or one channel: both)
    conv = next(
        m for m in trainer.net.modules()
        if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size[0] > 1
    )  # fmt: skip
    other = torch.contiguous_format if precision == "f32" else torch.channels_last
    assert conv.weight.is_contiguous(memory_format=layout)
    assert not conv.weight.is_contiguous(memory_format=other)
    assert x.is_contiguous(memory_format=layout)  # one channel: either layout's strides
    before = [p.detach().clone() for p in trainer.net.parameters()]
    loss = trainer.train_step(x, y)
    assert seen == [forward_dtype] and np.isfinite(loss) and loss > 0
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.net.parameters(), strict=True))
    assert trainer.predict_val(0).dtype == torch.float32  # validation (and export) stay f32
