"""Compile the gRPC code the platform needs into one generated-code directory (`make protos`).

    python -m tools.protogen --out build/gen \
        --torchserve-protos build/protos/torchserve --medseg-protos protos

* TorchServe's `inference.proto` / `management.proto` (extracted from the installed frontend jar by the
  Makefile) become the package `torchserve_grpc` (`torchserve_grpc.inference_pb2`, `..._pb2_grpc`, ...).
  They are staged under that folder name before compiling so the generated modules do not land as
  generic top-level names (`inference_pb2`) on everybody's sys.path.
* Every `protos/medseg/v1/*.proto` becomes `medseg.v1.<name>_pb2` / `_pb2_grpc`.
* `google/rpc/status.proto` (imported by inference.proto) resolves from googleapis-common-protos' include
  path and is *not* regenerated: its Python module ships in that package (`google.rpc.status_pb2`), and a
  second copy would clash with it in the protobuf descriptor pool. Well-known types come from grpc_tools.

The output directory is on sys.path through the `.pth` file the Makefile writes; it is never edited or
committed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

TORCHSERVE_PROTOS = ("inference.proto", "management.proto")
TORCHSERVE_PACKAGE = "torchserve_grpc"


class ProtoCompileError(RuntimeError):
    """protoc refused a file; the message carries protoc's own diagnostics."""


def _well_known_include() -> Path:
    return Path(str(resources.files("grpc_tools") / "_proto"))


def _googleapis_include() -> Path:
    """Directory holding `google/rpc/status.proto` as shipped by googleapis-common-protos."""
    import google.rpc.status_pb2 as status_pb2  # the package ships the .proto beside the module

    root = Path(status_pb2.__file__).resolve().parents[2]
    if not (root / "google" / "rpc" / "status.proto").is_file():
        raise ProtoCompileError(
            f"google/rpc/status.proto not found under {root}; reinstall googleapis-common-protos"
        )
    return root


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    logger.debug("protoc %s", " ".join(args))
    # protoc prints its diagnostics to stderr itself; the return code says whether it worked.
    code = protoc.main(["grpc_tools.protoc", *args])
    if code != 0:
        files = " ".join(a for a in args if a.endswith(".proto"))
        raise ProtoCompileError(f"protoc failed (exit {code}) for: {files}")


def _mark_packages(out: Path, rel_files: list[str]) -> None:
    """Give every generated folder an __init__.py so it imports as a regular package."""
    for rel in rel_files:
        folder = (out / rel).parent
        while folder != out:
            (folder / "__init__.py").touch(exist_ok=True)
            folder = folder.parent


def compile_protos(out: Path, torchserve_protos: Path | None, medseg_protos: Path | None) -> list[Path]:
    """Generate `_pb2.py`, `_pb2.pyi` and `_pb2_grpc.py` modules under `out`; return the generated files."""
    out.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{_well_known_include()}", f"-I{_googleapis_include()}"]
    outputs = [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    before = set(out.rglob("*.py*"))

    if torchserve_protos is not None:
        missing = [name for name in TORCHSERVE_PROTOS if not (torchserve_protos / name).is_file()]
        if missing:
            raise ProtoCompileError(
                f"{', '.join(missing)} not found in {torchserve_protos}; run `make protos`, which "
                "extracts them from TorchServe's frontend jar"
            )
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / TORCHSERVE_PACKAGE
            staged.mkdir()
            for name in TORCHSERVE_PROTOS:
                shutil.copyfile(torchserve_protos / name, staged / name)
            rel = [f"{TORCHSERVE_PACKAGE}/{name}" for name in TORCHSERVE_PROTOS]
            _protoc([f"-I{tmp}", *includes, *outputs, *rel])
            _mark_packages(out, rel)

    if medseg_protos is not None:
        rel = sorted(p.relative_to(medseg_protos).as_posix() for p in medseg_protos.rglob("*.proto"))
        if rel:
            _protoc([f"-I{medseg_protos}", *includes, *outputs, *rel])
            _mark_packages(out, rel)
        else:
            logger.warning("no .proto files under %s", medseg_protos)

    generated = sorted(set(out.rglob("*.py*")) - before)
    logger.info("generated %d files under %s", len(generated), out)
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.protogen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (on sys.path via a .pth)")
    parser.add_argument("--torchserve-protos", type=Path, help="folder with inference/management.proto")
    parser.add_argument("--medseg-protos", type=Path, help="root of the medseg protos (medseg/v1/*.proto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        compile_protos(args.out, args.torchserve_protos, args.medseg_protos)
    except ProtoCompileError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
