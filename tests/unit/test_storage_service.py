"""archiverd.storage.service on the real reactor: a URL is signed while every
storage thread is stuck in a call, and abandoned uploads are looked for in
every region, trouble in one said in one line.

No sleeps: a stuck call is one blocked on an Event that the test sets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from fakes import MemoryStorage
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs

from archiverd.storage.service import StorageService

#: Bounds a stuck call if the test that should release it fails first.
BOUND = 60.0


class StuckStorage(MemoryStorage):  # type: ignore[misc]
    """Storage whose existence checks hang until released, as an endpoint
    that accepts connections and never answers would hold them."""

    def __init__(self) -> None:
        super().__init__(("east", "west"), time.time)
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def exists(self, region: str, key: str) -> bool:
        self.entered.release()
        self.release.wait(BOUND)
        return False


@pytest.fixture
def stuck() -> Iterator[StuckStorage]:
    storage = StuckStorage()
    yield storage
    storage.release.set()  # never leave a thread behind


@pytest_twisted.ensureDeferred
async def test_urls_are_signed_while_every_storage_thread_is_stuck(
    stuck: StuckStorage,
) -> None:
    """Signing asks the storage nothing: it has threads of its own, so a hit
    for an archive known to be stored never waits behind stuck calls."""
    service = StorageService(stuck, reactor, threads=2)
    service.mark_open()
    service.startService()
    try:
        checks = [
            Deferred.fromCoroutine(service.exists("east", f"k{n}")) for n in range(3)
        ]
        for _ in range(2):  # both storage threads are in a call
            assert stuck.entered.acquire(timeout=BOUND)
        url = await service.signed_url("east", "stored", 300)
        assert url.startswith("https://east.s3.example/stored?")
        assert not any(check.called for check in checks)
    finally:
        stuck.release.set()
        await service.stopService()


class HalfBroken(MemoryStorage):  # type: ignore[misc]
    def abort_pending(self, region: str, key: str) -> int:
        if region == "west":
            raise OSError("west is down")
        return 2


@pytest_twisted.ensureDeferred
async def test_abandoned_uploads_are_aborted_in_every_region_trouble_said_in_each() -> (
    None
):
    service = StorageService(
        HalfBroken(("east", "west"), time.time), reactor, threads=2
    )
    service.mark_open()
    service.startService()
    try:
        with capturedLogs() as events:
            await service.abort_abandoned("r-0123456789ab.tar.gz", ("east", "west"))
    finally:
        await service.stopService()
    said = sorted(
        (e["log_format"].split(":")[1].strip(), e["region"])
        for e in events
        if e["log_level"] is LogLevel.warn
    )
    assert said == [
        ("aborted {n} abandoned upload(s) in {region}", "east"),
        ("cannot look for abandoned uploads in {region}", "west"),
    ]
