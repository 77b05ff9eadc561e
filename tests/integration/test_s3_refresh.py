"""Refreshing an archive close to ``[storage] expire_after`` on a real S3 API
(moto over HTTP): the copy onto itself moves ``LastModified`` (what the
lifecycle rule counts from) and keeps the bytes, type, disposition and the
sha256 tag; a missing object is None; an object another daemon refreshed
since is left alone."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from archiverd.storage.base import ObjectInfo
from archiverd.storage.s3 import S3Storage
from archiverd.storage.s3_dates import S3Dates

pytestmark = pytest.mark.integration

REGION = "us-east-1"
KEY = "projects/ash-0123456789ab.tar.gz/testing/mozharness"
DATA = b"an archive's bytes\n" * 100


@pytest.fixture
def storage(s3_buckets) -> Iterator[S3Storage]:
    s = S3Storage(
        s3_buckets.buckets,
        endpoint_url=s3_buckets.endpoint_url,
        addressing_style="path",
    )
    s.open()
    yield s
    s.close()


def test_a_refresh_restarts_the_expiry_and_keeps_the_object(
    storage: S3Storage, s3_buckets
) -> None:
    sha256 = hashlib.sha256(DATA).hexdigest()
    info = ObjectInfo("application/x-gzip", "ash.tar.gz")
    storage.put(REGION, KEY, DATA, info, sha256)
    dates = S3Dates(storage)
    stored = dates.stored_at(REGION, KEY)
    assert stored is not None and abs(stored - time.time()) < 60
    time.sleep(1.1)  # LastModified has a resolution of a second

    refreshed = dates.refresh(REGION, KEY)

    assert refreshed is not None and refreshed >= stored + 1
    assert dates.stored_at(REGION, KEY) == refreshed
    client = s3_buckets.client(REGION)
    bucket = s3_buckets.buckets[REGION]
    got = client.get_object(Bucket=bucket, Key=KEY)
    assert got["Body"].read() == DATA
    assert got["ContentType"] == "application/x-gzip"
    assert "ash.tar.gz" in got["ContentDisposition"]
    assert storage.stat(REGION, KEY) == sha256
    tags = client.get_object_tagging(Bucket=bucket, Key=KEY)["TagSet"]
    assert {"Key": "sha256", "Value": sha256} in tags


def test_a_missing_object_is_none_and_a_newer_one_is_left_alone(
    storage: S3Storage,
) -> None:
    dates = S3Dates(storage)
    assert dates.stored_at(REGION, KEY) is None
    assert dates.refresh(REGION, KEY) is None
    storage.put(REGION, KEY, DATA, ObjectInfo("application/x-gzip", "a"), "0" * 64)
    stored = dates.stored_at(REGION, KEY)
    assert stored is not None
    # Another daemon refreshed it after this one decided to: no second copy.
    assert dates.refresh(REGION, KEY, stored_before=stored - 10) == stored
    assert dates.stored_at(REGION, KEY) == stored
