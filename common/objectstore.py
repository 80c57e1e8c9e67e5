"""ObjectStore: the only module that talks S3 (through the minio SDK).

Works against any S3 server (SeaweedFS locally, MinIO or SeaweedFS in Kubernetes). Every failure of the
server (refused connection, timeout, 5xx, refused credentials) becomes `ServiceUnavailable("object
store unavailable: ...")` after a short, bounded retry; a missing object or bucket becomes `NotFound`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE

from common.errors import NotFound, ServiceUnavailable
from common.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}
UNAVAILABLE_MESSAGE = "object store unavailable (details in the server log)"
CREDENTIALS_FILE = (
    "s3-credentials.json"  # written by the local object store launcher (tools/objectstore_server)
)
PART_SIZE = 16 * 1024 * 1024  # multipart chunk: bounds memory when streaming big files of unknown length
# Bytes already in memory up to this size go in one PUT (S3 takes up to 5 GiB so): a 105 MB CT series took
# 0.91-0.93 s and 1.5-1.6 CPU-s of SeaweedFS that way against 1.31-1.76 s and 2.4-2.5 CPU-s in minio's
# default 5 MiB parts (/work/exp/putexp.py, 2026-12-03); larger ones in PART_SIZE parts.
SINGLE_PUT_MAX_BYTES = 256 * 1024 * 1024


def sha256_of(chunks: Iterable[bytes]) -> str:
    """The hex sha256 of bytes arriving in chunks (a file read in pieces, an object's `stream`)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read 1 MiB at a time (what dataset manifests and model cards record)."""
    with open(path, "rb") as fh:
        return sha256_of(iter(lambda: fh.read(1024 * 1024), b""))


@dataclass(frozen=True)
class Buckets:
    datasets: str = "medseg-datasets"
    results: str = "medseg-results"
    models: str = "medseg-models"
    runs: str = "medseg-runs"

    @classmethod
    def from_settings(cls, settings: Settings) -> Buckets:
        return cls(
            settings.bucket_datasets, settings.bucket_results, settings.bucket_models, settings.bucket_runs
        )

    def all(self) -> tuple[str, ...]:
        return (self.datasets, self.results, self.models, self.runs)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None
    last_modified: datetime | None
    content_type: str | None = None


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def read_credentials_file(path: Path) -> S3Credentials | None:
    """The S3 access/secret key from a generated credentials file, or None when it does not exist."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return S3Credentials(data["access_key"], data["secret_key"])


def resolve_credentials(settings: Settings):
    """S3 credentials: MEDSEG_S3_ACCESS_KEY/SECRET_KEY when set, else the file `make up` generated."""
    if settings.s3_access_key and settings.s3_secret_key:
        return S3Credentials(settings.s3_access_key, settings.s3_secret_key)
    path = Path(settings.state_dir) / CREDENTIALS_FILE
    creds = read_credentials_file(path)
    if creds is None:
        raise ServiceUnavailable(
            f"object store unavailable: no credentials (set MEDSEG_S3_ACCESS_KEY and MEDSEG_S3_SECRET_KEY, "
            f"or start the local store with `make up`, which generates {path})",
            code="objectstore_unavailable",
        )
    return creds


class ObjectStore:
    """S3 access with short timeouts; all methods raise ServiceUnavailable / NotFound, never SDK errors."""

    def __init__(
        self,
        endpoint: str,
        credentials,
        *,
        secure: bool = False,
        ca_file: Path | None = None,
        buckets: Buckets | None = None,
        region: str = "us-east-1",
        connect_timeout: float = 2.0,
        read_timeout: float = 15.0,
        retries: int = 2,
        max_connections: int = 32,
    ):
        self.endpoint = endpoint
        self.buckets = buckets or Buckets()
        if secure and ca_file is not None and not Path(ca_file).is_file():
            # A missing CA would only show as a TLS failure on the first call: name the setting instead.
            missing = f"object store CA file {ca_file} not found (MEDSEG_S3_CA_FILE)"
            raise ServiceUnavailable(missing, code="objectstore_unavailable")
        # minio's default pool waits 5 minutes and retries 5 times; a dependency being down must show fast.
        # raise_on_status=False: after the last retry the 5xx response goes back to minio, which raises it.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # One client serves every thread that may talk S3 at once: the data plane's 8 result writers,
            # request threads (thumbnails, overlays), readiness probes, dataset uploads (4 threads each).
            # Under load (make soak, 16 callers) a pool of 10 was full: connections were discarded after
            # each burst ("Connection pool is full") and opened again for the next.
            maxsize=max_connections,
            cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
            ca_certs=(str(ca_file) if ca_file is not None else certifi.where()) if secure else None,
            retries=urllib3.Retry(
                total=retries,
                connect=retries,
                read=min(retries, 1),
                backoff_factor=0.1,
                status_forcelist=(500, 502, 503, 504),
                raise_on_status=False,
                allowed_methods=None,
            ),
        )
        # A fixed region avoids one GetBucketLocation round trip per bucket.
        self.client = Minio(
            endpoint,
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ObjectStore:
        settings = settings or get_settings()
        return cls(
            settings.s3_endpoint,
            resolve_credentials(settings),
            secure=settings.s3_secure,
            ca_file=settings.s3_ca_file,
            buckets=Buckets.from_settings(settings),
        )

    # --- health / setup ------------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise ServiceUnavailable unless the store answers an authenticated request (for /readyz)."""
        with self._errors("ping"):
            self.client.list_buckets()

    def ensure_buckets(self) -> None:
        """Create the datasets/results/models/runs buckets that do not exist yet."""
        for bucket in self.buckets.all():
            with self._errors(f"ensure bucket {bucket}"):
                if not self.client.bucket_exists(bucket):
                    try:
                        self.client.make_bucket(bucket)
                        logger.info("created bucket %s", bucket)
                    except S3Error as exc:
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise

    # --- writes --------------------------------------------------------------------------------------
    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        """Store `data` at bucket/key (overwrites): in one PUT up to SINGLE_PUT_MAX_BYTES, else in parts."""
        size = len(data)
        part_size = max(size, MIN_PART_SIZE) if size <= SINGLE_PUT_MAX_BYTES else PART_SIZE
        with self._errors(f"put {bucket}/{key}"):
            result = self.client.put_object(
                bucket, key, io.BytesIO(data), size, content_type=content_type, part_size=part_size
            )
        return ObjectInfo(key, size, result.etag, None, content_type)

    def put_stream(
        self,
        bucket: str,
        key: str,
        stream: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        """Upload from a file-like object; unknown length (-1) streams in PART_SIZE multipart chunks."""
        with self._errors(f"put {bucket}/{key}"):
            result = self.client.put_object(
                bucket,
                key,
                stream,
                length,
                content_type=content_type,
                part_size=PART_SIZE if length < 0 else 0,
            )
        return (
            self.stat(bucket, key) if length < 0 else ObjectInfo(key, length, result.etag, None, content_type)
        )

    def put_file(
        self, bucket: str, key: str, path: str | Path, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        """Upload a local file, streamed (multipart above the part size, so memory stays bounded)."""
        size = Path(path).stat().st_size
        with self._errors(f"put {bucket}/{key}"):
            result = self.client.fput_object(
                bucket, key, str(path), content_type=content_type, part_size=PART_SIZE
            )
        return ObjectInfo(key, size, result.etag, None, content_type)

    def delete(self, bucket: str, key: str) -> None:
        """Delete one object; deleting a missing object is not an error (S3 semantics)."""
        with self._errors(f"delete {bucket}/{key}"):
            self.client.remove_object(bucket, key)

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many were deleted."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix (refusing to empty a whole bucket)")
        keys = [info.key for info in self.list(bucket, prefix)]
        if not keys:
            return 0
        with self._errors(f"delete {bucket}/{prefix}*"):
            errors = list(self.client.remove_objects(bucket, (DeleteObject(k) for k in keys)))
        if errors:
            raise ServiceUnavailable(
                f"object store unavailable: could not delete {len(errors)} object(s) "
                f"under {bucket}/{prefix}: {errors[0]}",
                code="objectstore_unavailable",
            )
        return len(keys)

    # --- reads ---------------------------------------------------------------------------------------
    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The whole object in memory (small objects only; use `stream`/`download` for big ones)."""
        return b"".join(self.stream(bucket, key))

    def stream(self, bucket: str, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Yield the object's bytes in chunks; errors while reading also map to ServiceUnavailable."""
        with self._errors(f"get {bucket}/{key}"):
            response = self.client.get_object(bucket, key)
        try:
            with self._errors(f"read {bucket}/{key}"):
                yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def open(self, bucket: str, key: str) -> BinaryIO:
        """A readable file-like object for the object (caller closes it). Reads are not retried."""
        with self._errors(f"get {bucket}/{key}"):
            response = self.client.get_object(bucket, key)
        return io.BufferedReader(_ResponseReader(response, self, f"{bucket}/{key}"), buffer_size=1024 * 1024)

    def download(self, bucket: str, key: str, path: str | Path) -> Path:
        """Stream the object into a local file (written to a temp name, renamed when complete)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a private temp name: concurrent downloads of one object into one cache never share a file
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in self.stream(bucket, key):
                    fh.write(chunk)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
        except NotFound:
            return False
        return True

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        with self._errors(f"stat {bucket}/{key}"):
            st = self.client.stat_object(bucket, key)
        return ObjectInfo(key, st.size or 0, st.etag, st.last_modified, st.content_type)

    def list(self, bucket: str, prefix: str = "", recursive: bool = True) -> list[ObjectInfo]:
        """Objects under `prefix`, sorted by key (non-recursive: one level, "directories" end in /)."""
        with self._errors(f"list {bucket}/{prefix}"):
            objects = list(self.client.list_objects(bucket, prefix=prefix or None, recursive=recursive))
        return sorted(
            (ObjectInfo(o.object_name, o.size or 0, o.etag, o.last_modified) for o in objects),
            key=lambda o: o.key,
        )

    def presigned_get_url(self, bucket: str, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A time-limited GET URL (signed locally; does not check that the object exists)."""
        with self._errors(f"presign {bucket}/{key}"):
            return self.client.presigned_get_object(bucket, key, expires=expires)

    # --- error mapping -------------------------------------------------------------------------------
    def _errors(self, what: str):
        return _map_errors(self.endpoint, what)


class _map_errors:  # noqa: N801 — used as a context manager, reads like one
    """Translate minio / urllib3 errors to transport-neutral ones."""

    def __init__(self, endpoint: str, what: str):
        self.endpoint, self.what = endpoint, what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (NotFound, ServiceUnavailable)):
            return False
        if isinstance(exc, S3Error):
            if exc.code in _NOT_FOUND_CODES:
                raise NotFound(f"{self.what}: not found ({exc.code})", code="stored_object_missing") from exc
            detail = f"{exc.code}: {exc.message}"
        elif isinstance(exc, (ServerError, InvalidResponseError, MinioException)):
            detail = str(exc)
        elif isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            reason = getattr(exc, "reason", None) or exc
            detail = f"{type(reason).__name__}: {reason}"
        else:
            return False
        # the address, bucket and key stay in the log: callers (and API clients) only learn that it is down
        logger.warning("object store unavailable: %s at %s: %s", self.what, self.endpoint, detail)
        raise ServiceUnavailable(UNAVAILABLE_MESSAGE, code="objectstore_unavailable") from exc


class _ResponseReader(io.RawIOBase):
    """File-like wrapper over a urllib3 response whose read errors become ServiceUnavailable."""

    def __init__(self, response, store: ObjectStore, name: str):
        self._response, self._store, self._name = response, store, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._store._errors(f"read {self._name}"):
            data = self._response.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()
