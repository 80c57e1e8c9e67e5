"""The shipped archives (model-store/<organ>.mar) on a real TorchServe: each worker runs the network in the
runtime its spec names (not a fallback), and answers a real image with the probability map that the same
archive gives in this process through TorchScript (within one grey level; in bfloat16 within 0.1 with the
mask at 0.5 kept; in int8, another network, with the mask at 0.5 kept within tests/services/
test_runtime_parity.py's INT8_MASK_DICE)."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common.launcher import OrganServer, free_ports, server_dir
from common.torchserve_client import InferenceClient
from services.imaging import decode_image
from services.preprocess import prepare, probabilities, restore
from services.runtime import INT8_FILE, runtime_for_this_cpu
from services.spec import load_spec
from tests.data import CELLS_TRAIN, LIVER_SLICE, SHARED_DATA
from tests.fixtures.torchserve import _require_runtime
from tests.services.test_runtime_parity import INT8_MASK_DICE
from trainer.export import mask_dice_bound
from trainer.loop import dice_score

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"liver": LIVER_SLICE, "cells": CELLS_TRAIN / "images" / "TCGA-18-5592-01Z-00-DX1.png"}
CELLS_CROP = 512  # a corner of the tile: its four views in TorchScript, the reference, take ~10 s at 1,000²
TIMEOUT = 300  # s: a cells tile is four passes on a shared 2-core machine


def _image(organ: str) -> bytes:
    """The image sent: the liver slice as it is; a 512² corner of the cells tile, as a PNG (the organ serves
    any size: it pads to its multiple)."""
    if organ != "cells":
        return IMAGES[organ].read_bytes()
    out = io.BytesIO()
    Image.open(IMAGES[organ]).convert("RGB").crop((0, 0, CELLS_CROP, CELLS_CROP)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("organ", ["liver", "cells"])
def test_shipped_archive_serves_in_its_runtime(organ, tmp_path):
    _require_runtime()
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data")
    shipped = REPO / "model-store" / f"{organ}.mar"
    with zipfile.ZipFile(shipped) as archive:
        spec_raw = yaml.safe_load(archive.read("spec.yaml"))
        archive.extract("model.pt", tmp_path)
        archive.extract("spec.yaml", tmp_path)
        assert "model.onnx" in archive.namelist()
        assert spec_raw["runtime"] != "openvino-int8" or INT8_FILE in archive.namelist()
    assert spec_raw["runtime"] in ("onnxruntime", "openvino", "openvino-bf16", "openvino-int8")
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(shipped, store / shipped.name)
    server = OrganServer(organ, tmp_path / "state", store, models={organ: shipped.name}, ports=free_ports())
    try:
        server.start(timeout=300)
        image = _image(organ)
        with InferenceClient(server.grpc_inference_address, server.keys.inference) as client:
            body = client.predict(organ, image, timeout=TIMEOUT)
        logs = "".join(
            p.read_text(errors="replace")
            for p in (server_dir(tmp_path / "state", organ) / "logs").glob("*.log")
        )
    finally:
        server.stop()
    runtime = runtime_for_this_cpu(spec_raw["runtime"])[0]  # the spec's, or its stand-in on this CPU
    assert f"runtime {runtime}, " in logs, "the worker did not say it runs the spec's runtime"
    assert "falling back to TorchScript" not in logs
    served = np.asarray(Image.open(io.BytesIO(body))).astype(int)

    spec = load_spec(tmp_path / "spec.yaml")
    model = torch.jit.load(str(tmp_path / "model.pt")).eval()
    x, how = prepare(decode_image(image, window=spec.window).array, spec)
    with torch.inference_mode():
        prob = restore(probabilities(model, x, spec), how)
    reference = (prob * 255.0).round().to(torch.uint8).numpy().astype(int)
    assert served.shape == reference.shape
    if runtime == "openvino-bf16":  # 8 bits of mantissa: probabilities move, masks stay
        assert np.abs(served - reference).max() <= 0.1 * 255  # trainer.export measured at most 0.09
        mask_dice = dice_score(torch.from_numpy(served >= 128), torch.from_numpy(reference >= 128))
        print(f"{organ} bf16: mask Dice {mask_dice:.5f}, max |Δ| {np.abs(served - reference).max()}")
        assert mask_dice >= mask_dice_bound(runtime)
    elif runtime == "openvino-int8":
        mask_dice = dice_score(torch.from_numpy(served >= 128), torch.from_numpy(reference >= 128))
        print(f"{organ} int8: mask Dice {mask_dice:.5f}, mean |Δ| {np.abs(served - reference).mean():.2f}")
        assert mask_dice >= INT8_MASK_DICE
    else:
        assert np.abs(served - reference).max() <= 1
