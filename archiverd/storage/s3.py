"""S3 storage through botocore: a bucket per region.

Credentials come from botocore's normal chain (environment, profile, instance
role). One client per region, created once in :meth:`S3Storage.open` and
shared by the pool's threads (botocore clients are thread-safe).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from twisted.logger import Logger

from archiverd.storage.base import MissingStorage, ObjectInfo
from archiverd.storage.presign import Presigner, frozen

#: The object tag (and, for a single PUT, the metadata key) that holds an
#: archive's sha256.
SHA256_TAG = "sha256"
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"404", "NoSuchBucket", "NotFound"}


class S3Storage:
    """Objects in S3 (or an S3-compatible server at ``endpoint_url``).

    An archive's sha256 is known only once its last byte is read, after its
    multipart upload began (when metadata is fixed), so it is kept in the
    object's ``sha256`` tag (a single PUT also has it in its metadata, as
    ``x-amz-meta-sha256``). Tagging writes none of the object's bytes, where
    copying the object onto itself to change its metadata wrote all of them
    again (see docs/performance.md).
    """

    log = Logger()

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
        self._checksum = checksum
        self._clients: dict[str, Any] = {}
        #: Per region: the presigner that makes botocore's URLs (None: use
        #: botocore), learned at the first URL signed there.
        self._presigners: dict[str, Presigner | None] = {}
        self._credentials: Any = None

    def open(self) -> None:
        session = self._session or botocore.session.get_session()
        self._credentials = session.get_credentials()
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

    def stat(self, region: str, key: str) -> str | None:
        client, bucket = self._call(region)
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        sha256: str = head.get("Metadata", {}).get(SHA256_TAG, "")
        if sha256 or not head.get("TagCount"):
            return sha256
        try:
            tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                return None  # deleted between the two calls
            raise
        return next((t["Value"] for t in tags if t["Key"] == SHA256_TAG), "")

    def signed_url(self, region: str, key: str, expires_in: int) -> str:
        # No request is made: signed with the credentials botocore holds
        # (refreshing role credentials now and then, with short timeouts),
        # by the presigner that makes botocore's own URLs at a tenth of its
        # cost (storage/presign.py), else by botocore.
        credentials = frozen(self._credentials)
        if credentials is not None:
            if region not in self._presigners:
                self._presigners[region] = Presigner.learn(
                    lambda k: self._botocore_url(region, k, expires_in), credentials
                )
                if self._presigners[region] is None:
                    self.log.info(
                        "signing {region}'s URLs with botocore (its URLs there "
                        "are not the ones archiverd's presigner makes)",
                        region=region,
                    )
            presigner = self._presigners[region]
            if presigner is not None:
                return presigner.sign(key, expires_in, credentials)
        return self._botocore_url(region, key, expires_in)

    def _botocore_url(self, region: str, key: str, expires_in: int) -> str:
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
            Metadata={SHA256_TAG: sha256},
            Tagging=urlencode({SHA256_TAG: sha256}),
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

    def part_checksum(self, data: bytes) -> str | None:
        """The part's CRC32 as S3 takes it (base64 of 4 big-endian bytes),
        computed once and sent with every region's copy of the part: botocore
        computes none when it is given one (zlib lets go of the GIL)."""
        if self._checksum != "crc32":
            return None
        crc = zlib.crc32(data)
        return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")

    def upload_part(
        self,
        region: str,
        key: str,
        upload_id: str,
        number: int,
        offset: int,
        data: bytes,
        checksum: str | None = None,
    ) -> str:
        client, bucket = self._call(region)
        extra = {} if checksum is None else {"ChecksumCRC32": checksum}
        response = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            **extra,
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
        # Stored: its sha256 goes in a tag (no byte of it is written again).
        # A tag that cannot be set costs only the hits of a daemon that did
        # not store it: its redirects then carry no sha256.
        try:
            client.put_object_tagging(
                Bucket=bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": SHA256_TAG, "Value": sha256}]},
            )
        except (ClientError, BotoCoreError) as e:
            self.log.warn(
                "{key} is stored in {region}, but not its sha256 tag: {error}",
                key=key,
                region=region,
                error=str(e),
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
