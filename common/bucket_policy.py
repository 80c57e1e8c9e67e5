"""Bucket versioning for the Kubernetes object store (Job medseg-bucket-policy, k8s/base/objectstore).

`python -m common.bucket_policy` makes sure the buckets the platform keeps history of are versioned and the
backup bucket exists:
* the results and models buckets get versioning, so an overwritten or deleted result or model archive can be
  restored (docs/operations.md, "Restore from backup"); old versions expire after `--keep-days` days;
* the PostgreSQL backup bucket (CloudNativePG's WAL archive and base backups) is created; Barman Cloud
  3.16+ no longer creates it itself.
Idempotent: run it after every apply. Settings (endpoint, credentials, CA) come from MEDSEG_S3_*.
"""

from __future__ import annotations

import argparse
import logging
import sys

from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import LifecycleConfig, NoncurrentVersionExpiration, Rule
from minio.versioningconfig import VersioningConfig

from common.errors import ServiceUnavailable
from common.objectstore import ObjectStore
from common.settings import get_settings

logger = logging.getLogger(__name__)

BACKUP_BUCKET = "medseg-pg-backups"
RULE_ID = "medseg-expire-old-versions"


def ensure_bucket(store: ObjectStore, bucket: str) -> None:
    with store._errors(f"ensure bucket {bucket}"):
        if not store.client.bucket_exists(bucket):
            store.client.make_bucket(bucket)
            logger.info("created bucket %s", bucket)


def version(store: ObjectStore, bucket: str, keep_days: int) -> None:
    """Versioning on `bucket`; noncurrent versions expire `keep_days` days after they were replaced."""
    with store._errors(f"versioning of {bucket}"):
        store.client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
        rule = Rule(
            ENABLED,
            rule_filter=Filter(prefix=""),
            rule_id=RULE_ID,
            noncurrent_version_expiration=NoncurrentVersionExpiration(noncurrent_days=keep_days),
        )
        store.client.set_bucket_lifecycle(bucket, LifecycleConfig([rule]))
        status = store.client.get_bucket_versioning(bucket).status
    if status != ENABLED:
        raise ServiceUnavailable(
            f"the object store did not turn versioning on for {bucket} (status {status})"
        )
    logger.info("versioning on %s, old versions kept %d days", bucket, keep_days)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.bucket_policy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--keep-days", type=int, default=30, help="days an overwritten version is kept")
    parser.add_argument("--backup-bucket", default=BACKUP_BUCKET)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    settings = get_settings()
    store = ObjectStore.from_settings(settings)
    try:
        store.ensure_buckets()
        ensure_bucket(store, args.backup_bucket)
        for bucket in (settings.bucket_results, settings.bucket_models):
            version(store, bucket, args.keep_days)
    except ServiceUnavailable as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
