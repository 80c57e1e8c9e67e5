"""The bucket-policy Job's code (common/bucket_policy.py) against a real S3 server (the local object store):
the results and models buckets end up versioned with an expiry of old versions, an overwritten result can be
read back at its earlier version, the backup bucket exists, and a second run changes nothing."""

from __future__ import annotations

import pytest
from minio.commonconfig import ENABLED

from common import bucket_policy
from common.settings import get_settings


@pytest.fixture
def s3_env(monkeypatch, s3_settings):
    for name, value in {
        "MEDSEG_S3_ENDPOINT": s3_settings.s3_endpoint,
        "MEDSEG_S3_ACCESS_KEY": s3_settings.s3_access_key,
        "MEDSEG_S3_SECRET_KEY": s3_settings.s3_secret_key,
        "MEDSEG_STATE_DIR": str(s3_settings.state_dir),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_results_and_models_are_versioned_and_the_backup_bucket_exists(s3_env, objectstore):
    assert bucket_policy.main(["--keep-days", "7", "--backup-bucket", "medseg-pg-backups-test"]) == 0
    client = objectstore.client
    assert client.bucket_exists("medseg-pg-backups-test")
    for bucket in (objectstore.buckets.results, objectstore.buckets.models):
        assert client.get_bucket_versioning(bucket).status == ENABLED
        [rule] = client.get_bucket_lifecycle(bucket).rules
        assert rule.noncurrent_version_expiration.noncurrent_days == 7

    # an overwritten result keeps its earlier version
    results = objectstore.buckets.results
    objectstore.put_bytes(results, "policy-test/mask.png", b"first")
    objectstore.put_bytes(results, "policy-test/mask.png", b"second")
    versions = [
        v
        for v in client.list_objects(results, prefix="policy-test/", include_version=True)
        if not v.is_delete_marker
    ]
    assert len(versions) == 2
    older = next(v for v in versions if str(v.is_latest).lower() != "true")  # minio-py: "true"/"false"
    response = client.get_object(results, "policy-test/mask.png", version_id=older.version_id)
    try:
        assert response.read() == b"first"
    finally:
        response.close()
        response.release_conn()

    assert (
        bucket_policy.main(["--keep-days", "7", "--backup-bucket", "medseg-pg-backups-test"]) == 0
    )  # idempotent
