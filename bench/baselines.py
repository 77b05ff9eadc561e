"""What archiverd is measured against, each run as its own process.

``python -m bench.baselines read URL``
    Upstream alone: read the URL to nowhere with treq (unbuffered, discarded).
``python -m bench.baselines upload --endpoint E --regions N --size S``
    Upload alone: multipart-upload S bytes from memory to N regions in
    parallel, with archiverd's own S3 settings, part size and parts in flight.
``python -m bench.baselines sequential URL --endpoint E --regions N``
    The old design: download to a temporary file, then upload it to each
    region in turn.

Each prints one JSON line: ``{"seconds": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from archiverd.storage.base import ObjectInfo
from archiverd.storage.s3 import S3Storage
from bench.upstream import BLOCK

MIB = 1024 * 1024
INFO = ObjectInfo("application/gzip", "bench.tar.gz")


def read(url: str) -> float:
    """Seconds to read the whole body with treq, keeping none of it."""
    import treq
    from twisted.internet import defer, protocol, task
    from twisted.web.client import ResponseDone

    class Discard(protocol.Protocol):
        def __init__(self) -> None:
            self.done: defer.Deferred[None] = defer.Deferred()

        def dataReceived(self, data: bytes) -> None:
            pass

        def connectionLost(self, reason: Any = None) -> None:
            if reason is not None and not reason.check(ResponseDone):
                self.done.errback(reason)
            else:
                self.done.callback(None)

    seconds: list[float] = []

    async def go(reactor: Any) -> None:
        started = time.monotonic()
        response = await treq.get(url, unbuffered=True)
        assert response.code == 200, response.code
        discard = Discard()
        response.deliverBody(discard)
        await discard.done
        seconds.append(time.monotonic() - started)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    except SystemExit as e:  # react always exits; its code says how it went
        if e.code:
            raise
    return seconds[0]


def _storage(endpoint: str, regions: int, threads: int) -> S3Storage:
    buckets = {f"region-{i}": f"baseline-{i}" for i in range(regions)}
    storage = S3Storage(
        buckets,
        endpoint_url=endpoint,
        addressing_style="path",
        max_connections=threads,
    )
    storage.open()
    return storage


def _multipart(
    storage: S3Storage, region: str, parts: list[Any], pool: ThreadPoolExecutor
) -> None:
    """One region's multipart upload, its parts ``in_flight`` at a time."""
    key = f"baseline/{uuid.uuid4().hex}.tar.gz"
    upload_id = storage.start_upload(region, key, INFO)
    futures = [
        pool.submit(storage.upload_part, region, key, upload_id, n, 0, part)
        for n, part in enumerate(parts, 1)
    ]
    etags = [(n, f.result()) for n, f in enumerate(futures, 1)]
    storage.complete_upload(region, key, upload_id, etags, INFO, "0" * 64, 0)


def upload(
    endpoint: str, regions: int, size: int, part_size: int, in_flight: int
) -> float:
    """Seconds to upload ``size`` bytes from memory to every region at once."""
    part = (BLOCK * (part_size // len(BLOCK) + 1))[:part_size]
    count, last = divmod(size, part_size)
    parts: list[Any] = [part] * count + ([part[:last]] if last else [])
    storage = _storage(endpoint, regions, regions * in_flight)
    pools = [ThreadPoolExecutor(in_flight) for _ in storage.regions]
    started = time.monotonic()
    with ThreadPoolExecutor(regions) as outer:
        for f in [
            outer.submit(_multipart, storage, region, parts, pool)
            for region, pool in zip(storage.regions, pools)
        ]:
            f.result()
    return time.monotonic() - started


def sequential(
    url: str, endpoint: str, regions: int, part_size: int, in_flight: int
) -> float:
    """Seconds for the old design: a temporary file, then region after region."""
    import urllib.request

    storage = _storage(endpoint, regions, in_flight)
    started = time.monotonic()
    with tempfile.TemporaryFile() as spool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url) as response:
            while chunk := response.read(MIB):
                spool.write(chunk)
        for region in storage.regions:
            spool.seek(0)
            with ThreadPoolExecutor(in_flight) as pool:
                parts = iter(lambda: spool.read(part_size), b"")
                _multipart(storage, region, list(parts), pool)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("read")
    p.add_argument("url")
    for name in ("upload", "sequential"):
        p = sub.add_parser(name)
        if name == "sequential":
            p.add_argument("url")
        p.add_argument("--endpoint", required=True)
        p.add_argument("--regions", type=int, required=True)
        p.add_argument("--size", type=int, default=0)
        p.add_argument("--part-size", type=int, default=8 * MIB)
        p.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    if args.what == "read":
        seconds = read(args.url)
    elif args.what == "upload":
        seconds = upload(
            args.endpoint, args.regions, args.size, args.part_size, args.in_flight
        )
    else:
        seconds = sequential(
            args.url, args.endpoint, args.regions, args.part_size, args.in_flight
        )
    print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
