"""An S3-compatible sink that discards object bytes and keeps their metadata.

``python -m bench.sink --port 0 [--rate B/s] [--latency S] [--min-part-size N]``

Path-style requests as botocore sends them (signatures are not checked; any
bucket exists as soon as it is named):

=========================  ===================================================
CreateBucket               ``PUT /b``
HeadBucket                 ``HEAD /b``
ListObjectsV2              ``GET /b?list-type=2`` (prefix, max-keys,
                           continuation-token, start-after)
ListMultipartUploads       ``GET /b?uploads`` (prefix; never truncated)
CreateMultipartUpload      ``POST /b/k?uploads``
UploadPart                 ``PUT /b/k?partNumber=&uploadId=``
CompleteMultipartUpload    ``POST /b/k?uploadId=``: the parts listed, ascending,
                           all but the last at least ``--min-part-size``
AbortMultipartUpload       ``DELETE /b/k?uploadId=``
PutObject                  ``PUT /b/k``
CopyObject                 ``PUT /b/k`` with ``x-amz-copy-source`` (at most
                           5 GiB; onto itself only with REPLACE)
PutObjectTagging           ``PUT /b/k?tagging`` (the body is not parsed: the
                           object counts one tag)
GetObjectTagging           ``GET /b/k?tagging``: an empty tag set
HeadObject                 ``HEAD /b/k``
GetObject                  ``GET /b/k``: an empty body, the size in
                           ``x-sink-size``
DeleteObject               ``DELETE /b/k``
=========================  ===================================================

Bodies are read in 1 MiB pieces into one buffer per connection (paced by
``--rate`` per connection) and dropped; ``Content-Length``, ``Transfer-Encoding:
chunked`` and ``aws-chunked`` framings are understood. An object keeps its
size, ETag, Content-Type, Content-Disposition (and the other standard content
headers) and its ``x-amz-meta-*`` headers.

``GET /__stats__`` answers JSON ``{"buckets": {name: {counters}}, "requests"}``;
``GET`` or ``POST /__reset__`` forgets everything.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

from bench._serve import MIB, Handler, main

READ_SIZE = 1 * MIB
MAX_LINE = 64 * 1024
MAX_COPY_SIZE = 5 * 1024**3
XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
#: Request headers an object keeps (besides ``x-amz-meta-*``).
CONTENT_HEADERS = (
    "content-type",
    "content-disposition",
    "content-encoding",
    "content-language",
    "cache-control",
    "expires",
)
COUNTERS = (
    "bytes_received",
    "parts",
    "completed",
    "puts",
    "copies",
    "aborted",
    "tagged",
)


class S3Error(Exception):
    """An S3 error response: status, code, message."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code


@dataclass
class Obj:
    """A stored object: everything but its bytes."""

    size: int
    etag: str
    headers: dict[str, str]
    modified: float = field(default_factory=time.time)


@dataclass
class Upload:
    """A multipart upload in progress: part number -> (size, ETag)."""

    key: str
    headers: dict[str, str]
    parts: dict[int, tuple[int, str]] = field(default_factory=dict)
    initiated: float = field(default_factory=time.time)


@dataclass
class Bucket:
    """Objects, pending uploads and counters."""

    objects: dict[str, Obj] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    head: int = 0

    def stats(self) -> dict[str, int]:
        return {
            **self.counts,
            "pending": len(self.uploads),
            "objects": len(self.objects),
            "head": self.head,
        }


class State:
    """Every bucket, behind one lock (held only for dictionary work)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, Bucket] = {}
        self.requests = 0

    def reset(self) -> None:
        with self.lock:
            self.buckets.clear()
            self.requests = 0

    def bucket(self, name: str) -> Bucket:
        """The bucket called ``name``, made if need be (call with the lock)."""
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = Bucket()
        return bucket

    def as_json(self) -> bytes:
        with self.lock:
            data = {
                "buckets": {n: b.stats() for n, b in self.buckets.items()},
                "requests": self.requests,
            }
        return json.dumps(data).encode()


STATE = State()


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def kept_headers(headers: Any) -> dict[str, str]:
    """The content and ``x-amz-meta-*`` headers an object keeps."""
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in CONTENT_HEADERS or lower.startswith("x-amz-meta-"):
            kept[lower] = value
    kept.setdefault("content-type", "binary/octet-stream")
    return kept


def xml(root: str, body: str, namespace: str = XMLNS) -> bytes:
    """An XML document; S3's errors are the ones without a namespace."""
    attribute = f' xmlns="{namespace}"' if namespace else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{attribute}>{body}</{root}>'
    ).encode()


