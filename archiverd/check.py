"""``archiverd check --config FILE``: what an operator runs before starting a
new deployment.

It validates the config, then, for real: in each region it writes a small
probe object, reads it back (from S3 through a signed URL, as clients will),
and deletes it; it asks each upstream host for an answer. One line per
check, ``ok`` or ``FAIL`` with the cause; the exit status is 0 only when
every check passed (1 otherwise, 2 for a usage error).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent

from archiverd.config import Config, ConfigError, load
from archiverd.redact import redact_text
from archiverd.storage.base import ObjectInfo, Storage
from archiverd.storage.files import FileStorage
from archiverd.storage.s3 import S3Storage
from archiverd.transfer.client import UpstreamClient
from archiverd.transfer.sources import Source

#: The probe's key: under a prefix of its own, never an archive's key.
PROBE_PREFIX = "archiverd-check/"
PROBE = b"archiverd check probe\n"
UPSTREAM_TIMEOUT = 10.0


class Report:
    """Prints one line per check and remembers whether any failed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = 0

    def ok(self, what: str, detail: str) -> None:
        print(f"ok    {what}: {detail}", file=self.out, flush=True)

    def fail(self, what: str, error: BaseException | str) -> None:
        self.failed += 1
        text = error if isinstance(error, str) else _describe(error)
        print(f"FAIL  {what}: {redact_text(text)}", file=self.out, flush=True)


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def probe(storage: Storage, region: str) -> str:
    """Write, read back and delete a probe object in ``region`` (blocking:
    run in a thread). Returns what was done; raises on any failure, after
    deleting the probe if it was written."""
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    storage.check(region)
    sha256 = hashlib.sha256(PROBE).hexdigest()
    storage.put(region, key, PROBE, ObjectInfo("text/plain", "probe.txt"), sha256)
    try:
        read = _read(storage, region, key)
        if read != PROBE:
            raise ValueError(f"read back {len(read)} bytes that differ from the probe")
    finally:
        _delete(storage, region, key)
    if storage.exists(region, key):
        raise ValueError("the probe is still there after its deletion")
    return "wrote, read back and deleted a probe object"


def _read(storage: Storage, region: str, key: str) -> bytes:
    if isinstance(storage, FileStorage):
        stored = storage.open_object(region, key)
        if stored is None:
            raise ValueError("the probe written is not there")
        with stored.file:
            return stored.file.read()
    # As clients read it: through a signed URL.
    url = storage.signed_url(region, key, 60)
    with urllib.request.urlopen(url, timeout=UPSTREAM_TIMEOUT) as response:  # noqa: S310 (the configured endpoint)
        body: bytes = response.read(len(PROBE) + 1)
        return body


def _delete(storage: Storage, region: str, key: str) -> None:
    if isinstance(storage, S3Storage):
        client, bucket = storage._call(region)
        client.delete_object(Bucket=bucket, Key=key)
    elif isinstance(storage, FileStorage):
        path = storage._object_path(region, key)
        for name in (path, path.with_suffix(".json")):
            name.unlink(missing_ok=True)


async def run_checks(
    config: Config, reactor: Any, report: Report, storage: Storage | None = None
) -> None:
    """Every storage region and every upstream host, each a line."""
    from archiverd.tap import build_storage

    backend = storage or build_storage(config)
    regions = config.storage.regions
    try:
        await deferToThread(backend.open)
    except Exception as e:  # noqa: BLE001 (reported as a line)
        report.fail(f"storage ({config.storage.backend})", e)
    else:
        for region in regions:

            def write_read_delete(region: str = region) -> Deferred[str]:
                return deferToThread(probe, backend, region)

            await _timed(report, f"storage {region}", write_read_delete)
        backend.close()

    client = UpstreamClient(Agent(reactor))
    for name, source_config in config.sources.items():
        source = Source(source_config, client, reactor)

        async def ask(source: Source = source) -> str:
            await source.check(UPSTREAM_TIMEOUT)
            return "answered"

        await _timed(report, f"upstream {name} ({source.host})", ask)


async def _timed(report: Report, what: str, check: Callable[[], Any]) -> None:
    started = time.monotonic()
    try:
        result = check()
        done = await (
            result if isinstance(result, Deferred) else Deferred.fromCoroutine(result)
        )
    except Exception as e:  # noqa: BLE001 (reported as a line)
        report.fail(what, e)
    else:
        report.ok(what, f"{done} in {time.monotonic() - started:.2f} s")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="archiverd",
        description="Check a deployment: archiverd check --config FILE.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="validate the config, reach every region and upstream host"
    )
    check.add_argument("--config", "-c", required=True, help="TOML config file")
    args = parser.parse_args(argv)
    report = Report(out or sys.stdout)
    try:
        config = load(args.config, os.environ)
    except ConfigError as e:
        report.fail("config", f"config error: {e}")
        return 1
    sources = ", ".join(config.sources)
    report.ok(
        "config",
        f"{args.config}: sources {sources}; {config.storage.backend} storage in "
        + ", ".join(config.storage.regions),
    )

    def checks(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(run_checks(config, reactor, report))

    try:
        react(checks)
    except SystemExit as e:
        if e.code:
            return int(e.code) if isinstance(e.code, int) else 1
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
