"""When an S3 object was stored, and restarting its expiry: the strategy
:class:`~archiverd.storage.service.StorageService` is given for S3 when
``[storage] expire_after`` is set.

S3's lifecycle rule counts an object's age from its ``LastModified``, which
only a write moves. A refresh copies the object onto itself inside S3 (no
byte leaves the bucket): one HEAD and one CopyObject, priced as a GET and a
PUT request, with no transfer charge and no extra storage on a bucket
without versioning. CopyObject takes objects up to 5 GiB; a larger one is not
refreshed (it is fetched again once it reaches its deadline).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from archiverd.storage.s3 import S3Storage

_MISSING = {"404", "NoSuchKey", "NotFound"}
#: The largest object one CopyObject can copy.
MAX_COPY = 5 * 1024**3


class S3Dates:
    """``stored_at`` and ``refresh`` for the buckets of ``s3``."""

    def __init__(self, s3: S3Storage) -> None:
        self.s3 = s3

    def _head(self, region: str, key: str) -> dict[str, Any] | None:
        client, bucket = self.s3._call(region)
        try:
            head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        return head

    def stored_at(self, region: str, key: str) -> float | None:
        head = self._head(region, key)
        return None if head is None else head["LastModified"].timestamp()

    def refresh(
        self, region: str, key: str, stored_before: float = float("inf")
    ) -> float | None:
        head = self._head(region, key)
        if head is None:
            return None
        stored_at: float = head["LastModified"].timestamp()
        if stored_at > stored_before:
            return stored_at  # refreshed by another daemon
        if head["ContentLength"] > MAX_COPY:
            raise ValueError(f"{key} is over 5 GiB: S3 cannot copy it in one request")
        client, bucket = self.s3._call(region)
        extra = {
            name: head[name]
            for name in ("ContentType", "ContentDisposition")
            if head.get(name)
        }
        copied = client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            MetadataDirective="REPLACE",
            Metadata=head.get("Metadata", {}),
            **extra,
        )
        return float(copied["CopyObjectResult"]["LastModified"].timestamp())
