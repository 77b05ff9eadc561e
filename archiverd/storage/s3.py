"""S3 storage through botocore: a bucket per region.

Credentials come from botocore's normal chain (environment, profile, instance
role). One client per region, created once in :meth:`S3Storage.open` and
shared by the pool's threads (botocore clients are thread-safe).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from archiverd.storage.base import MissingStorage, ObjectInfo

#: CopyObject's limit; larger objects keep their sha256 out of the metadata.
MAX_COPY_SIZE = 5 * 1024**3
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"404", "NoSuchBucket", "NotFound"}


class S3Storage:
    """Objects in S3 (or an S3-compatible server at ``endpoint_url``)."""

    def __init__(
        self,
        buckets: Mapping[str, str],
        endpoint_url: str | None = None,
        addressing_style: str | None = None,
        max_attempts: int = 5,
        max_connections: int = 16,
        session: Any = None,
        checksum: str = "crc32",
        sign_payload: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.buckets = dict(buckets)
        self.regions = tuple(buckets)
        self._endpoint_url = endpoint_url
        self._session = session
        # Without a checksum header botocore signs every body's sha256 into
        # the request, a full extra hash per region; a CRC32 (3.5 GB/s here,
        # against 1.5 for sha256) lets S3 check each request's bytes instead.
        s3_options: dict[str, Any] = {"payload_signing_enabled": sign_payload}
        if addressing_style:
            s3_options["addressing_style"] = addressing_style
        # Every call has a deadline: an endpoint that accepts connections and
        # never answers holds a thread for at most max_attempts times these
        # (botocore's defaults, 60 s each, held the pool for minutes).
        self._boto_config = BotoConfig(
            signature_version="s3v4",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=max_connections,
            s3=s3_options,
            request_checksum_calculation=(
                "when_supported" if checksum == "crc32" else "when_required"
            ),
            response_checksum_validation="when_required",
        )
        self._clients: dict[str, Any] = {}

    def open(self) -> None:
        session = self._session or botocore.session.get_session()
        for region in self.regions:
            self._clients[region] = session.create_client(
                "s3",
                region_name=region,
                endpoint_url=self._endpoint_url,
                config=self._boto_config,
            )

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _call(self, region: str) -> tuple[Any, str]:
        return self._clients[region], self.buckets[region]

    def check(self, region: str) -> None:
        client, bucket = self._call(region)
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _NO_BUCKET:
                raise MissingStorage(
                    f"storage.s3.buckets: bucket {bucket!r} ({region}) does not exist"
                ) from None
            raise

    def exists(self, region: str, key: str) -> bool:
        client, bucket = self._call(region)
        try:
            client.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    def signed_url(self, region: str, key: str, expires_in: int) -> str:
        # No request is made: botocore signs with the credentials it holds
        # (refreshing role credentials now and then, with short timeouts).
        client, bucket = self._call(region)
        url: str = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
        )
        return url

    def put(
        self, region: str, key: str, data: bytes, info: ObjectInfo, sha256: str
    ) -> None:
        client, bucket = self._call(region)
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=info.content_type,
            ContentDisposition=info.content_disposition,
            Metadata={"sha256": sha256},
        )

    def start_upload(self, region: str, key: str, info: ObjectInfo) -> str:
        client, bucket = self._call(region)
        response = client.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            ContentType=info.content_type,
            ContentDisposition=info.content_disposition,
        )
        upload_id: str = response["UploadId"]
        return upload_id

    def upload_part(
        self,
        region: str,
        key: str,
        upload_id: str,
        number: int,
        offset: int,
        data: bytes,
    ) -> str:
        client, bucket = self._call(region)
        response = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        etag: str = response["ETag"]
        return etag

    def complete_upload(
        self,
        region: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        info: ObjectInfo,
        sha256: str,
        size: int,
    ) -> None:
        client, bucket = self._call(region)
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]
            },
        )
        if size <= MAX_COPY_SIZE:
            # Metadata is fixed when an upload starts, before the sha256 is
            # known: copy the object onto itself (server-side) to add it.
            client.copy_object(
                Bucket=bucket,
                Key=key,
                CopySource={"Bucket": bucket, "Key": key},
                MetadataDirective="REPLACE",
                ContentType=info.content_type,
                ContentDisposition=info.content_disposition,
                Metadata={"sha256": sha256},
            )

    def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        client, bucket = self._call(region)
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    def abort_pending(self, region: str, key: str) -> int:
        client, bucket = self._call(region)
        aborted = 0
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for upload in page.get("Uploads", ()):
                if upload["Key"] == key:  # not a longer key with this prefix
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=key, UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted
