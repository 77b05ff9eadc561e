"""What lets several archiverd daemons act as one: locks, slots, a queue and
task records, in Redis.

The client is redis-py, a blocking client, on a dedicated thread pool
(:class:`~archiverd.util.threads.BlockingPool`, as storage runs botocore),
with the reactor passed in. Why redis-py rather than txredisapi, and the
measurements behind that choice, are in ``docs/performance.md`` ("The Redis
client").

Semantics: every key starts with ``prefix``. Times that daemons compare (slot
and queue expiries) come from Redis' own clock (``TIME`` in Lua), never from a
host's. Every call is bounded by ``timeout`` and raises :class:`FleetUnavailable`
on connection trouble, so callers can answer 503; the daemon starts and keeps
serving with Redis down, and a lost connection is remade by the next call.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError
from redis.retry import Retry
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from archiverd.errors import FleetUnavailable
from archiverd.tasks import redis_lua
from archiverd.util.threads import BlockingPool

T = TypeVar("T")


# Errors that mean "Redis is not usable now", not "this call was wrong".
# BusyLoadingError is a ConnectionError; ReadOnlyError comes from a replica
# being promoted during a failover.
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,
    OSError,
)

#: What :meth:`RedisFleet.turn` answers besides a place in the queue.
SLOT_TAKEN = -1
LOCK_LOST = -2


def default_instance() -> str:
    """``host:pid``: names this daemon in tokens and logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def milliseconds(seconds: float) -> int:
    """A TTL in seconds as Redis' whole milliseconds, at least 1."""
    if seconds <= 0:
        raise ValueError(f"a TTL must be positive, not {seconds!r}")
    return max(1, round(seconds * 1000))


def _flatten(fields: dict[str, str]) -> list[str]:
    if not fields:
        raise ValueError("a task record needs at least one field")
    out: list[str] = []
    for name, value in fields.items():
        out += [name, value]
    return out


