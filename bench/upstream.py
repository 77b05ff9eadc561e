"""A fast static hgweb-like upstream: archives of any size, made of one block.

``python -m bench.upstream --port 0 [--rate B/s] [--latency S] [--chunked]``

``GET /{repo}/archive/{rev}.{suffix}/{subdir}`` answers 200 with
:func:`body_size` bytes: the number in a ``size-<N>`` segment of the repo
path (``/bench/size-268435456/archive/0123456789ab.tar.gz/``), else 1 MiB.
The body is :data:`BLOCK` repeated and cut to that size, so a client checks
it against :func:`expected_body_sha256`. Everything after ``/archive/`` is
taken leniently; the headers are hgweb's (Content-Type by suffix, an
attachment Content-Disposition).

``GET /{repo}/json-rev/{rev}`` answers ``{"node": <40 hex digits>}``, derived
from the repo and rev, for archiverd's symbolic rev resolution.

``GET /__stats__`` answers JSON ``{"requests", "bytes_sent", "paths"}``
(archive GETs only; the last 100 paths); ``GET`` or ``POST /__reset__``
zeroes them. Anything else is a 404.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from bench._serve import MIB, Handler, main

#: The bytes every body repeats.
BLOCK_SIZE = 4 * MIB
BLOCK = random.Random(1).randbytes(BLOCK_SIZE)
#: Two blocks back to back: any BLOCK_SIZE window is one contiguous slice.
_DOUBLE = memoryview(BLOCK * 2)
#: Bytes handed to one sendall() when unthrottled.
WRITE_SIZE = 1 * MIB
DEFAULT_SIZE = 1 * MIB

_SIZE_RE = re.compile(r"^size-(\d+)$")
_TYPES = {
    "tar.gz": "application/x-gzip",
    "tar.bz2": "application/x-bzip2",
    "tar.zst": "application/zstd",
    "zip": "application/zip",
}


def body_size(repo: str) -> int:
    """The body size a repo path asks for: its ``size-<N>`` segment, or 1 MiB."""
    for segment in repo.split("/"):
        match = _SIZE_RE.match(segment)
        if match:
            return int(match.group(1))
    return DEFAULT_SIZE


def expected_body_sha256(n: int) -> str:
    """The sha256 (hex) of an ``n``-byte body, without building the body."""
    digest = hashlib.sha256()
    for _ in range(n // BLOCK_SIZE):
        digest.update(BLOCK)
    digest.update(BLOCK[: n % BLOCK_SIZE])
    return digest.hexdigest()


class Stats:
    """Archive GETs served and body bytes sent; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.bytes_sent = 0
            self.paths: deque[str] = deque(maxlen=100)

    def request(self, path: str) -> None:
        with self._lock:
            self.requests += 1
            self.paths.append(path)

    def sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def as_json(self) -> bytes:
        with self._lock:
            data = {
                "requests": self.requests,
                "bytes_sent": self.bytes_sent,
                "paths": list(self.paths),
            }
        return json.dumps(data).encode()


STATS = Stats()


class UpstreamHandler(Handler):
    """Archives, json-rev, stats; everything else is a 404."""

    server_version = "bench-upstream"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/__stats__":
            self.send_bytes(200, STATS.as_json(), "application/json")
            return
        if path == "/__reset__":
            self._reset()
            return
        repo, sep, rest = path.partition("/archive/")
        if sep and repo.strip("/"):
            self._archive(path, unquote(repo).strip("/"), unquote(rest))
            return
        repo, sep, rev = path.partition("/json-rev/")
        if sep and repo.strip("/") and rev:
            node = hashlib.sha1(f"{repo}\0{rev}".encode()).hexdigest()
            body = json.dumps({"node": node}).encode()
            self.send_bytes(200, body, "application/json")
            return
        self.send_bytes(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if urlsplit(self.path).path == "/__reset__":
            self._reset()
        else:
            self.send_bytes(404, b"not found\n", "text/plain")

    def _reset(self) -> None:
        STATS.reset()
        self.send_bytes(200, b"{}", "application/json")

    def _archive(self, path: str, repo: str, rest: str) -> None:
        STATS.request(path)
        size = body_size(repo)
        options: Any = self.server.options
        if options.latency:
            time.sleep(options.latency)
        archive = rest.split("/", 1)[0]
        rev, _, suffix = archive.partition(".")
        name = f"{repo.rsplit('/', 1)[-1]}-{rev}.{suffix}" if suffix else archive
        self.send_response(200)
        self.send_header("Content-Type", _TYPES.get(suffix, "application/octet-stream"))
        self.send_header("Content-Disposition", f"attachment; filename={name}")
        if options.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        self._send_body(size, options.chunked)

    def _send_body(self, size: int, chunked: bool) -> None:
        sock = self.connection
        write = self.bucket.chunk(WRITE_SIZE)
        sent = 0
        while sent < size:
            n = min(size - sent, write)
            self.bucket.take(n)
            offset = sent % BLOCK_SIZE
            data = _DOUBLE[offset : offset + n]
            if chunked:
                sock.sendall(b"%x\r\n" % n)
                sock.sendall(data)
                sock.sendall(b"\r\n")
            else:
                sock.sendall(data)
            sent += n
            STATS.sent(n)
        if chunked:
            sock.sendall(b"0\r\n\r\n")


def _options(p: Any) -> None:
    p.add_argument(
        "--chunked",
        action="store_true",
        help="send bodies with Transfer-Encoding: chunked (as hgweb does)",
    )


if __name__ == "__main__":
    main(UpstreamHandler, "Fast static hgweb-like upstream.", extra=_options)
