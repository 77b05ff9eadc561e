"""A fleet's coordinator: several daemons behind a load balancer, one Redis.

Each daemon keeps its own table of the tasks it runs
(:class:`~archiverd.tasks.service.TaskService`); Redis
(:class:`~archiverd.tasks.redis_store.RedisFleet`) decides who runs what and
lets every daemon answer for every task:

- **One fetch per archive.** A daemon works on an archive only while it holds
  the archive's lock (``SET NX`` with a token and ``lock_ttl``). Requests that
  reach other daemons meanwhile answer 202 with the same task id.
- **Any daemon answers any poll.** The holder writes the task's record (one
  hash) when it starts, every heartbeat, and when it ends; a finished record
  stays ``keep_finished`` seconds.
- **Heartbeats, fenced.** Every ``lock_ttl / 3`` seconds (at most 1 s) the
  holder renews its lock and rewrites the record in one atomic step, only
  while the lock is still its own. A holder that finds the lock gone stops
  and aborts its uploads; one that cannot reach Redis for ``lock_ttl`` does
  the same. Before completing an upload, the holder checks the lock again.
- **Take-over.** If the holder dies, its lock expires after ``lock_ttl``;
  the next request for the archive, at any daemon, takes the lock and fetches
  again (the task service aborts the dead holder's pending multipart uploads
  first, as it does for every task).
- **One limit for the fleet.** ``max_concurrent_tasks`` slots are shared
  through Redis; waiting tasks queue first come, first served, and show
  "queued (N ahead)" for the whole fleet.
- **Redis trouble.** New work cannot be coordinated, so a miss gets 503 with
  Retry-After (:class:`Busy`); hits never touch Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from archiverd.errors import Busy, FleetUnavailable, StorageError
from archiverd.keys import ArchiveRequest
from archiverd.storage.cache import ExpiringLRU
from archiverd.tasks.coordinator import Report
from archiverd.tasks.model import State, Task, from_record, to_record
from archiverd.tasks.redis_store import RedisFleet
from archiverd.util.deferreds import SingleFlight

#: Seconds between a queued task's looks at the fleet's queue.
QUEUE_POLL = 0.5
#: Seconds another daemon's record of a success is reused here (it stays
#: true while the archive is stored), and of anything else (its holder
#: rewrites it about once a second anyway).
SUCCESS_REUSE = 30.0
RECORD_REUSE = 0.5
LOST = "stopped: another daemon took this task over"


class RedisCoordinator:
    """Claims, slots, fences and records shared by every daemon through Redis."""

    log = Logger()
    shared = True

    def __init__(
        self,
        fleet: RedisFleet,
        clock: IReactorTime,
        *,
        keep_finished: float = 3600.0,
        lock_ttl: float = 30.0,
        queue_poll: float = QUEUE_POLL,
    ) -> None:
        self.fleet = fleet
        self._clock = clock
        self.keep_finished = keep_finished
        self.lock_ttl = lock_ttl
        self._beat = min(1.0, lock_ttl / 3)
        self._queue_poll = queue_poll
        #: When each running task last renewed its lock.
        self._kept: dict[str, float] = {}
        #: Tasks whose lock another daemon took over.
        self._lost: set[str] = set()
        #: Record writes made (each write's sequence number).
        self._writes = 0
        #: Other daemons' records, as last read; and reads in progress.
        self._records: ExpiringLRU[str, dict[str, Any]] = ExpiringLRU(
            10_000, SUCCESS_REUSE, clock.seconds
        )
        self._reads: SingleFlight[str, dict[str, Any] | None] = SingleFlight()

    async def start(self) -> None:
        await self.fleet.start()

    async def stop(self) -> None:
        await self.fleet.stop()

    # -- claims -----------------------------------------------------------------

    async def acquire(self, request: ArchiveRequest) -> str | None:
        try:
            return await self.fleet.acquire(request.key, self.lock_ttl)
        except FleetUnavailable as e:
            raise Busy(f"cannot coordinate with the other daemons ({e})") from None

    async def release(self, key: str, token: str) -> None:
        try:
            await self.fleet.release(key, token)
        except FleetUnavailable as e:
            self.log.warn("{key}: {error}", key=key, error=str(e))

    def fence(self, task: Task) -> Callable[[], Awaitable[None]] | None:
        return lambda: self._fence(task)

    async def _fence(self, task: Task) -> None:
        """Raise unless this daemon still holds the task's lock."""
        try:
            ours = await self.fleet.holds(task.key, task.token)
        except FleetUnavailable as e:
            raise StorageError(
                f"not completing {task.key}: cannot confirm its lock ({e})"
            ) from None
        if not ours:
            self._lost.add(task.task_id)
            raise StorageError(
                f"not completing {task.key}: another daemon took this task over"
            )

    # -- slots ------------------------------------------------------------------

    def take_slot(self, task: Task, limit: int, report: Report) -> Deferred[None]:
        return Deferred.fromCoroutine(self._take_slot(task, limit, report))

    async def _take_slot(self, task: Task, limit: int, report: Report) -> None:
        """Wait, first come first served, for one of the fleet's slots,
        asking Redis every ``queue_poll`` seconds."""
        fleet, token = self.fleet, task.token
        await fleet.enqueue(token, self.lock_ttl)
        while True:
            ahead = await fleet.position(token)
            if ahead == 0 and await fleet.take_slot(token, limit, self.lock_ttl):
                break
            report(ahead or 0)
            await deferLater(self._clock, self._queue_poll, lambda: None)
            await fleet.enqueue(token, self.lock_ttl)  # keep the place
        await fleet.dequeue(token)

    # -- the record and the heartbeat --------------------------------------------

    def watch(self, task: Task) -> Callable[[], None]:
        self._kept[task.task_id] = self._clock.seconds()
        beat = LoopingCall(lambda: Deferred.fromCoroutine(self._heartbeat(task)))
        beat.clock = self._clock
        beat.start(self._beat, now=False).addErrback(
            lambda f: self.log.failure("{key}: heartbeat", f, key=task.key)
        )

        def unwatch() -> None:
            if beat.running:
                beat.stop()

        return unwatch

    async def begin(self, task: Task) -> None:
        await self.publish(task)  # pollers elsewhere see STARTED now

    async def publish(self, task: Task) -> None:
        try:
            await self._keep(task)
        except FleetUnavailable:
            pass  # the heartbeat tries again, and gives up after lock_ttl

    async def _heartbeat(self, task: Task) -> None:
        if task.done:
            return
        queued = task.state is State.PENDING  # not yet given a fleet slot
        since = self._clock.seconds() - self._kept.get(task.task_id, 0.0)
        if queued and since < self.lock_ttl / 3:
            return  # waiting: only the lock needs renewing, not each second
        try:
            ours = await self._keep(task)
            if not queued:
                await self.fleet.renew_slot(task.token, self.lock_ttl)
        except FleetUnavailable:
            silent = self._clock.seconds() - self._kept.get(task.task_id, 0.0)
            if silent < self.lock_ttl:
                return
            why = f"could not renew its lock for {silent:.0f}s"
        else:
            if ours:
                self._kept[task.task_id] = self._clock.seconds()
                return
            why = "its lock was taken over"
        self.log.warn("{key}: stopping: {why}", key=task.key, why=why)
        self._lost.add(task.task_id)
        if task.deferred is not None:
            task.deferred.cancel()

    async def _keep(self, task: Task) -> bool:
        """Renew the lock and rewrite the record; False if the lock is gone."""
        ttl = max(1.0, self.keep_finished) if task.done else self.lock_ttl
        self._writes += 1  # later writes win, whatever order they arrive in
        record = to_record(task.describe(self._clock.seconds()))
        record["owner"] = self.fleet.instance
        return await self.fleet.keep(
            task.key,
            task.token,
            self.lock_ttl,
            task.task_id,
            record,
            ttl,
            seq=self._writes,
        )

    async def settle(self, task: Task) -> None:
        """Publish the outcome, then give back the slot and the lock."""
        self._kept.pop(task.task_id, None)
        lost = task.task_id in self._lost
        self._lost.discard(task.task_id)
        if lost:
            task.error = LOST
        fleet, token = self.fleet, task.token
        try:
            await fleet.dequeue(token)
            await fleet.release_slot(token)
            if not lost:
                await self._keep(task)
                await fleet.release(task.key, token)
        except FleetUnavailable as e:
            self.log.warn(
                "{key}: cannot release its lock ({error}); it expires in {ttl}s",
                key=task.key,
                error=str(e),
                ttl=self.lock_ttl,
            )

    # -- other daemons' tasks ----------------------------------------------------

    async def lookup(self, task_id: str) -> dict[str, Any] | None:
        """The status in the task's record; raises FleetUnavailable.

        Concurrent polls for one task share one read; a record just read is
        reused (a success for longer: see SUCCESS_REUSE).
        """
        found = self._reusable(task_id)
        if found is None:
            found = await self._reads.run(task_id, lambda: self._read(task_id))
            if found is None:
                return None
        return dict(found)  # the caller adds to it

    def peek(self, task_id: str) -> dict[str, Any] | None:
        found = self._reusable(task_id)
        return None if found is None else dict(found)

    def _reusable(self, task_id: str) -> dict[str, Any] | None:
        found = self._records.get(task_id)
        if found is not None and found["state"] != State.SUCCESS.value:
            found = self._records.get(task_id, max_age=RECORD_REUSE)
        return found

    async def _read(self, task_id: str) -> dict[str, Any] | None:
        result = from_record(await self.fleet.load_task(task_id))
        if result is not None:
            self._records.put(task_id, result)
        return result
