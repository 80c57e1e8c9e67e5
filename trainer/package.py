"""Build a self-contained TorchServe .mar for one organ from a TorchScript network.

    build_mar("run/model.pt", "liver", spec, "model-store", "liver", "3", card={...})
    → model-store/liver.mar (+ model-store/liver.json)

What goes in (archive root = the model dir TorchServe unpacks and puts first on the worker's PYTHONPATH):
    model.pt             the TorchScript network (logits (N, 1, h, w))
    handler.py           services/<organ>/handler.py, the entry point (exactly one handler class)
    services/            the helper package the handler imports — __init__, spec, preprocess, imaging,
                         handler_base — packed as a package (not flat) because those modules import each
                         other as `services.*`; with the model dir first on PYTHONPATH the packed copies win
                         over any installed ones, so the archive runs exactly the code it was built with
    model.onnx           the same network exported to ONNX (trainer.export), for the runtime the spec names
                         (`runtime:` onnxruntime / openvino; services.runtime falls back to model.pt)
    model-int8.onnx      where the spec's runtime is openvino-int8: the network quantised (trainer.quantize)
    spec.yaml            the organ spec as passed (may carry normalisation values measured in training)
    model-config.yaml    services/<organ>/model-config.yaml: batching, workers, timeouts, torch threads
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from services.runtime import INT8_FILE, ONNX_FILE
from services.spec import SERVICES_DIR, OrganSpec, load_spec
from trainer.onnx_export import ExportError, export_onnx
from trainer.train import git_commit

logger = logging.getLogger(__name__)

HELPER_MODULES = ("__init__.py", "spec.py", "preprocess.py", "imaging.py", "handler_base.py", "runtime.py")


class PackageError(RuntimeError):
    """The archive could not be built; the message says which input is missing or what the archiver said."""


def build_mar(
    scripted_model_path: str | Path,
    organ: str,
    spec: OrganSpec,
    out_dir: str | Path,
    model_name: str,
    version: str,
    card: dict | None = None,
    *,
    services_dir: Path = SERVICES_DIR,
    onnx: str | Path | bool = True,
    int8: str | Path | None = None,
) -> Path:
    """Archive a TorchScript model for `organ` as `<out_dir>/<model_name>.mar` and return its path.

    `card` (data, metrics, training time, ...) is written beside it as `<model_name>.json`, with the
    archive's sha256 and size added. An existing archive of the same name is replaced.
    `onnx`: an exported model.onnx to pack, True to export one from the TorchScript network here
    (trainer.onnx_export.export_onnx), False for none (the server then runs TorchScript, saying why).
    `int8`: the network's int8 quantisation (trainer.quantize) to pack as model-int8.onnx, for the runtime
    openvino-int8; a spec naming that runtime needs it.
    """
    scripted = Path(scripted_model_path)
    organ_dir = Path(services_dir) / organ
    _check_inputs(scripted, organ_dir, organ, spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"mar-{model_name}-") as tmp:
        stage = Path(tmp)
        shutil.copyfile(scripted, stage / "model.pt")  # BaseHandler loads TorchScript from a *.pt name
        shutil.copyfile(organ_dir / "handler.py", stage / "handler.py")
        extra = stage / "extra"
        (extra / "services").mkdir(parents=True)
        _stage_onnx(onnx, scripted, spec, extra / ONNX_FILE, model_name)
        if int8 is not None:
            shutil.copyfile(int8, extra / INT8_FILE)
        elif spec.runtime == "openvino-int8":
            raise PackageError(f"the spec asks for openvino-int8: pack its {INT8_FILE} (trainer.quantize)")
        for name in HELPER_MODULES:
            shutil.copyfile(Path(services_dir) / name, extra / "services" / name)
        (extra / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        _archive(stage, organ_dir / "model-config.yaml", model_name, version, out)
    mar = out / f"{model_name}.mar"
    if not mar.is_file():
        raise PackageError(f"torch-model-archiver reported success but {mar} is missing")
    logger.info("built %s (%s version %s, %.1f MB)", mar, organ, version, mar.stat().st_size / 1e6)
    if card is not None:
        digest = hashlib.sha256(mar.read_bytes()).hexdigest()
        full_card = {**card, "mar_file": mar.name, "mar_sha256": digest, "mar_bytes": mar.stat().st_size}
        (out / f"{model_name}.json").write_text(json.dumps(full_card, indent=2, sort_keys=True) + "\n")
    return mar


def repackage(
    mar: str | Path,
    out_dir: str | Path,
    model_name: str,
    version: str,
    *,
    spec: OrganSpec | None = None,
    card: dict | None = None,
    services_dir: Path = SERVICES_DIR,
) -> Path:
    """An archive's networks (model.pt, and model.onnx when it has one) and packed spec (or `spec`) in a new
    archive with this checkout's handler code and model-config.yaml: how a trained model is served by a
    changed handler (a volume chunk, a new setting) without training it again. `card`, when given, is
    written beside it as build_mar writes one (with the new archive's sha256)."""
    with tempfile.TemporaryDirectory(prefix=f"repack-{model_name}-") as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(mar) as archive:
            names = set(archive.namelist())
            for name in ("model.pt", "spec.yaml", ONNX_FILE, INT8_FILE):
                if name in names:
                    archive.extract(name, work)
        if spec is None:
            spec = load_spec(work / "spec.yaml")
        onnx = work / ONNX_FILE if (work / ONNX_FILE).is_file() else True
        int8 = work / INT8_FILE if (work / INT8_FILE).is_file() else None
        return build_mar(
            work / "model.pt",
            spec.name,
            spec,
            out_dir,
            model_name,
            version,
            card,
            services_dir=services_dir,
            onnx=onnx,
            int8=int8,
        )


def repack(
    mar: str | Path,
    out_dir: str | Path,
    version: str,
    why: str,
    command: str,
    *,
    spec: OrganSpec | None = None,
    card: dict | None = None,
) -> Path:
    """repackage() for a shipped archive and its card (`card`, default the one beside `mar`), which gains a
    `repackaged` entry (when, `command`, `why`, the version it came from; earlier entries kept under
    `earlier`). `out_dir` may be the archive's own folder: the new one is built aside and moved in."""
    mar, out_dir = Path(mar), Path(out_dir)
    card = dict(card or json.loads(mar.with_suffix(".json").read_text()))
    earlier = card.get("repackaged")
    card["repackaged"] = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "commit": git_commit(),
        "from_version": card.get("version"),
        "why": why,
        **(
            {"earlier": [{k: v for k, v in earlier.items() if k != "earlier"}, *earlier.get("earlier", [])]}
            if earlier
            else {}
        ),
    }
    card["version"] = version
    name = card.get("model_name") or mar.stem
    with tempfile.TemporaryDirectory(prefix=f"repack-{name}-out-") as tmp:
        built = repackage(mar, tmp, name, version, spec=spec, card=card)
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in (built, built.with_suffix(".json")):
            shutil.move(path, out_dir / path.name)
    return out_dir / built.name