def tag(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def new_etag(*parts: object) -> str:
    return f'"{hashlib.md5(repr(parts).encode()).hexdigest()}"'


class SinkHandler(Handler):
    """Routes each request to the S3 operation it is, against :data:`STATE`."""

    server_version = "bench-sink"

    def setup(self) -> None:
        super().setup()
        self._buffer = memoryview(bytearray(READ_SIZE))

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET  # noqa: N815

    # Plumbing: routing, bodies, responses.

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/__stats__", "/__reset__"):
            self._read_body(None)
            if url.path == "/__reset__":
                STATE.reset()
            self.send_bytes(200, STATE.as_json(), "application/json")
            return
        bucket, _, key = url.path.lstrip("/").partition("/")
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        with STATE.lock:
            STATE.requests += 1
        operation = self._operation(bool(key), query)
        # Only CompleteMultipartUpload's body (a list of parts) is kept.
        kept: list[bytes] | None = [] if operation == self.complete else None
        try:
            size = self._read_body(kept)
            self.body = b"".join(kept or ())
            if not bucket or operation is None:
                raise S3Error(501, "NotImplemented", f"{self.command} {self.path}")
            response = operation(unquote(bucket), unquote(key), query, size)
        except S3Error as e:
            response = (e.status, {}, self._error(e))
        except ValueError as e:
            self.close_connection = True
            response = (400, {}, self._error(S3Error(400, "InvalidRequest", str(e))))
        if self.server.options.latency:
            time.sleep(self.server.options.latency)
        self._respond(*response)

    def _operation(self, has_key: bool, query: dict[str, str]) -> Any:
        method = self.command
        if not has_key:
            if method == "GET":
                if "uploads" in query:
                    return self.list_multipart_uploads
                return self.list_objects
            return {"PUT": self.create_bucket, "HEAD": self.head_bucket}.get(method)
        if "tagging" in query:
            return {"PUT": self.put_tagging, "GET": self.get_tagging}.get(method)
        if method == "PUT":
            if "uploadId" in query:
                return self.upload_part
            if "x-amz-copy-source" in self.headers:
                return self.copy_object
            return self.put_object
        if method == "POST":
            if "uploads" in query:
                return self.create_multipart_upload
            if "uploadId" in query:
                return self.complete
            return None
        if method == "DELETE":
            if "uploadId" in query:
                return self.abort_multipart_upload
            return self.delete_object
        return {"HEAD": self.head_object, "GET": self.get_object}.get(method)

    def _read_body(self, kept: list[bytes] | None) -> int:
        """Read the request body; its size (decoded, for chunked framings).

        The bytes are dropped, or appended to ``kept`` when it is a list.
        """
        encoding = self.headers.get("Content-Encoding", "").lower()
        if (
            "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            or "aws-chunked" in encoding
        ):
            return self._discard_chunked(kept)
        length = int(self.headers.get("Content-Length") or 0)
        self._discard(length, kept)
        return length

    def _discard(self, n: int, kept: list[bytes] | None) -> None:
        left = n
        piece = self.bucket.chunk(READ_SIZE)
        while left:
            got = self.rfile.readinto(self._buffer[: min(left, piece)])
            if not got:
                raise ConnectionResetError("request body cut short")
            self.bucket.take(got)
            if kept is not None:
                kept.append(bytes(self._buffer[:got]))
            left -= got

    def _discard_chunked(self, kept: list[bytes] | None) -> int:
        """Drop a chunked (or aws-chunked) body and its trailers."""
        total = 0
        while True:
            line = self.rfile.readline(MAX_LINE)
            if not line:
                raise ConnectionResetError("chunked body cut short")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            self._discard(size, kept)
            total += size
            self.rfile.readline(MAX_LINE)
        while self.rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass
        return total

    def _respond(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/xml")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, error: S3Error) -> bytes:
        if self.command == "HEAD":
            return b""
        return xml("Error", tag("Code", error.code) + tag("Message", error), "")

    # Buckets.

    def create_bucket(self, bucket: str, key: str, query: Any, size: int) -> Any:
        with STATE.lock:
            STATE.bucket(bucket)
        return 200, {"Location": f"/{bucket}"}, b""

    def head_bucket(self, bucket: str, key: str, query: Any, size: int) -> Any:
        with STATE.lock:
            STATE.bucket(bucket)
        return 200, {}, b""

    def list_objects(self, bucket: str, key: str, query: Any, size: int) -> Any:
        prefix = query.get("prefix", "")
        after = query.get("continuation-token") or query.get("start-after", "")
        limit = int(query.get("max-keys", 1000))
        with STATE.lock:
            objects = STATE.bucket(bucket).objects
            keys = sorted(k for k in objects if k.startswith(prefix) and k > after)
            listed = [(k, objects[k]) for k in keys[:limit]]
        truncated = len(keys) > limit
        body = tag("Name", bucket) + tag("Prefix", prefix) + tag("MaxKeys", limit)
        body += tag("KeyCount", len(listed))
        body += tag("IsTruncated", str(truncated).lower())
        if truncated:
            body += tag("NextContinuationToken", listed[-1][0])
        for k, obj in listed:
            body += "<Contents>%s</Contents>" % (
                tag("Key", k)
                + tag("LastModified", iso(obj.modified))
                + tag("ETag", obj.etag)
                + tag("Size", obj.size)
                + tag("StorageClass", "STANDARD")
            )
        return 200, {}, xml("ListBucketResult", body)

    def list_multipart_uploads(
        self, bucket: str, key: str, query: Any, size: int
    ) -> Any:
        prefix = query.get("prefix", "")
        with STATE.lock:
            uploads = sorted(
                (u.key, upload_id, u.initiated)
                for upload_id, u in STATE.bucket(bucket).uploads.items()
                if u.key.startswith(prefix)
            )
        body = tag("Bucket", bucket) + "<KeyMarker/><UploadIdMarker/>"
        body += tag("Prefix", prefix) + tag("MaxUploads", 1000)
        body += tag("IsTruncated", "false")
        for k, upload_id, initiated in uploads:
            body += "<Upload>%s</Upload>" % (
                tag("Key", k)
                + tag("UploadId", upload_id)
                + tag("Initiated", iso(initiated))
                + tag("StorageClass", "STANDARD")
            )
        return 200, {}, xml("ListMultipartUploadsResult", body)

    # Multipart uploads.

    def create_multipart_upload(
        self, bucket: str, key: str, query: Any, size: int
    ) -> Any:
        upload_id = uuid.uuid4().hex
        with STATE.lock:
            STATE.bucket(bucket).uploads[upload_id] = Upload(
                key, kept_headers(self.headers)
            )
        body = tag("Bucket", bucket) + tag("Key", key) + tag("UploadId", upload_id)
        return 200, {}, xml("InitiateMultipartUploadResult", body)

    def _upload(self, b: Bucket, key: str, query: Any) -> Upload:
        upload = b.uploads.get(query["uploadId"])
        if upload is None or upload.key != key:
            raise S3Error(404, "NoSuchUpload", "The specified upload does not exist.")
        return upload

    def upload_part(self, bucket: str, key: str, query: Any, size: int) -> Any:
        number = int(query.get("partNumber", 0))
        if not 1 <= number <= 10000:
            raise S3Error(400, "InvalidArgument", "partNumber must be 1 to 10000")
        etag = new_etag(query["uploadId"], number, size, time.time())
        with STATE.lock:
            b = STATE.bucket(bucket)
            self._upload(b, key, query).parts[number] = (size, etag)
            b.counts["bytes_received"] += size
            b.counts["parts"] += 1
        return 200, {"ETag": etag}, b""

    def complete(self, bucket: str, key: str, query: Any, size: int) -> Any:
        """CompleteMultipartUpload."""
        listed = self._listed_parts()
        numbers = [n for n, _ in listed]
        if not listed or numbers != sorted(set(numbers)):
            raise S3Error(400, "InvalidPartOrder", "parts must be listed ascending")
        minimum = self.server.options.min_part_size
        with STATE.lock:
            b = STATE.bucket(bucket)
            upload = self._upload(b, key, query)
            sizes = []
            for number, etag in listed:
                part = upload.parts.get(number)
                if part is None or part[1].strip('"') != etag.strip('"'):
                    raise S3Error(400, "InvalidPart", f"part {number} not uploaded")
                sizes.append(part[0])
            if any(s < minimum for s in sizes[:-1]):
                raise S3Error(400, "EntityTooSmall", f"parts below {minimum} bytes")
            etag = new_etag(*listed)[:-1] + f'-{len(listed)}"'
            b.objects[key] = Obj(sum(sizes), etag, upload.headers)
            del b.uploads[query["uploadId"]]
            b.counts["completed"] += 1
        body = tag("Location", f"/{bucket}/{key}") + tag("Bucket", bucket)
        body += tag("Key", key) + tag("ETag", etag)
        return 200, {}, xml("CompleteMultipartUploadResult", body)

    def _listed_parts(self) -> list[tuple[int, str]]:
        """(number, etag) of each part a CompleteMultipartUpload body lists."""
        try:
            root = ET.fromstring(self.body)
        except ET.ParseError:
            raise S3Error(400, "MalformedXML", "unreadable part list") from None
        parts = []
        for element in root.iter():
            if element.tag.rpartition("}")[2] != "Part":
                continue
            fields = {c.tag.rpartition("}")[2]: (c.text or "") for c in element}
            parts.append((int(fields.get("PartNumber", 0)), fields.get("ETag", "")))
        return parts

    def abort_multipart_upload(
        self, bucket: str, key: str, query: Any, size: int
    ) -> Any:
        with STATE.lock:
            b = STATE.bucket(bucket)
            self._upload(b, key, query)
            del b.uploads[query["uploadId"]]
            b.counts["aborted"] += 1
        return 204, {}, b""

    # Objects.

    def put_object(self, bucket: str, key: str, query: Any, size: int) -> Any:
        etag = new_etag(bucket, key, size, time.time())
        with STATE.lock:
            b = STATE.bucket(bucket)
            b.objects[key] = Obj(size, etag, kept_headers(self.headers))
            b.counts["bytes_received"] += size
            b.counts["puts"] += 1
        return 200, {"ETag": etag}, b""

    def copy_object(self, bucket: str, key: str, query: Any, size: int) -> Any:
        source = unquote(self.headers["x-amz-copy-source"].partition("?")[0])
        source_bucket, _, source_key = source.lstrip("/").partition("/")
        replace = self.headers.get("x-amz-metadata-directive", "COPY") == "REPLACE"
        with STATE.lock:
            original = STATE.bucket(source_bucket).objects.get(source_key)
            if original is None:
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
            if original.size > MAX_COPY_SIZE:
                raise S3Error(400, "InvalidRequest", "copy source larger than 5 GiB")
            if (source_bucket, source_key) == (bucket, key) and not replace:
                raise S3Error(400, "InvalidRequest", "copy onto itself needs REPLACE")
            headers = kept_headers(self.headers) if replace else original.headers
            obj = Obj(original.size, original.etag, headers)
            b = STATE.bucket(bucket)
            b.objects[key] = obj
            b.counts["copies"] += 1
        body = tag("LastModified", iso(obj.modified)) + tag("ETag", obj.etag)
        return 200, {}, xml("CopyObjectResult", body)

    def put_tagging(self, bucket: str, key: str, query: Any, size: int) -> Any:
        with STATE.lock:
            b = STATE.bucket(bucket)
            self._object(bucket, key)
            b.counts["tagged"] += 1
        return 200, {}, b""

    def get_tagging(self, bucket: str, key: str, query: Any, size: int) -> Any:
        with STATE.lock:
            self._object(bucket, key)
        return 200, {}, xml("Tagging", "<TagSet></TagSet>")

    def _object(self, bucket: str, key: str) -> Obj:
        """The object (call with the lock); a 404 when there is none."""
        obj = STATE.bucket(bucket).objects.get(key)
        if obj is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        return obj

    def _object_headers(self, obj: Obj) -> dict[str, str]:
        return {
            **obj.headers,
            "ETag": obj.etag,
            "Last-Modified": formatdate(obj.modified, usegmt=True),
            "Accept-Ranges": "bytes",
        }

    def head_object(self, bucket: str, key: str, query: Any, size: int) -> Any:
        with STATE.lock:
            STATE.bucket(bucket).head += 1
            obj = self._object(bucket, key)
        headers = self._object_headers(obj)
        return 200, {**headers, "Content-Length": str(obj.size)}, b""

    def get_object(self, bucket: str, key: str, query: Any, size: int) -> Any:
        with STATE.lock:
            obj = self._object(bucket, key)
        headers = self._object_headers(obj)
        headers.update({"Content-Length": "0", "x-sink-size": str(obj.size)})
        return 200, headers, b""

    def delete_object(self, bucket: str, key: str, query: Any, size: int) -> Any:
        with STATE.lock:
            STATE.bucket(bucket).objects.pop(key, None)
        return 204, {}, b""


def _options(p: Any) -> None:
    p.add_argument(
        "--min-part-size",
        type=int,
        default=5 * MIB,
        metavar="BYTES",
        help="CompleteMultipartUpload's minimum for all parts but the last (S3's)",
    )


if __name__ == "__main__":
    main(SinkHandler, "S3-compatible sink that discards object bytes.", extra=_options)
