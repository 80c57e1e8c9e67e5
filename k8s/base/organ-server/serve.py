"""Command of an organ server's container: TorchServe's Java frontend as the container's process (PID 1).

`torchserve --start --foreground` is a Python wrapper that starts Java as its child and waits: as PID 1 it
has no SIGTERM handler, so the kernel drops the kubelet's SIGTERM, Java never hears it and every pod is
SIGKILLed at the end of its grace period, mid-request. This script builds the same Java command line as the
wrapper (ts.model_server.start: model_server_home, vmargs from config.properties, the frontend's class path,
`--python`, config file, model store, no config snapshots) and `exec`s it, so SIGTERM reaches the JVM,
whose shutdown hook stops TorchServe; the pod's preStop hook has already waited for the Service to drop
the pod and for the requests in flight to end (docs/operations.md, "Graceful shutdown").

    python serve.py --ts-config /etc/medseg/organ/config.properties --model-store /var/lib/medseg/model-store

Environment: TS_CONFIG_FILE (overrides --ts-config, as in the wrapper), JAVA_HOME (else `java` on PATH),
TEMP (java.io.tmpdir), and every TS_<KEY> TorchServe itself reads (enable_envvars_config).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import ts

FRONTEND_MAIN = "org.pytorch.serve.ModelServer"


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file, as TorchServe's wrapper reads them (no escapes)."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def java_command(config: Path, model_store: Path, environ: dict[str, str] | None = None) -> list[str]:
    """The command line `torchserve --start --foreground --ncs` runs as its child."""
    environ = os.environ if environ is None else environ
    java_home = environ.get("JAVA_HOME")
    ts_home = Path(ts.__file__).resolve().parent.parent
    cmd = [f"{java_home}/bin/java" if java_home else "java", f"-Dmodel_server_home={ts_home}"]
    if environ.get("TEMP"):
        cmd.append(f"-Djava.io.tmpdir={environ['TEMP']}")
    props = read_properties(config)
    cmd += props.get("vmargs", "").split()
    class_path = ".:" + str(ts_home / "ts" / "frontend" / "*")
    if props.get("plugins_path"):
        plugins = props["plugins_path"]
        class_path += ":" + (plugins if "*" in plugins else plugins + "/*")
    cmd += ["-cp", class_path, FRONTEND_MAIN, "--python", sys.executable]
    cmd += ["-f", str(config), "-s", str(model_store), "-ncs"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ts-config", type=Path, required=True)
    parser.add_argument("--model-store", type=Path, required=True)
    args = parser.parse_args(argv)
    config = Path(os.environ.get("TS_CONFIG_FILE") or args.ts_config)
    for what, path, test in (
        ("config", config, Path.is_file),
        ("model store", args.model_store, Path.is_dir),
    ):
        if not test(path):
            raise SystemExit(f"TorchServe {what} {path} not found")
    cmd = java_command(config, args.model_store)
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)  # replaces this process: Java gets our pid (1 in the pod) and our signals
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
