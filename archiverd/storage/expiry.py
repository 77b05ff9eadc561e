"""Popular archives never go cold: their expiry is restarted before it comes.

With ``[storage] expire_after`` (the bucket's lifecycle rule, or the file
backend's own), an object is deleted that long after it was stored, however
often it is asked for, and the cache of stored keys stops redirecting to it
a little before (:mod:`archiverd.storage.stored`). An archive asked for within
the last day (:data:`POPULAR`) whose deadline is less than ``window`` away is
refreshed in the background: its stored time becomes now (S3: the object is
copied onto itself, in S3, no byte leaving it; files: its mtime is set), so
no client ever waits for it to be fetched again. Refreshes run as archives
are redirected to and in a pass every ``interval`` seconds, at most
``concurrency`` at a time, each archive once per expiry period (a refresh
moves its deadline a whole period away).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from archiverd.storage.service import StorageService

#: Seconds: an archive asked for within this long is popular.
POPULAR = 86400.0

Slot = tuple[str, str]


def default_window(expire_after: float) -> float:
    """How long before its deadline a popular archive is refreshed: a day
    (a quarter of ``expire_after`` when that is shorter)."""
    return min(POPULAR, expire_after / 4)


class Refresher(Service):
    """Refreshes popular archives close to expiry."""

    log = Logger()

    def __init__(
        self,
        storage: StorageService,
        clock: Any,
        *,
        window: float,
        interval: float = 600.0,
        concurrency: int = 2,
        metrics: Any = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.window = window
        self.interval = interval
        self.metrics = metrics
        self._limit = DeferredSemaphore(concurrency)
        self._running: dict[Slot, Deferred[None]] = {}
        self._loop = LoopingCall(self.pass_once)
        self._loop.clock = clock
        storage.uses.listeners.append(self.used)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("refresher stopped", f)
        )

    def stopService(self) -> Any:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def due(self, region: str, key: str) -> bool:
        """Whether the archive's deadline is less than ``window`` away."""
        stored = self.storage.stored
        stored_at = stored.stored_at(region, key)
        if stored_at is None:
            return False
        return stored.deadline(stored_at) - stored.wall() <= self.window

    def used(self, region: str, key: str) -> None:
        """An archive was redirected to: refresh it if it is due."""
        slot = (region, key)
        if self.running and slot not in self._running and self.due(region, key):
            self._start(region, key)

    def pass_once(self) -> int:
        """Refresh every popular archive that is due; how many were started."""
        uses = self.storage.uses
        uses.forget_older(POPULAR)
        due = [
            slot
            for slot in list(uses.used_within(POPULAR))
            if slot not in self._running and self.due(*slot)
        ]
        for region, key in due:
            self._start(region, key)
        return len(due)

    def _start(self, region: str, key: str) -> None:
        d = self._limit.run(lambda: Deferred.fromCoroutine(self._refresh(region, key)))
        d.addErrback(lambda f: self.log.failure("refreshing {key}", f, key=key))
        d.addBoth(lambda _: self._running.pop((region, key), None))
        if not d.called:
            self._running[(region, key)] = d

    async def _refresh(self, region: str, key: str) -> None:
        if not self.due(region, key):
            return  # refreshed meanwhile
        try:
            stored_at = await self.storage.refresh(region, key)
        except Exception as e:
            self._count("failed")
            self.log.warn(
                "cannot refresh {key} in {region}: {error}",
                key=key,
                region=region,
                error=str(e),
            )
            return
        self._count("gone" if stored_at is None else "ok")
        self.log.info("refreshed {key} in {region}", key=key, region=region)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.refreshes.labels(result).inc()
