"""Runs the file backend's retention (:mod:`archiverd.storage.retention`).

Every second (``tick``), on the reactor thread and costing it nothing but
scheduling: the eviction journal is read (on the storage pool) and the keys
it names are forgotten from the cache of stored keys, so that no daemon
sharing the root redirects to them; every ``flush`` seconds the uses of the
archives redirected to are written out; a pass runs when ``interval`` has
passed since the last, when the bytes put in place since would take the
root past ``max_bytes``, or at once when a write found the disk full.
Passes never overlap.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from archiverd.storage import retention
from archiverd.storage.files import FileStorage
from archiverd.storage.service import StorageService


class Sweeper(Service):
    """Keeps a file root within its limits, and every daemon sharing it
    told of what is evicted."""

    log = Logger()

    def __init__(
        self,
        files: FileStorage,
        storage: StorageService,
        clock: Any,
        *,
        max_bytes: str = "",
        max_age: float = 0.0,
        expire_after: float = 0.0,
        min_idle: float = 300.0,
        interval: float = 60.0,
        tick: float = 1.0,
        flush: float = 5.0,
        metrics: Any = None,
    ) -> None:
        self.files = files
        self.storage = storage
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.expire_after = expire_after
        self.min_idle = min_idle
        self.interval = interval
        self.tick = tick
        self.flush = flush
        #: Between saying an eviction and doing it: every daemon has read
        #: the journal (two ticks) and written out its uses (a flush).
        self.grace = 2 * tick + flush + 1
        self.metrics = metrics
        #: The last pass's look: bytes held per region, the limit in bytes.
        self.last: retention.Plan | None = None
        self._estimate = 0
        self._seen: set[str] = set()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._passing: Deferred[None] | None = None
        self._reading = False
        self._last_pass = -float("inf")
        self._last_flush = clock.seconds()

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.tick, now=True).addErrback(
            lambda f: self.log.failure("retention stopped", f)
        )

    def stopService(self) -> Any:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._passing

    def _tick(self) -> None:
        now = self.clock.seconds()
        if not self._reading:
            self._reading = True
            self._background(self._read_journal())
        if self._passing is None and self._pass_due(now):
            self._passing = self._background(self._pass())
        elif now - self._last_flush >= self.flush and self._passing is None:
            self._last_flush = now
            self._background(self._save_uses())

    def _pass_due(self, now: float) -> bool:
        if self.files.full.is_set() or now - self._last_pass >= self.interval:
            return True
        self._estimate += self.files.take_published()
        limit = self.last.limit if self.last is not None else None
        return limit is not None and self._estimate > limit

    def _background(self, work: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(work)
        d.addErrback(lambda f: self.log.failure("retention", f))
        return d

    async def _read_journal(self) -> None:
        try:
            found = await self.storage.call(
                retention.read_journal, self.files.root, self._seen
            )
        finally:
            self._reading = False
        for region, key in found:
            if region in self.files.regions:
                self.storage.forget(region, key, "eviction", bar=self.grace + self.tick)

    async def _save_uses(self) -> None:
        uses = self.storage.uses.take_unsaved()
        if uses:
            await self.storage.call(retention.save_uses, self.files, uses)

    def _look(self, now: float) -> retention.Plan:
        return retention.plan(
            self.files,
            now,
            max_bytes=self.max_bytes,
            max_age=self.max_age,
            expire_after=self.expire_after,
            min_idle=self.min_idle,
        )

    async def pass_once(self) -> list[retention.Held]:
        """One pass: look, say, wait the grace period, evict. The evicted."""
        self.files.full.clear()
        self._last_pass = self.clock.seconds()
        await self._save_uses()
        plan = await self.storage.call(self._look, self.storage.stored.wall())
        self.last = plan
        self._estimate = plan.total
        if not plan.victims:
            return []
        for victim in plan.victims:  # at once here; elsewhere from the journal
            if victim.key:
                self.storage.forget(
                    victim.region, victim.key, "eviction", bar=self.grace
                )
        await deferLater(self.clock, self.grace, lambda: None)
        await self._save_uses()
        deleted = await self.storage.call(
            retention.evict, self.files, plan.victims, self.storage.stored.wall()
        )
        freed = sum(one.size for one in deleted)
        self._estimate -= freed
        for one in deleted:
            self.storage.forget(one.region, one.key, "eviction")
            if self.metrics is not None:
                self.metrics.evictions.labels(one.reason).inc()
        if self.metrics is not None:
            self.metrics.evicted_bytes.inc(freed)
        self.log.info(
            "retention: evicted {n} of {objects} archives ({freed} bytes; "
            "{total} bytes held, limit {limit}); looked in {seconds:.3f}s",
            n=len(deleted),
            objects=plan.objects,
            freed=freed,
            total=plan.total - freed,
            limit=plan.limit,
            seconds=plan.seconds,
        )
        return deleted

    async def _pass(self) -> None:
        try:
            await self.pass_once()
        finally:
            self._passing = None