class RedisFleet:
    """Coordination primitives shared by every daemon using one Redis.

    ``clock`` is the reactor (``IReactorTime`` and ``IReactorFromThreads``):
    redis-py runs on this object's own thread pool and every method returns
    on the reactor thread. Call :meth:`start` before anything else.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        clock: Any,
        *,
        prefix: str = "archiverd:",
        instance: str | None = None,
        timeout: float = 2.0,
        threads: int = 8,
        ping_interval: float = 1.0,
    ) -> None:
        self.prefix = prefix
        self.instance = instance or default_instance()
        self.timeout = timeout
        self._clock = clock
        self._ping_interval = ping_interval
        # Parsed now, so a bad URL stops start-up; nothing connects yet.
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=threads,
            client_name=f"archiverd:{self.instance}",
            # One immediate retry remakes a connection the server dropped
            # (a restart); more would only hold a thread while it is down.
            # Not after a timeout: that would double the wait on a hung
            # server, and send the command twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._pool = BlockingPool(clock, "archiverd-redis", threads)
        self._scripts = {
            name: self._client.register_script(lua)
            for name, lua in (
                ("acquire", redis_lua.ACQUIRE),
                ("release", redis_lua.RELEASE),
                ("take_slot", redis_lua.TAKE_SLOT),
                ("keep", redis_lua.KEEP),
                ("turn", redis_lua.TURN),
                ("finish", redis_lua.FINISH),
            )
        }
        self._started = False
        #: Calls made to Redis, and how many of them were pings.
        self.calls = 0
        self.pings = 0
        self._up = False
        self._pinger: LoopingCall | None = None
        self._pinging: Deferred[None] | None = None

    # -- life cycle ---------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether the last call to Redis worked."""
        return self._up

    async def start(self) -> None:
        """Start the thread pool and see whether Redis answers; never raises
        for Redis being down (calls raise :class:`FleetUnavailable` then, and
        work again once it is back). Redis down at start is said once, by the
        daemon's start-up check (``Health.check_at_start``)."""
        if self._started:
            return
        self._started = True
        self._pool.start()
        try:
            await self.ping()
        except FleetUnavailable:
            pass
        self._pinger = LoopingCall(self._ping_quietly)
        self._pinger.clock = self._clock
        d = self._pinger.start(self._ping_interval, now=False)
        d.addErrback(lambda f: self.log.failure("redis health checks stopped", f))

    async def stop(self) -> None:
        """Stop pinging, close the connections and stop the pool."""
        if not self._started:
            return
        self._started = False
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        if self._pinging is not None:
            await self._pinging
        try:
            await self._pool.run(self._client.connection_pool.disconnect)
        except Exception:
            self.log.failure("closing redis connections")
        self._up = False
        # A thread may still be in a call for up to ``timeout``.
        await self._pool.stop()

    def _ping_quietly(self) -> None:
        if self._pinging is not None:
            return

        def done(result: object) -> None:
            self._pinging = None

        async def ping() -> None:
            try:
                await self.ping()
            except FleetUnavailable:
                pass  # _call logged the change of state

        self._pinging = Deferred.fromCoroutine(ping())
        self._pinging.addErrback(lambda f: self.log.failure("redis ping", f))
        self._pinging.addBoth(done)

    async def ping(self) -> None:
        """Raise :class:`FleetUnavailable` unless Redis answers in time."""
        self.pings += 1
        await self._call(self._client.ping)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the pool, within ``timeout``."""
        if not self._started:
            raise FleetUnavailable("redis: not started")
        abandoned = threading.Event()
        deadline = time.monotonic() + self.timeout

        def run() -> T:
            # A call still waiting for a thread when its caller gives up is
            # not made: it would take a lock or a slot nobody will release.
            # (The deadline, read on this thread, settles the race with the
            # reactor's timeout.)
            if abandoned.is_set() or time.monotonic() >= deadline:
                raise FleetUnavailable("redis: gave up waiting for a thread")
            return fn(*args, **kwargs)

        self.calls += 1
        d = self._pool.run(run)
        d.addTimeout(self.timeout, self._clock)
        try:
            result = await d
        except (DeferredTimeout, CancelledError) as e:
            abandoned.set()
            self._went_down(f"no answer within {self.timeout:g} s")
            raise FleetUnavailable(f"redis: no answer within {self.timeout:g} s") from e
        except _UNAVAILABLE as e:
            self._went_down(str(e) or type(e).__name__)
            raise FleetUnavailable(f"redis: {e}") from e
        if not self._up:
            self._up = True
            self.log.info("redis is up")
        return result

    def _went_down(self, why: str) -> None:
        if self._up:
            self.log.warn("redis is down: {why}", why=why)
        self._up = False

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _token(self) -> str:
        return f"{self.instance}:{secrets.token_hex(16)}"

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(self._scripts[name], keys=keys, args=args)

    # -- locks ---------------------------------------------------------------

    async def acquire(self, key: str, ttl: float, token: str = "") -> str | None:
        """Take the lock on ``key`` for ``ttl`` seconds: its token, or None
        when another holds it. Given the token it holds, renews it."""
        token = token or self._token()
        taken = await self._script(
            "acquire", [self._key("lock", key)], [token, milliseconds(ttl)]
        )
        return token if taken else None

    async def release(self, key: str, token: str) -> bool:
        """Drop the lock if it is still ours; False when it was not."""
        return bool(await self._script("release", [self._key("lock", key)], [token]))

    async def holds(self, key: str, token: str) -> bool:
        """Whether ``token`` still holds the lock (the fencing check made
        before completing an upload: a holder that lost it must not)."""
        value = await self._call(self._client.get, self._key("lock", key))
        return bool(value == token)

    # -- fleet-wide concurrency limit ---------------------------------------

    async def take_slot(self, token: str, limit: int, ttl: float) -> bool:
        """Take one of ``limit`` fleet-wide slots for ``ttl`` seconds (slots
        whose holder stopped renewing are freed first). True if ``token``
        holds one (already holding one renews it)."""
        return bool(
            await self._script(
                "take_slot",
                [self._key("slots")],
                [token, int(limit), milliseconds(ttl)],
            )
        )

    # -- fleet queue ---------------------------------------------------------

    async def queue_length(self) -> int:
        """How many wait in the queue (entries not yet dropped as expired)."""
        return int(await self._call(self._client.zcard, self._key("queue")))

    # -- task records --------------------------------------------------------

    async def keep(
        self,
        key: str,
        token: str,
        lock_ttl: float,
        task_id: str,
        fields: dict[str, str],
        record_ttl: float,
        seq: int,
        slot_ttl: float | None = None,
    ) -> bool:
        """While ``token`` holds the lock on ``key``: renew it for
        ``lock_ttl`` (and, given ``slot_ttl``, its slot for that long, unless
        the slot expired) and replace the task's record with ``fields`` for
        ``record_ttl``, in one atomic step, unless the record already holds
        this token's write ``seq`` or a later one. False (nothing written)
        when the lock is no longer ours: a holder that lost it cannot
        overwrite the record of the one that took over."""
        return bool(
            await self._script(
                "keep",
                [
                    self._key("lock", key),
                    self._key("task", task_id),
                    self._key("slots"),
                ],
                [token, milliseconds(lock_ttl), milliseconds(record_ttl), seq]
                + [0 if slot_ttl is None else milliseconds(slot_ttl)]
                + _flatten(fields),
            )
        )

    async def turn(
        self,
        key: str,
        token: str,
        lock_ttl: float,
        task_id: str,
        *,
        limit: int,
        started: dict[str, str],
        queued: dict[str, str],
        record_ttl: float,
        seq: int,
    ) -> int:
        """A task's turn at the fleet's ``limit`` slots, in one round trip,
        while ``token`` holds the lock on ``key`` (renewed for ``lock_ttl``):

        - :data:`SLOT_TAKEN` when nobody waits ahead and a slot was free: the
          task holds it (for ``lock_ttl``), has left the queue, and its
          record is ``started``;
        - else how many wait ahead of it in the fleet's queue (0 or more):
          it joined the queue, or kept its place there for ``lock_ttl``, and
          its record is ``queued``;
        - :data:`LOCK_LOST` (nothing done) when the lock is not ``token``'s.

        An empty record is not written; a record is written as :meth:`keep`
        writes it (never over a later ``seq`` of this token's).
        """
        ttl = milliseconds(lock_ttl)
        first = _flatten(started) if started else []
        return int(
            await self._script(
                "turn",
                [
                    self._key("lock", key),
                    self._key("task", task_id),
                    self._key("queue"),
                    self._key("queue", "expiry"),
                    self._key("queue", "n"),
                    self._key("slots"),
                ],
                [token, ttl, milliseconds(record_ttl), seq, int(limit), ttl, ttl]
                + [len(first)]
                + first
                + (_flatten(queued) if queued else []),
            )
        )

    async def finish(
        self,
        key: str,
        token: str,
        task_id: str,
        fields: dict[str, str] | None,
        record_ttl: float,
        seq: int,
    ) -> bool:
        """A task's end, in one round trip: ``token`` leaves the queue and
        gives back its slot; then, given ``fields`` and while it holds the
        lock on ``key``, the record becomes ``fields`` (for ``record_ttl``)
        and the lock is released. False when the lock was not ``token``'s
        (nothing written, nothing released)."""
        args: list[Any] = [token, milliseconds(record_ttl), seq]
        return bool(
            await self._script(
                "finish",
                [
                    self._key("lock", key),
                    self._key("task", task_id),
                    self._key("queue"),
                    self._key("queue", "expiry"),
                    self._key("slots"),
                ],
                args + (_flatten(fields) if fields is not None else []),
            )
        )

    # -- small shared state (pre-warm positions, learned shapes) -------------

    async def load_hash(self, name: str) -> dict[str, str]:
        record = await self._call(self._client.hgetall, self._key(name))
        return {str(k): str(v) for k, v in record.items()}

    async def save_hash(self, name: str, fields: dict[str, str]) -> None:
        if fields:
            await self._call(self._client.hset, self._key(name), mapping=fields)

    async def drop_from_hash(self, name: str, fields: list[str]) -> None:
        if fields:
            await self._call(self._client.hdel, self._key(name), *fields)

    async def load_task(self, task_id: str) -> dict[str, str] | None:
        """The task's record; None if there is none (or it expired)."""
        record = await self._call(self._client.hgetall, self._key("task", task_id))
        return {str(k): str(v) for k, v in record.items()} if record else None
