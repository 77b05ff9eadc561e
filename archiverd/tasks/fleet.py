"""The task table of a fleet: several daemons behind a load balancer, one Redis.

Each daemon keeps its own table of the tasks it runs (:class:`TaskService`);
Redis (:class:`~archiverd.fleet.RedisFleet`) decides who runs what and lets
every daemon answer for every task:

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
  the next request for the archive, at any daemon, takes the lock, aborts the
  dead holder's pending multipart uploads, and fetches again.
- **One limit for the fleet.** ``max_concurrent_tasks`` slots are shared
  through Redis; waiting tasks queue first come, first served, and show
  "queued (N ahead)" for the whole fleet.
- **Redis trouble.** New work cannot be coordinated, so a miss gets 503 with
  Retry-After (:class:`Busy`); hits never touch Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from archiverd.errors import Busy, StorageError
from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics
from archiverd.storage.cache import ExpiringLRU
from archiverd.tasks.redis_store import FleetUnavailable, RedisFleet
from archiverd.tasks.service import Runner, State, Task, TaskService
from archiverd.util.deferreds import Shared

#: Seconds between a queued task's looks at the fleet's queue.
QUEUE_POLL = 0.5
#: Seconds another daemon's record of a success is reused here (it stays
#: true while the archive is stored), and of anything else (its holder
#: rewrites it about once a second anyway).
SUCCESS_REUSE = 30.0
RECORD_REUSE = 0.5

Cleaner = Callable[[str, Sequence[str]], Awaitable[None]]


class FleetTaskService(TaskService):
    """A :class:`TaskService` whose tasks are coordinated through Redis."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        runner: Runner,
        fleet: RedisFleet,
        keep_finished: float = 3600.0,
        *,
        lock_ttl: float = 30.0,
        clean: Cleaner | None = None,
        max_concurrent: int = 8,
        max_tasks: int = 10000,
        metrics: Metrics | None = None,
        queue_poll: float = QUEUE_POLL,
    ) -> None:
        super().__init__(
            clock,
            runner,
            keep_finished,
            max_concurrent=max_concurrent,
            max_tasks=max_tasks,
            metrics=metrics,
        )
        self.fleet = fleet
        self.lock_ttl = lock_ttl
        self._beat = min(1.0, lock_ttl / 3)
        self._clean = clean
        self._queue_poll = queue_poll
        #: When each running task last renewed its lock.
        self._kept: dict[str, float] = {}
        #: Tasks whose lock another daemon took over.
        self._lost: set[str] = set()
        #: Record writes made (each write's sequence number).
        self._writes = 0
        #: This daemon's tasks waiting for a slot, first come first.
        self._waiting: deque[tuple[Task, Deferred[None]]] = deque()
        #: Other daemons' records, as last read; and reads in progress.
        self._records: ExpiringLRU[str, dict[str, Any]] = ExpiringLRU(
            10_000, SUCCESS_REUSE, clock.seconds
        )
        self._reading: dict[str, Shared[dict[str, Any] | None]] = {}
        #: Claims in progress, by task id.
        self._claiming: dict[str, Shared[str]] = {}

    # -- life cycle -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self.fleet.start()).addErrback(
            lambda f: self.log.failure("starting the redis client", f)
        )

    def stopService(self) -> Deferred[Any]:
        stopped = super().stopService()  # cancels the tasks; they release

        async def then_fleet() -> None:
            await stopped
            await self.fleet.stop()

        return DeferredList([Deferred.fromCoroutine(then_fleet())])

    # -- claiming work ----------------------------------------------------------

    async def claim(
        self,
        request: ArchiveRequest,
        src_url: str,
        regions: Sequence[str],
        upstream_host: str,
        since: float,
        stored_in: Callable[[], Awaitable[Sequence[str]]],
    ) -> str:
        if self.joinable(request.task_id, since) is not None:
            return request.task_id
        if self.get(request.task_id) is None and len(self) >= self.max_tasks:
            self._make_room()
        # Concurrent requests for one archive at this daemon share one claim
        # (a thousand clients asking at once make one Redis call, not 1,000).
        task_id = request.task_id
        claiming = self._claiming.get(task_id)
        if claiming is None:
            claiming = Shared(
                Deferred.fromCoroutine(
                    self._claim(
                        request, src_url, regions, upstream_host, since, stored_in
                    )
                )
            )
            if not claiming.done:
                self._claiming[task_id] = claiming
                claiming.wait().addBoth(lambda _: self._claiming.pop(task_id, None))
        return await claiming.wait()

    async def _claim(
        self,
        request: ArchiveRequest,
        src_url: str,
        regions: Sequence[str],
        upstream_host: str,
        since: float,
        stored_in: Callable[[], Awaitable[Sequence[str]]],
    ) -> str:
        try:
            token = await self.fleet.acquire(request.key, self.lock_ttl)
        except FleetUnavailable as e:
            raise Busy(f"cannot coordinate with the other daemons ({e})") from None
        if token is None:
            return request.task_id  # another daemon (or request) has it
        try:
            # Storage again, now that no one else can be storing it: the last
            # holder may have finished since this request looked.
            stored = await stored_in()
            missing = [r for r in regions if r not in stored]
            task = None
            if missing:
                task = self.submit(
                    request, src_url, missing, upstream_host, since, token=token
                )
        except BaseException:
            await self._release_quietly(request.key, token)
            raise
        if task is None or task.token != token:
            await self._release_quietly(request.key, token)
            return request.task_id
        await self._keep_quietly(task)  # the record, before anyone polls
        return task.task_id

    async def _release_quietly(self, key: str, token: str) -> None:
        try:
            await self.fleet.release(key, token)
        except FleetUnavailable as e:
            self.log.warn("{key}: {error}", key=key, error=str(e))

    async def lookup(self, task_id: str) -> dict[str, Any] | None:
        """The status in the task's record; raises FleetUnavailable.

        Concurrent polls for one task share one read; a record just read is
        reused (a success for longer: see SUCCESS_REUSE).
        """
        found = self._reusable(task_id)
        if found is None:
            reading = self._reading.get(task_id)
            if reading is None:
                reading = Shared(Deferred.fromCoroutine(self._read(task_id)))
                if not reading.done:
                    self._reading[task_id] = reading
                    reading.wait().addBoth(lambda _: self._reading.pop(task_id, None))
            found = await reading.wait()
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
        record = await self.fleet.load_task(task_id)
        if not record or "state" not in record:
            return None
        result: dict[str, Any] = {
            "state": record["state"],
            "status": record.get("status", ""),
            "src_url": record.get("src_url", ""),
            "bytes_received": int(record.get("bytes_received", "0") or 0),
            "elapsed_seconds": float(record.get("elapsed_seconds", "0") or 0),
            "regions": [r for r in record.get("regions", "").split(",") if r],
        }
        if record["state"] == State.SUCCESS.value:
            result["size"] = int(record.get("size", "0") or 0)
            result["sha256"] = record.get("sha256", "")
        self._records.put(task_id, result)
        return result

    # -- running ----------------------------------------------------------------

    async def _run(self, task: Task) -> None:
        task.fence = lambda: self._fence(task)
        self._kept[task.task_id] = self._clock.seconds()
        beat = LoopingCall(lambda: Deferred.fromCoroutine(self._heartbeat(task)))
        beat.clock = self._clock
        beat.start(self._beat, now=False).addErrback(
            lambda f: self.log.failure("{key}: heartbeat", f, key=task.key)
        )
        try:
            try:
                await self._fleet_turn(task)
            except CancelledError:
                self._finish(task, State.FAILURE, "cancelled: archiverd is stopping")
                return
            except FleetUnavailable as e:
                self._finish(task, State.FAILURE, f"cannot coordinate: {e}")
                return
            self._working += 1
            try:
                task.state = State.STARTED  # (as _work does) for the record:
                await self._keep_quietly(task)  # pollers elsewhere see it now
                await self._clean_up_after_others(task)
                await self._work(task)
            finally:
                self._working -= 1
        finally:
            if beat.running:
                beat.stop()
            if task.task_id in self._lost:
                task.error = "stopped: another daemon took this task over"
            await self._settle(task)

    async def _fleet_turn(self, task: Task) -> None:
        """Wait, first come first served, for one of the fleet's slots.

        Only this daemon's first waiting task stands in the fleet's queue
        (and asks Redis every ``queue_poll`` seconds); the others wait here,
        behind it, without a Redis call each.
        """
        fleet, token = self.fleet, task.token
        turn: Deferred[None] = Deferred()
        self._waiting.append((task, turn))
        try:
            if len(self._waiting) > 1:
                self._renumber_waiting(self._waiting[0][0].ahead)
                await turn  # the one ahead here took a slot, or gave up
            await fleet.enqueue(token, self.lock_ttl)
            while True:
                ahead = await fleet.position(token)
                if ahead == 0 and await fleet.take_slot(
                    token, self.max_concurrent, self.lock_ttl
                ):
                    break
                self._renumber_waiting(ahead or 0)
                await deferLater(self._clock, self._queue_poll, lambda: None)
                await fleet.enqueue(token, self.lock_ttl)  # keep the place
        finally:
            first = bool(self._waiting) and self._waiting[0][0] is task
            self._waiting = deque(w for w in self._waiting if w[0] is not task)
            if first and self._waiting:
                self._waiting[0][1].callback(None)
        await fleet.dequeue(token)

    def _renumber_waiting(self, first_ahead: int) -> None:
        for i, (waiting, _) in enumerate(self._waiting):
            waiting.ahead = first_ahead + i

    async def _clean_up_after_others(self, task: Task) -> None:
        """Abort what a daemon that died holding this lock left pending."""
        if self._clean is None:
            return
        try:
            await self._clean(task.key, task.regions)
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn(
                "{key}: cannot look for abandoned uploads: {error}",
                key=task.key,
                error=str(e),
            )

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

    async def _heartbeat(self, task: Task) -> None:
        if task.done:
            return
        queued = task.state is State.PENDING  # not yet given a fleet slot
        if queued and (
            self._clock.seconds() - self._kept.get(task.task_id, 0.0)
            < self.lock_ttl / 3
        ):
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
        return await self.fleet.keep(
            task.key,
            task.token,
            self.lock_ttl,
            task.task_id,
            self._record(task),
            ttl,
            seq=self._writes,
        )

    async def _keep_quietly(self, task: Task) -> None:
        try:
            await self._keep(task)
        except FleetUnavailable:
            pass  # the heartbeat tries again, and gives up after lock_ttl

    async def _settle(self, task: Task) -> None:
        """Publish the outcome, then give back the slot and the lock."""
        self._kept.pop(task.task_id, None)
        lost = task.task_id in self._lost
        self._lost.discard(task.task_id)
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

    def _record(self, task: Task) -> dict[str, str]:
        described = task.describe(self._clock.seconds())
        record = {
            "state": described["state"],
            "status": described["status"],
            "src_url": described["src_url"],
            "bytes_received": str(described["bytes_received"]),
            "elapsed_seconds": str(described["elapsed_seconds"]),
            "regions": ",".join(described["regions"]),
            "owner": self.fleet.instance,
        }
        if task.state is State.SUCCESS:
            record["size"] = str(task.size)
            record["sha256"] = task.sha256 or ""
        return record

    @property
    def queued(self) -> int:
        return len(self._waiting)
