"""The S3 backend on real S3 servers (moto and radosgw): each object written
once, its sha256 in a tag, and each part's CRC32 computed once for every
region."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any

import pytest
from fixtures import MIB, random_bytes

from archiverd.storage.base import ObjectInfo
from archiverd.storage.s3 import S3Storage

pytestmark = pytest.mark.integration

INFO = ObjectInfo("application/gzip", "a.tar.gz")


class Calls:
    """The S3 operations a storage's clients make, and what botocore did
    with each request's checksum (recorded from botocore's own events)."""

    def __init__(self, storage: S3Storage) -> None:
        self.operations: list[str] = []
        #: (operation, x-amz-checksum-crc32 sent, botocore computed one)
        self.checksums: list[tuple[str, str | None, bool]] = []
        for client in storage._clients.values():
            client.meta.events.register("request-created.s3", self._created)

    def _created(self, request: Any, operation_name: str, **kwargs: Any) -> None:
        self.operations.append(operation_name)
        computed = "request_algorithm" in request.context.get("checksum", {})
        sent = request.headers.get("x-amz-checksum-crc32")
        self.checksums.append((operation_name, sent, computed))


@pytest.fixture
def storage(any_s3_buckets):
    s = S3Storage(
        any_s3_buckets.buckets,
        endpoint_url=any_s3_buckets.endpoint_url,
        addressing_style="path",
    )
    s.open()
    yield s
    s.close()


def _upload(storage: S3Storage, region: str, key: str, parts: list[bytes]) -> str:
    upload_id = storage.start_upload(region, key, INFO)
    tags = []
    for n, part in enumerate(parts, 1):
        checksum = storage.part_checksum(part)
        tags.append(
            (n, storage.upload_part(region, key, upload_id, n, 0, part, checksum))
        )
    whole = b"".join(parts)
    sha256 = hashlib.sha256(whole).hexdigest()
    storage.complete_upload(region, key, upload_id, tags, INFO, sha256, len(whole))
    return sha256


def test_a_multipart_object_is_written_once_with_its_sha256_in_a_tag(
    storage, any_s3_buckets
):
    """Completing makes the object visible and tags it: no CopyObject (which
    wrote every byte again), and the sha256 is what stat() reads back."""
    region = next(iter(storage.regions))
    parts = [random_bytes(5 * MIB, 1), random_bytes(MIB, 2)]
    calls = Calls(storage)

    sha256 = _upload(storage, region, "r-0123456789ab.tar.gz", parts)

    assert calls.operations == [
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "CompleteMultipartUpload",
        "PutObjectTagging",
    ]
    assert any_s3_buckets.get(region, "r-0123456789ab.tar.gz") == b"".join(parts)
    head = any_s3_buckets.head(region, "r-0123456789ab.tar.gz")
    assert head["ContentType"] == "application/gzip"
    assert "sha256" not in head.get("Metadata", {})  # metadata is never rewritten
    assert storage.stat(region, "r-0123456789ab.tar.gz") == sha256


def test_a_single_put_carries_its_sha256_in_metadata_and_tag(storage):
    region = next(iter(storage.regions))
    data = b"small archive"
    sha256 = hashlib.sha256(data).hexdigest()
    calls = Calls(storage)

    storage.put(region, "small.tar.gz", data, INFO, sha256)

    assert calls.operations == ["PutObject"]
    assert storage.stat(region, "small.tar.gz") == sha256
    assert storage.stat(region, "missing.tar.gz") is None


def test_each_part_is_sent_with_the_crc32_handed_in_and_botocore_computes_none(
    storage,
):
    """The part's CRC32 is computed once (part_checksum) and given to every
    region's upload_part; botocore neither computes another nor replaces it."""
    part = random_bytes(5 * MIB, 3)
    checksum = storage.part_checksum(part)
    assert checksum == base64.b64encode(zlib.crc32(part).to_bytes(4, "big")).decode()
    calls = Calls(storage)

    for region in storage.regions:
        upload_id = storage.start_upload(region, "crc.tar.gz", INFO)
        storage.upload_part(region, "crc.tar.gz", upload_id, 1, 0, part, checksum)
        storage.abort_upload(region, "crc.tar.gz", upload_id)

    sent = [
        (sent, computed) for op, sent, computed in calls.checksums if op == "UploadPart"
    ]
    assert sent == [(checksum, False)] * len(storage.regions)


def test_without_a_checksum_setting_parts_go_without_one(any_s3_buckets):
    s = S3Storage(
        any_s3_buckets.buckets,
        endpoint_url=any_s3_buckets.endpoint_url,
        addressing_style="path",
        checksum="none",
    )
    s.open()
    try:
        assert s.part_checksum(b"data") is None
    finally:
        s.close()
