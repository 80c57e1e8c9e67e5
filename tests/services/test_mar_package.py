"""trainer.package.build_mar: a self-contained archive that carries the passed spec and the organ config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from torch import nn

from services.spec import SERVICES_DIR, load_organ_spec
from trainer.package import PackageError, build_mar, repackage
from trainer.package import main as package_main


class Tiny(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def scripted(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.script(Tiny(3)).save(str(path))
    return path


def test_archive_contents_spec_and_card(tmp_path, scripted):
    spec = dataclasses.replace(load_organ_spec("cells"), mean=(0.7, 0.6, 0.5), std=(0.2, 0.2, 0.2))
    mar = build_mar(scripted, "cells", spec, tmp_path / "out", "cells-test", "7", card={"dice": 0.5})
    assert mar == tmp_path / "out" / "cells-test.mar"
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        packed_spec = yaml.safe_load(zf.read("spec.yaml"))
        packed_config = yaml.safe_load(zf.read("model-config.yaml"))
    assert {"model.pt", "handler.py", "spec.yaml", "model-config.yaml"} <= names
    assert {
        f"services/{m}"
        for m in ("__init__.py", "spec.py", "preprocess.py", "imaging.py", "handler_base.py", "runtime.py")
    } <= names
    assert "model.onnx" in names  # exported from the TorchScript network by default
    assert manifest["model"]["modelName"] == "cells-test" and manifest["model"]["modelVersion"] == "7"
    assert manifest["model"]["handler"] == "handler.py" and manifest["model"]["serializedFile"] == "model.pt"
    assert packed_spec["normalize"]["mean"] == [0.7, 0.6, 0.5]
    assert packed_config["batchSize"] >= 1 and "torch_threads" in packed_config["handler"]
    card = json.loads((tmp_path / "out" / "cells-test.json").read_text())
    assert card["dice"] == 0.5 and card["mar_sha256"] == hashlib.sha256(mar.read_bytes()).hexdigest()


def test_archive_runs_its_own_packed_code(tmp_path, scripted):
    """Unpacked as TorchServe does it (model dir first on PYTHONPATH): the packed modules are imported."""
    mar = build_mar(scripted, "cells", load_organ_spec("cells"), tmp_path, "cells", "1")
    model_dir = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(model_dir)
    probe = (
        "import handler, services.imaging as m; print(m.__file__); "
        "print(handler.CellsHandler.__mro__[1].__module__)"
    )
    env = {**os.environ, "PYTHONPATH": str(model_dir)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=model_dir, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0].startswith(str(model_dir)), out
    assert out[1] == "services.handler_base"


def test_missing_inputs_are_named(tmp_path, scripted):
    spec = load_organ_spec("liver")
    with pytest.raises(PackageError, match="TorchScript model not found"):
        build_mar(tmp_path / "nope.pt", "liver", spec, tmp_path, "liver", "1")
    with pytest.raises(PackageError, match="not 'cells'"):
        build_mar(scripted, "cells", spec, tmp_path, "liver", "1")


class SizeBaked(nn.Module):
    """Upsamples to the input's size read in the graph: the TorchScript ONNX exporter cannot keep it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, stride=2)

    def forward(self, x):
        return nn.functional.interpolate(self.conv(x), size=x.shape[-2:], mode="bilinear")


def test_onnx_choices(tmp_path, scripted):
    """Pack a given ONNX file, none, or refuse an export that does not run when the spec asks for it."""
    given = tmp_path / "given.onnx"
    given.write_bytes(b"exported elsewhere")
    spec = load_organ_spec("cells")
    with zipfile.ZipFile(build_mar(scripted, "cells", spec, tmp_path, "given", "1", onnx=given)) as zf:
        assert zf.read("model.onnx") == b"exported elsewhere"
    with zipfile.ZipFile(build_mar(scripted, "cells", spec, tmp_path, "none", "1", onnx=False)) as zf:
        assert "model.onnx" not in zf.namelist()
    baked = tmp_path / "baked.pt"
    torch.jit.script(SizeBaked()).save(str(baked))
    with pytest.raises(PackageError, match="asks for openvino"):
        build_mar(baked, "cells", dataclasses.replace(spec, runtime="openvino"), tmp_path, "b", "1")
    plain = dataclasses.replace(spec, runtime="torchscript")
    with zipfile.ZipFile(build_mar(baked, "cells", plain, tmp_path, "baked", "1")) as zf:
        assert "model.onnx" not in zf.namelist() and "model.pt" in zf.namelist()


def test_repackage_keeps_the_networks_and_spec_and_packs_this_checkouts_code(tmp_path, scripted):
    spec = dataclasses.replace(load_organ_spec("cells"), mean=(0.7, 0.6, 0.5), std=(0.2, 0.2, 0.2))
    older_code = tmp_path / "services"  # an archive built by older code: its handler differs
    shutil.copytree(SERVICES_DIR, older_code, ignore=shutil.ignore_patterns("__pycache__"))
    (older_code / "handler_base.py").write_text("# older handler\n")
    old = build_mar(scripted, "cells", spec, tmp_path / "old", "cells", "1", services_dir=older_code)
    new = repackage(old, tmp_path / "new", "cells-new", "2")
    with zipfile.ZipFile(old) as before, zipfile.ZipFile(new) as after:
        for name in ("model.pt", "model.onnx"):
            assert after.read(name) == before.read(name)
        assert yaml.safe_load(after.read("spec.yaml")) == yaml.safe_load(before.read("spec.yaml"))
        packed_handler = after.read("services/handler_base.py").decode()
        assert json.loads(after.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "2"
    assert packed_handler == (SERVICES_DIR / "handler_base.py").read_text()
    changed = dataclasses.replace(spec, default_threshold=0.4)
    with zipfile.ZipFile(repackage(old, tmp_path / "given", "cells", "3", spec=changed)) as zf:
        assert yaml.safe_load(zf.read("spec.yaml"))["default_threshold"] == 0.4


def test_a_shipped_archive_is_repacked_in_place_and_its_card_says_so(tmp_path, scripted):
    spec = load_organ_spec("cells")
    older_code = tmp_path / "services"
    shutil.copytree(SERVICES_DIR, older_code, ignore=shutil.ignore_patterns("__pycache__"))
    (older_code / "imaging.py").write_text("# older imaging\n")
    store = tmp_path / "store"
    card = {"model_name": "cells", "version": "1.6", "metrics": {"val_dice": 0.8}, "repackaged": {"why": "a"}}
    mar = build_mar(scripted, "cells", spec, store, "cells", "1.6", card=card, services_dir=older_code)
    with zipfile.ZipFile(mar) as zf:
        network = zf.read("model.pt")
    argv = ["--repack", str(mar), "--version", "1.7", "--why", "the new imaging code"]
    assert package_main(argv) == 0
    assert sorted(p.name for p in store.iterdir()) == [
        "cells.json",
        "cells.mar",
    ]  # replaced, nothing left over
    with zipfile.ZipFile(mar) as zf:
        assert zf.read("model.pt") == network
        assert zf.read("services/imaging.py").decode() == (SERVICES_DIR / "imaging.py").read_text()
        assert json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "1.7"
    card = json.loads((store / "cells.json").read_text())
    assert card["version"] == "1.7" and card["metrics"] == {"val_dice": 0.8}
    assert card["mar_sha256"] == hashlib.sha256(mar.read_bytes()).hexdigest()
    entry = card["repackaged"]
    assert entry["from_version"] == "1.6" and entry["why"] == "the new imaging code"
    assert entry["command"] == "python -m trainer.package " + " ".join(argv) and entry["earlier"] == [
        {"why": "a"}
    ]
