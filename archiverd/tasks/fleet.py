"""A fleet's coordinator: several daemons behind a load balancer, one Redis.

Each daemon keeps its own table of the tasks it runs
(:class:`~archiverd.tasks.service.TaskService`); Redis
(:class:`~archiverd.tasks.redis_store.RedisFleet`) decides who runs what and
lets every daemon answer for every task:

- **One fetch per archive.** A daemon works on an archive only while it holds
  the archive's lock (``SET NX`` with a token and ``lock_ttl``). Requests that
  reach other daemons meanwhile answer 202 with the same task id.
- **Any daemon answers any poll.** The holder writes the task's record (one
  hash) when it queues or starts, every heartbeat, and when it ends; a
  finished record stays ``keep_finished`` seconds. Another daemon reads a
  record once for all its polls meanwhile, and reuses it: a success for
  ``SUCCESS_REUSE`` (it stays true; its answer is rendered once, as the
  owner's is), anything else for ``RECORD_REUSE``. So a poll there shows
  the owner's state at most ``RECORD_REUSE`` late, plus, for the bytes
  received, one heartbeat; an outcome is written the moment it is known.
- **Heartbeats, fenced.** Every ``lock_ttl / 3`` seconds (at most 1 s) the
  holder renews its lock (and its slot) and rewrites the record in one
  atomic step, only while the lock is still its own. A holder that finds
  the lock gone stops and aborts its uploads; one that cannot reach Redis
  for ``lock_ttl`` does the same. Before completing an upload, the holder
  checks the lock again.
- **Few round trips.** A cold archive costs four: the claim, one turn at a
  slot (lock renewed, slot taken or place in the queue kept, record written:
  one Lua script), the fence, the finish (queue and slot left, outcome
  written, lock released: one script); plus a heartbeat a second after the
  first. Hits cost none.
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
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from archiverd.errors import Busy, FleetUnavailable, StorageError
from archiverd.keys import ArchiveRequest, key_for_task_id, parse_key
from archiverd.storage.cache import ExpiringLRU
from archiverd.tasks.coordinator import Report
from archiverd.tasks.model import State, Task, from_record, to_record
from archiverd.tasks.redis_store import LOCK_LOST, SLOT_TAKEN, RedisFleet
from archiverd.util.deferreds import Shared, SingleFlight

#: Seconds between a queued task's looks at the fleet's queue.
QUEUE_POLL = 0.5
#: Seconds another daemon's record of a success is reused here (it stays
#: true while the archive is stored), and of anything else (its holder
#: rewrites it about once a second anyway).
SUCCESS_REUSE = 30.0
RECORD_REUSE = 0.5
LOST = "stopped: another daemon took this task over"
LOST_LOCK = "its lock was taken over"


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
        #: Tasks' first turns at a slot while on their way (they write the
        #: record that :meth:`publish` would); tasks whose turn wrote their
        #: record as started.
        self._first_turns: dict[str, Shared[int]] = {}
        self._begun: set[str] = set()
        #: Other daemons' records, as last read; and reads in progress.
        self._records: ExpiringLRU[str, Seen] = ExpiringLRU(
            10_000, SUCCESS_REUSE, clock.seconds
        )
        self._reads: SingleFlight[str, Seen | None] = SingleFlight()

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
        taking a turn (one round trip) every ``queue_poll`` seconds.

        Each turn also renews the lock and writes the task's record: as
        started when it takes the slot (so :meth:`begin` need not), else as
        queued. The first turn's record is the one :meth:`publish` awaits.
        """
        first = Shared(Deferred.fromCoroutine(self._turn(task, limit)))
        self._first_turns[task.task_id] = first  # until publish or settle
        ahead = await first.wait()
        while ahead != SLOT_TAKEN:
            report(ahead)
            await deferLater(self._clock, self._queue_poll, lambda: None)
            ahead = await self._turn(task, limit)
        self._begun.add(task.task_id)

    async def _turn(self, task: Task, limit: int) -> int:
        now = self._clock.seconds()
        starting = replace(task, state=State.STARTED, started=now)
        ahead = await self.fleet.turn(
            task.key,
            task.token,
            self.lock_ttl,
            task.task_id,
            limit=limit,
            started=self._record(starting),
            queued=self._record(task),
            record_ttl=self.lock_ttl,
            seq=self._next_write(),
        )
        if ahead == LOCK_LOST:
            self.log.warn("{key}: stopping: {why}", key=task.key, why=LOST_LOCK)
            self._lost.add(task.task_id)
            raise CancelledError(LOST_LOCK)
        self._kept[task.task_id] = self._clock.seconds()
        return ahead

    def try_slot(self, task: Task, limit: int) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._try_slot(task, limit))

    async def _try_slot(self, task: Task, limit: int) -> bool:
        """A slot now, only while no task of the fleet's waits for one."""
        try:
            if await self.fleet.queue_length():
                return False
            return await self.fleet.take_slot(task.token, limit, self.lock_ttl)
        except FleetUnavailable:
            return False

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
        if task.task_id in self._begun:
            self._begun.discard(task.task_id)
            return  # the turn that took the slot wrote the record as started
        await self.publish(task)  # pollers elsewhere see STARTED now

    async def publish(self, task: Task) -> None:
        """Write ``task``'s record now; unless its first turn at a slot
        writes it: then wait for that."""
        first = self._first_turns.pop(task.task_id, None)
        if task.done:
            return  # settling writes the outcome (or, with the lock lost, not)
        try:
            if first is not None:
                await first.wait()
            else:
                await self._keep(task)
        except (FleetUnavailable, CancelledError):
            pass  # the heartbeat tries again, and gives up after lock_ttl

    async def _heartbeat(self, task: Task) -> None:
        if task.done:
            return
        queued = task.state is State.PENDING  # not yet given a fleet slot
        since = self._clock.seconds() - self._kept.get(task.task_id, 0.0)
        if queued and since < self.lock_ttl / 3:
            return  # waiting: only the lock needs renewing, not each second
        try:
            ours = await self._keep(task, slot=not queued)
        except FleetUnavailable:
            silent = self._clock.seconds() - self._kept.get(task.task_id, 0.0)
            if silent < self.lock_ttl:
                return
            why = f"could not renew its lock for {silent:.0f}s"
        else:
            if ours:
                self._kept[task.task_id] = self._clock.seconds()
                return
            why = LOST_LOCK
        self.log.warn("{key}: stopping: {why}", key=task.key, why=why)
        self._lost.add(task.task_id)
        if task.deferred is not None:
            task.deferred.cancel()

    async def _keep(self, task: Task, *, slot: bool = False) -> bool:
        """Renew the lock (and the slot) and rewrite the record; False if the
        lock is gone."""
        return await self.fleet.keep(
            task.key,
            task.token,
            self.lock_ttl,
            task.task_id,
            self._record(task),
            self._record_ttl(task),
            seq=self._next_write(),
            slot_ttl=self.lock_ttl if slot else None,
        )

    def _record(self, task: Task) -> dict[str, str]:
        record = to_record(task.describe(self._clock.seconds()))
        record["owner"] = self.fleet.instance
        if task.finished is not None:
            record["finished"] = repr(task.finished)  # for stand-ins elsewhere
        return record

    def _record_ttl(self, task: Task) -> float:
        return max(1.0, self.keep_finished) if task.done else self.lock_ttl

    def _next_write(self) -> int:
        """The next record write's number: later writes win, whatever order
        they reach Redis in."""
        self._writes += 1
        return self._writes

    async def settle(self, task: Task) -> None:
        """Publish the outcome, then give back the slot and the lock."""
        self._kept.pop(task.task_id, None)
        self._begun.discard(task.task_id)
        self._first_turns.pop(task.task_id, None)
        lost = task.task_id in self._lost
        self._lost.discard(task.task_id)
        if lost:
            task.error = LOST
        try:
            # One round trip: out of the queue, the slot back, then (unless
            # the lock was lost) the outcome written and the lock released.
            await self.fleet.finish(
                task.key,
                task.token,
                task.task_id,
                None if lost else self._record(task),
                self._record_ttl(task),
                seq=self._next_write(),
            )
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
        seen = self._reusable(task_id)
        if seen is None:
            seen = await self._reads.run(task_id, lambda: self._read(task_id))
            if seen is None:
                return None
        return dict(seen.fields)  # the caller adds to it

    def peek(self, task_id: str) -> dict[str, Any] | None:
        """:meth:`lookup`'s answer if read lately; the fields as read (the
        caller must not change them: they answer every poll meanwhile)."""
        seen = self._reusable(task_id)
        return None if seen is None else seen.fields

    def seen(self, task_id: str) -> Task | None:
        seen = self._reusable(task_id)
        return None if seen is None else seen.task

    def _reusable(self, task_id: str) -> Seen | None:
        seen = self._records.get(task_id)
        if seen is not None and seen.fields["state"] != State.SUCCESS.value:
            seen = self._records.get(task_id, max_age=RECORD_REUSE)
        return seen

    async def _read(self, task_id: str) -> Seen | None:
        record = await self.fleet.load_task(task_id)
        fields = from_record(record)
        if record is None or fields is None:
            return None
        finished = float(record.get("finished") or self._clock.seconds())
        seen = Seen(fields, _finished_elsewhere(task_id, fields, finished))
        self._records.put(task_id, seen)
        return seen


@dataclass(frozen=True, slots=True)
class Seen:
    """Another daemon's task as last read here: its status fields, and for a
    success a :class:`Task` standing for it, which keeps the answer rendered
    for it as this daemon's own tasks keep theirs."""

    fields: dict[str, Any]
    task: Task | None


def _finished_elsewhere(
    task_id: str, fields: dict[str, Any], finished: float
) -> Task | None:
    """A SUCCESS record's task, as a :class:`Task` in state SUCCESS that
    describes itself as the record does (else None)."""
    if fields["state"] != State.SUCCESS.value:
        return None
    try:
        request = parse_key(key_for_task_id(task_id))
    except ValueError:
        return None
    if request is None or request.task_id != task_id:
        return None
    return Task(
        request,
        fields["src_url"],
        tuple(fields["regions"]),
        finished - fields["elapsed_seconds"],
        state=State.SUCCESS,
        bytes_received=fields["bytes_received"],
        finished=finished,
        size=fields.get("size"),
        sha256=fields.get("sha256"),
        prewarm=bool(fields.get("prewarm")),
    )