def main(argv: list[str] | None = None) -> int:
    """python -m trainer.package --repack model-store/liver.mar --version 1.5 --why "…" [--out DIR]"""
    parser = argparse.ArgumentParser(
        description="Pack a shipped archive's networks and spec again with this checkout's handler code "
        "(trainer.package.repack); its card beside it gains a `repackaged` entry."
    )
    parser.add_argument("--repack", required=True, type=Path, help="the archive (its card beside it)")
    parser.add_argument("--version", required=True)
    parser.add_argument("--why", required=True, help="what changed in the handler code, for the card")
    parser.add_argument("--out", type=Path, help="model store folder (default: the archive's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = " ".join(["python -m trainer.package", *(argv if argv is not None else sys.argv[1:])])
    out = repack(args.repack, args.out or args.repack.parent, args.version, args.why, command)
    print(f"packaged {out} (version {args.version})")
    return 0


def _check_inputs(scripted: Path, organ_dir: Path, organ: str, spec: OrganSpec) -> None:
    for required, what in (
        (scripted, "TorchScript model"),
        (organ_dir / "handler.py", f"handler of organ {organ!r}"),
        (organ_dir / "model-config.yaml", f"model-config.yaml of organ {organ!r}"),
    ):
        if not required.is_file():
            raise PackageError(f"{what} not found at {required}")
    if spec.name != organ:
        raise PackageError(f"spec is for organ {spec.name!r}, not {organ!r}")


def _stage_onnx(
    onnx: str | Path | bool, scripted: Path, spec: OrganSpec, target: Path, model_name: str
) -> None:
    """Put model.onnx at `target`: exported here (onnx=True), copied (a path), or none (False). A failed
    export is an error only when the spec's runtime needs it; otherwise the server runs TorchScript."""
    if onnx is True:
        try:
            # a 3-D network is traced on a volume of its input size; a 2-D one on the exporter's square
            export_onnx(
                scripted, spec.channels, target, **({"size": spec.inference.size} if spec.volumetric else {})
            )
        except ExportError as exc:
            target.unlink(missing_ok=True)
            if spec.runtime != "torchscript":
                raise PackageError(f"the spec asks for {spec.runtime}: {exc}") from exc
            logger.warning("packing %s without model.onnx (it runs TorchScript): %s", model_name, exc)
    elif onnx:
        if not Path(onnx).is_file():
            raise PackageError(f"ONNX model not found at {onnx}")
        shutil.copyfile(onnx, target)


def _archive(stage: Path, model_config: Path, model_name: str, version: str, out: Path) -> None:
    """Run torch-model-archiver on the staged files, writing <out>/<model_name>.mar."""
    # the archiver stages files under $TMPDIR/<model_name>: a private TMPDIR keeps parallel builds apart
    archiver_tmp = stage / "archiver-tmp"
    archiver_tmp.mkdir()
    cmd = [
        _archiver_executable(),
        "--model-name",
        model_name,
        "--version",
        str(version),
        "--serialized-file",
        str(stage / "model.pt"),
        "--handler",
        str(stage / "handler.py"),
        "--extra-files",
        str(stage / "extra"),
        "--config-file",
        str(model_config),
        "--export-path",
        str(out),
        "--force",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(archiver_tmp)}, check=False
    )
    if result.returncode != 0:
        raise PackageError(f"torch-model-archiver failed ({result.returncode}): {result.stderr.strip()}")


def _archiver_executable() -> str:
    candidate = Path(sys.executable).with_name("torch-model-archiver")
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("torch-model-archiver")
    if found:
        return found
    raise PackageError("torch-model-archiver not found; install the project's dependencies (make up)")


if __name__ == "__main__":
    raise SystemExit(main())
