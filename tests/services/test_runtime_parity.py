"""The shipped networks give the same masks in every runtime: held-out images of the card's own split,
prepared as the organ server prepares them, through TorchScript, ONNX Runtime and OpenVINO (the archive's
model.onnx, or one exported now from its model.pt when the archive has none).

Stated tolerances, per organ: masks at 0.5 with Dice ≥ 0.999 against TorchScript's on every image, and
logits within LOGIT_ATOL (absolute) of TorchScript's; the reduced-precision runtime an organ is served in
(bfloat16, int8) within its own stated bounds below. Liver: 4 slices (held out when the card's split holds
any out; the shipped 1.8 trained on all 400, so 4 spread over them); cells: 1 held-out tile in one pass (a
1008² pass takes seconds; the mirror images are the same network on flipped input).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.imaging import decode_image
from services.preprocess import prepare
from services.runtime import build, runtime_for_this_cpu
from tests.data import CELLS_TRAIN, LIVER_TRAIN, SHARED_DATA
from trainer.data import find_pairs, kfold_indices
from trainer.export import MASK_DICE, mask_dice_bound, organ_threads, unpack_runtimes
from trainer.loop import dice_score

REPO = Path(__file__).resolve().parents[2]
CASES = {"liver": (LIVER_TRAIN, 4), "cells": (CELLS_TRAIN, 1)}
# float32 summation order differs between the runtimes' kernels. Worst cases measured on these images
# (printed with -s), 2026-12-02: liver ONNX Runtime 7.9e-4, OpenVINO 5.0e-4; cells 3.2e-4 and 1.8e-4.
LOGIT_ATOL = {"liver": 2e-3, "cells": 2e-3}
# bfloat16 keeps 8 bits of mantissa: logits move by up to a few tenths where they are large, the masks at 0.5
# barely (the organ's choice of it rests on trainer.export's validation: Dice unchanged, every mask within
# trainer.export.mask_dice_bound). Worst case measured on these images (-s): liver 0.143 (2026-12-02 15:40
# UTC); cells 1.10 0.174, its held-out tile's mask 0.99882 (2026-12-06 04:15 UTC, a CPU with AVX512-BF16).
BF16_LOGIT_ATOL = 0.3
# int8 (trainer.quantize: adopted where the held-out Dice drops by at most 0.002) is another network: its
# masks differ at the edges of nuclei. Stated for an organ served in it: masks at 0.5 within INT8_MASK_DICE of
# TorchScript's, logits within INT8_LOGIT_ATOL. Measured on the held-out tile in one pass (-s): cells 1.6
# (2026-12-02) mask Dice 0.9898, max |Δ logit| 0.97 (trainer.quantize over the fold, with mirror images: every
# mask ≥ 0.9926 against f32, held-out Dice 0.8012 against 0.8008); cells 1.8 (2026-12-05, the network trained
# in bfloat16) 0.9871 and 0.98 here, and over its fold with the half turn every mask ≥ 0.9672 against f32
# (held-out Dice 0.8130 against 0.8097; test_shipped_models_served's tile 0.9665). The bound sits below those
# figures: it guards against a broken int8 network or runtime (a mis-scaled or wrongly calibrated network's
# masks score far below 0.9), while the held-out Dice decides adoption (trainer.quantize).
INT8_MASK_DICE = 0.95
INT8_LOGIT_ATOL = 2.0
REDUCED = {
    "openvino-bf16": (mask_dice_bound("openvino-bf16"), BF16_LOGIT_ATOL),
    "openvino-int8": (INT8_MASK_DICE, INT8_LOGIT_ATOL),
}

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module", params=sorted(CASES))
def shipped(request, tmp_path_factory):
    organ = request.param
    mar = REPO / "model-store" / f"{organ}.mar"
    card = json.loads(mar.with_suffix(".json").read_text())
    work = tmp_path_factory.mktemp(organ)
    spec = unpack_runtimes(mar, work)
    root, count = CASES[organ]
    pairs = find_pairs(root)[: card["dataset"]["pairs"]]
    split = card["split"]
    if split["folds"] > 1:
        _, val_idx = kfold_indices(len(pairs), split["folds"], split["fold"], split["seed"])
    else:  # a final model trained on every pair (its figures are the card's cross_validation): spread images
        val_idx = np.linspace(0, len(pairs) - 1, count).round().astype(int)
    inputs = [
        prepare(decode_image(pairs[i][1].read_bytes(), window=spec.window).array, spec)[0]
        for i in val_idx[:count]
    ]
    return organ, work, spec, inputs


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "openvino-bf16", "openvino-int8"])
def test_same_masks_as_torchscript_on_held_out_images(shipped, runtime):
    organ, work, spec, inputs = shipped
    if runtime in REDUCED and spec.runtime != runtime:
        pytest.skip(f"{organ} is not served in {runtime}")
    served_here, why = runtime_for_this_cpu(runtime)
    if served_here != runtime:
        pytest.skip(f"{organ} is not served in {runtime} on this CPU: {why}")
    mask_dice, logit_atol = REDUCED.get(runtime, (MASK_DICE, LOGIT_ATOL[organ]))
    threads = organ_threads(organ)
    torch.set_num_threads(threads)
    reference = build("torchscript", work, threads)
    other = build(runtime, work, threads)
    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            a, b = reference(x), other(x)
            assert a.shape == b.shape == (1, 1, *x.shape[-2:])
            worst = max(worst, float((a - b).abs().max()))
            dice = dice_score(a >= 0, b >= 0)  # logit 0 = probability 0.5
            print(f"{organ} {runtime}: mask Dice {dice:.5f}")
            assert dice >= mask_dice, f"{organ} {runtime}: mask Dice {dice:.5f}"
    print(f"{organ} {runtime}: max |Δ logit| {worst:.2e} over {len(inputs)} held-out image(s)")
    assert worst <= logit_atol
    assert np.isfinite(worst)
