"""A private CA and the certificates it signs, made with the `openssl` command: the local object store's
TLS (tools/objectstore_server.py) and the tests' stand-ins for cert-manager's internal CA
(k8s/base/internal-tls.yaml).

    ca = create_ca(tmp / "ca", "medseg-internal-ca")
    server = issue(ca, tmp / "liver", "torchserve-pods-liver", ["DNS:torchserve-pods-liver"])
    server.cert, server.key          # PEM files; the key is PKCS#8 (BEGIN PRIVATE KEY), as cert-manager
                                     # writes it with `encoding: PKCS8` and TorchServe's gRPC server reads it

Keys are ECDSA P-256 (as the cluster's Certificates), created 0600. Raises subprocess.CalledProcessError or
TimeoutExpired when openssl fails, FileNotFoundError when there is no `openssl`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: object) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise FileNotFoundError("the `openssl` command is needed to create TLS keys")
    old_umask = os.umask(0o077)  # keys are created private, never world-readable in between
    try:
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
    finally:
        os.umask(old_umask)


def create_ca(directory: Path, common_name: str, *, stem: str = "ca", days: int = 3650) -> KeyPair:
    """A self-signed CA: `<stem>.crt` and `<stem>.key` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _openssl("req", "-x509", *EC_KEY, "-keyout", ca.key, "-out", ca.cert, "-days", days,
             "-subj", f"/CN={common_name}")  # fmt: skip
    return ca


def issue(
    ca: KeyPair,
    directory: Path,
    common_name: str,
    alt_names: Sequence[str],
    *,
    stem: str = "tls",
    days: int = 3650,
) -> KeyPair:
    """A certificate signed by `ca` for `alt_names` (subjectAltName entries: "DNS:name", "IP:127.0.0.1"), for
    servers and clients: `<stem>.crt` and `<stem>.key` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    ext, csr = directory / f"{stem}.ext", directory / f"{stem}.csr"
    ext.write_text(f"subjectAltName={','.join(alt_names)}\nextendedKeyUsage=serverAuth,clientAuth\n")
    try:
        _openssl("req", *EC_KEY, "-keyout", pair.key, "-out", csr, "-subj", f"/CN={common_name}")
        _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
                 "-out", pair.cert, "-days", days, "-extfile", ext)  # fmt: skip
    finally:
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
    return pair
