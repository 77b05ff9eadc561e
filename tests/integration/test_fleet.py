"""archiverd.tasks.redis_store against a real redis-server on loopback: locks with
fencing, the fleet-wide slot limit, the queue, task records, and Redis going
away and coming back. Several RedisFleet objects stand for several daemons.

Expiry is awaited, never slept for: a TTL that must not have run out yet is at
least a second long, and "it has run out" is seen in Redis itself."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
from polling import eventually
from redis_fixture import RedisServer, redis, redis_server  # noqa: F401
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from archiverd.tasks.redis_store import (
    LOCK_LOST,
    SLOT_TAKEN,
    FleetUnavailable,
    RedisFleet,
)

pytestmark = pytest.mark.integration

MakeFleet = Callable[..., Awaitable[RedisFleet]]


async def race(*calls: Awaitable[object]) -> list[object]:
    """Run the calls at once (each on its own fleet's thread pool)."""
    return await defer.gatherResults(
        [defer.ensureDeferred(c) for c in calls],  # type: ignore[arg-type]
        consumeErrors=True,
    )


async def redis_clock_passes(fleet: RedisFleet, seconds: float) -> None:
    """Return once ``seconds`` have passed on Redis' clock since the call:
    a witness lock taken now for ``seconds`` has expired. Anything given a TTL
    of ``seconds`` (or less) before the call has expired too."""
    witness = f"witness-{secrets.token_hex(4)}"
    assert await fleet.acquire(witness, seconds)
    await eventually(
        lambda: fleet.acquire(witness, 30),
        what=f"the witness lock taken for {seconds:g} s to expire",
    )


class TimeoutClock(Clock):
    """Time that the test moves (the fleet's timeouts and pings), with the
    results of Redis calls handed from the pool threads to the real reactor."""

    def callFromThread(  # noqa: N802 (IReactorFromThreads)
        self, f: Callable[..., object], *a: Any, **kw: Any
    ) -> None:
        reactor.callFromThread(f, *a, **kw)


@pytest_twisted.async_yield_fixture
async def fleets(redis: RedisServer) -> AsyncIterator[MakeFleet]:  # noqa: F811
    """Make started RedisFleets on the test server; stopped afterwards."""
    made: list[RedisFleet] = []

    async def make(clock: Any = reactor, **kwargs: Any) -> RedisFleet:
        fleet = RedisFleet(redis.url, clock, instance=f"daemon-{len(made)}", **kwargs)
        made.append(fleet)
        await fleet.start()
        return fleet

    yield make
    for fleet in made:
        await fleet.stop()


async def three(make: MakeFleet, **kwargs: object) -> list[RedisFleet]:
    return [await make(**kwargs) for _ in range(3)]


def lock_ttl(redis: RedisServer, key: str, prefix: str = "archiverd:") -> int:  # noqa: F811
    """The lock's remaining TTL in ms, as Redis reports it."""
    return int(redis.command("PTTL", f"{prefix}lock:{key}"))


# -- locks ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lock_is_exclusive_across_racing_daemons(fleets: MakeFleet) -> None:
    """Three daemons racing for each of 20 locks: exactly one token each."""
    daemons = await three(fleets)
    for n in range(20):
        tokens = await race(*(d.acquire(f"archive-{n}", 30) for d in daemons))
        winners = [t for t in tokens if t is not None]
        assert len(winners) == 1, tokens
        assert isinstance(winners[0], str)


@pytest_twisted.ensureDeferred
async def test_token_names_its_daemon_and_is_unique(fleets: MakeFleet) -> None:
    a = await fleets()
    first = await a.acquire("k1", 30)
    second = await a.acquire("k2", 30)
    assert first and second and first != second
    assert first.startswith("daemon-0:")


@pytest_twisted.ensureDeferred
async def test_expired_lock_can_be_taken_over(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """A lock lasts its TTL, then another daemon can take it."""
    a, b, _ = await three(fleets)
    assert await a.acquire("k", 1.0)
    assert 0 < lock_ttl(redis, "k") <= 1000
    assert await b.acquire("k", 30) is None
    token = await eventually(
        lambda: b.acquire("k", 30), what="b to take the lock a let expire"
    )
    assert await b.holds("k", token)


@pytest_twisted.ensureDeferred
async def test_keep_renews_the_lock_while_it_is_ours(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """The holder's heartbeat (keep) extends its lock to the new TTL: the
    lock outlives its first TTL and nobody else can take it."""
    a, b, _ = await three(fleets)
    token = await a.acquire("k", 1.0)
    assert token
    assert await a.keep("k", token, 30, "t", {"state": "STARTED"}, 30, seq=1)
    assert 1000 < lock_ttl(redis, "k") <= 30_000
    await redis_clock_passes(a, 1.0)  # past the first TTL
    assert await b.acquire("k", 30) is None
    assert await a.holds("k", token)


@pytest_twisted.ensureDeferred
async def test_a_non_holder_can_neither_release_nor_keep(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """A token that does not hold the lock cannot release it, renew it or
    write the task record; the holder can release it, once."""
    a, b, _ = await three(fleets)
    token = await a.acquire("k", 30)
    assert token
    assert not await b.release("k", "daemon-1:not-the-token")
    assert not await b.keep(
        "k", "daemon-1:not-the-token", 60, "t", {"state": "STARTED"}, 60, seq=1
    )
    assert lock_ttl(redis, "k") <= 30_000  # not renewed
    assert await b.load_task("t") is None  # nothing written
    assert await a.holds("k", token)
    assert await a.release("k", token)
    assert not await a.release("k", token)  # already gone
    assert await b.acquire("k", 30) is not None


@pytest_twisted.ensureDeferred
async def test_fencing_a_holder_that_lost_its_lock_knows_it(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """After expiry and a takeover the old holder's token no longer holds:
    it must not complete its upload, renew the lock, overwrite the new
    holder's record (keep), or release the new holder's lock. The new
    holder's first write replaces the old holder's record, whatever its seq."""
    a, b, _ = await three(fleets)
    old = await a.acquire("k", 1.0)
    assert old
    assert await a.keep("k", old, 1.0, "t", {"state": "PROGRESS", "by": "a"}, 30, seq=5)
    new = await eventually(
        lambda: b.acquire("k", 30), what="b to take the lock a let expire"
    )
    assert await b.keep("k", new, 30, "t", {"state": "PROGRESS", "by": "b"}, 30, seq=1)
    by_b = {"token": new, "seq": "1", "state": "PROGRESS", "by": "b"}
    assert await a.load_task("t") == by_b

    assert not await a.holds("k", old)
    assert not await a.keep(
        "k", old, 60, "t", {"state": "SUCCESS", "by": "a"}, 60, seq=6
    )
    assert await a.load_task("t") == by_b
    assert lock_ttl(redis, "k") <= 30_000  # not renewed by the old holder
    assert not await a.release("k", old)
    assert await b.holds("k", new)


@pytest_twisted.ensureDeferred
async def test_every_key_is_under_the_prefix(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    ours = await fleets(prefix="test-prefix:")
    other = await fleets(prefix="other:")
    token = await ours.acquire("k", 30)
    assert token
    assert await other.acquire("k", 30) is not None  # another fleet's lock
    await ours.take_slot(token, 1, 30)
    other_token = await ours.acquire("k2", 30)
    assert other_token
    assert await take_turn(ours, other_token, "k2") == 0  # queued
    assert await ours.keep("k", token, 30, "t", {"state": "PENDING"}, 30, seq=1)
    keys = redis.command("KEYS", "*")
    mine = [k for k in keys if not k.startswith("other:")]
    assert mine and all(k.startswith("test-prefix:") for k in mine), keys


# -- fleet-wide slots ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slot_limit_holds_across_daemons(fleets: MakeFleet) -> None:
    daemons = await three(fleets)
    taken = await race(
        *(d.take_slot(f"task-{i}", 2, 30) for i, d in enumerate(daemons))
    )
    assert sorted(taken) == [False, True, True]
    loser = taken.index(False)
    winner = taken.index(True)
    assert not await daemons[loser].take_slot(f"task-{loser}", 2, 30)
    await daemons[winner].finish("k", f"task-{winner}", "t", None, 30, seq=1)
    assert await daemons[loser].take_slot(f"task-{loser}", 2, 30)


@pytest_twisted.ensureDeferred
async def test_slot_of_a_silent_holder_is_freed(fleets: MakeFleet) -> None:
    """A slot not renewed within its TTL (its daemon died) goes to the next;
    a holder retaking its own slot renews it."""
    a, b, c = await three(fleets)
    assert await a.take_slot("dies", 2, 1.0)
    assert await b.take_slot("lives", 2, 1.0)
    assert await b.take_slot("lives", 2, 30)  # already held: renewed
    assert not await c.take_slot("waits", 2, 30)
    await redis_clock_passes(c, 1.0)  # both first TTLs are over
    assert await c.take_slot("waits", 2, 30)
    assert not await a.take_slot("dies", 2, 30)


# -- the queue -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_queue_positions(fleets: MakeFleet) -> None:
    """Tasks that find no slot wait first come, first served: each turn keeps
    a task's place and says how many wait ahead; one that left and comes
    back is at the end."""
    a, b, c = await three(fleets)
    t1, t2, t3 = [await d.acquire(f"t{n}", 30) for n, d in enumerate((a, b, c), 1)]
    assert t1 and t2 and t3
    assert [
        await take_turn(a, t1, "t1", limit=0),
        await take_turn(b, t2, "t2", limit=0),
        await take_turn(c, t3, "t3", limit=0),
    ] == [0, 1, 2]
    assert await take_turn(b, t2, "t2", limit=0, seq=2) == 1  # kept its place
    assert await a.finish("t1", t1, "t1", {"state": "FAILURE"}, 30, seq=2)
    assert await take_turn(c, t3, "t3", limit=0, seq=2) == 1
    t1 = await a.acquire("t1", 30)
    assert t1
    assert await take_turn(a, t1, "t1", limit=0) == 2  # back in: at the end


@pytest_twisted.ensureDeferred
async def test_queue_drops_entries_whose_holder_stopped_renewing(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    a, b, _ = await three(fleets)
    gone = await a.acquire("gone", 30)
    stays = await b.acquire("stays", 30)
    assert gone and stays
    assert await take_turn(a, gone, "gone", limit=0, lock_ttl=1.0) == 0
    assert await take_turn(b, stays, "stays", limit=0, lock_ttl=1.0) == 1
    assert await take_turn(b, stays, "stays", limit=0, seq=2) == 1  # in time
    await redis_clock_passes(b, 1.0)  # both first TTLs are over
    assert await take_turn(b, stays, "stays", limit=0, seq=3) == 0
    assert redis.command("ZRANK", "archiverd:queue", gone) is None


# -- task records ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_keep_replaces_the_record_whole_and_it_expires(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """Each write by the holder replaces the whole record (no field of an
    earlier write is left) and sets its TTL; an expired record is gone, and
    the next write makes it whole again."""
    a, b, _ = await three(fleets, prefix="p:")
    token = await a.acquire("k", 30)
    assert token

    def record_ttl() -> int:
        return int(redis.command("PTTL", "p:task:task-1"))

    fields = {"state": "PENDING", "bytes_received": "0", "error": ""}
    assert await a.keep("k", token, 30, "task-1", fields, 30, seq=1)
    assert await b.load_task("task-1") == {"token": token, "seq": "1", **fields}
    assert 29_000 < record_ttl() <= 30_000

    progress = {"state": "PROGRESS", "bytes_received": "5"}
    assert await a.keep("k", token, 30, "task-1", progress, 60, seq=2)
    assert await b.load_task("task-1") == {"token": token, "seq": "2", **progress}
    assert 59_000 < record_ttl() <= 60_000

    assert await a.keep("k", token, 30, "task-1", {"state": "SUCCESS"}, 1.0, seq=3)
    assert await b.load_task("task-1") == {
        "token": token,
        "seq": "3",
        "state": "SUCCESS",
    }
    await eventually(
        lambda: b.load_task("task-1"),
        until=lambda record: record is None,
        what="the record kept for 1 s to expire",
    )
    done = {"state": "SUCCESS", "size": "7"}
    assert await a.keep("k", token, 30, "task-1", done, 30, seq=4)
    assert await b.load_task("task-1") == {"token": token, "seq": "4", **done}


@pytest_twisted.ensureDeferred
async def test_an_older_write_never_overwrites_a_newer_one(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """Writes can reach Redis out of order over the pool's connections: one
    whose seq is not above the record's changes neither the record nor its
    TTL, though it still renews the lock (the holder is alive)."""
    a, b, _ = await three(fleets, prefix="p:")
    token = await a.acquire("k", 30)
    assert token
    assert await a.keep("k", token, 30, "t", {"state": "PROGRESS"}, 30, seq=2)
    assert await a.keep("k", token, 60, "t", {"state": "PENDING"}, 60, seq=1)
    assert await a.keep("k", token, 60, "t", {"state": "OTHER"}, 60, seq=2)
    assert await b.load_task("t") == {"token": token, "seq": "2", "state": "PROGRESS"}
    assert redis.command("PTTL", "p:task:t") <= 30_000
    assert 30_000 < lock_ttl(redis, "k", prefix="p:") <= 60_000

    # Twenty writes sent at once, the newest first: the newest stays.
    writes = [
        a.keep("k", token, 30, "t", {"n": str(n)}, 30, seq=n) for n in range(30, 10, -1)
    ]
    assert await race(*writes) == [True] * 20
    assert await b.load_task("t") == {"token": token, "seq": "30", "n": "30"}


# -- a task's steps, one round trip each ----------------------------------------------

STARTED = {"state": "STARTED", "status": "Downloading"}
QUEUED = {"state": "PENDING", "status": "queued"}


async def take_turn(
    fleet: RedisFleet,
    token: str,
    task_id: str,
    limit: int = 1,
    seq: int = 1,
    lock_ttl: float = 30,
) -> int:
    """``task_id``'s turn (its lock is named ``task_id`` too)."""
    return await fleet.turn(
        task_id,
        token,
        lock_ttl,
        task_id,
        limit=limit,
        started=STARTED,
        queued=QUEUED,
        record_ttl=30,
        seq=seq,
    )


@pytest_twisted.ensureDeferred
async def test_a_turn_takes_a_free_slot_and_writes_the_record_as_started(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """One call: the lock renewed, the slot taken, the record says started;
    the next task, finding no slot free, is queued with its record saying so,
    and learns how many wait ahead of it."""
    a, b, _ = await three(fleets)
    one = await a.acquire("one", 1.0)
    two = await b.acquire("two", 30)
    three_ = await b.acquire("three", 30)
    assert one and two and three_
    assert await take_turn(a, one, "one") == SLOT_TAKEN
    assert 1000 < lock_ttl(redis, "one") <= 30_000  # renewed to the turn's ttl
    assert await b.load_task("one") == {"token": one, "seq": "1", **STARTED}
    assert not await b.take_slot("other", 1, 30)  # the one slot is taken

    assert await take_turn(b, two, "two") == 0
    assert await take_turn(b, three_, "three") == 1
    assert await a.load_task("two") == {"token": two, "seq": "1", **QUEUED}
    assert await take_turn(b, two, "two", seq=2) == 0  # keeps its place

    # The first ends: its slot is given back, and the next turn takes it.
    assert await a.finish("one", one, "one", {"state": "SUCCESS"}, 60, seq=2)
    assert await take_turn(b, three_, "three", seq=2) == 1  # still behind two
    assert await take_turn(b, two, "two", seq=3) == SLOT_TAKEN
    assert redis.command("ZRANK", "archiverd:queue", two) is None  # it left
    assert await a.load_task("two") == {"token": two, "seq": "3", **STARTED}


@pytest_twisted.ensureDeferred
async def test_a_turn_without_the_lock_does_nothing(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """A task whose lock another daemon took over takes no slot, joins no
    queue and writes no record."""
    a, b, _ = await three(fleets)
    assert await b.acquire("k", 30)
    assert await take_turn(a, "daemon-0:not-the-token", "k") == LOCK_LOST
    assert await a.load_task("k") is None
    assert redis.command("ZCARD", "archiverd:queue") == 0
    assert await b.take_slot("other", 1, 30)  # the slot was left free


@pytest_twisted.ensureDeferred
async def test_finish_frees_the_slot_and_queue_writes_the_outcome_and_releases(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    a, b, _ = await three(fleets, prefix="p:")
    token = await a.acquire("k", 30)
    assert token
    assert await take_turn(a, token, "k") == SLOT_TAKEN
    assert await a.finish("k", token, "k", {"state": "SUCCESS"}, 60, seq=2)
    assert await b.load_task("k") == {"token": token, "seq": "2", "state": "SUCCESS"}
    assert 59_000 < int(redis.command("PTTL", "p:task:k")) <= 60_000
    assert redis.command("ZCARD", "p:slots") == 0
    assert await b.acquire("k", 30) is not None  # released


@pytest_twisted.ensureDeferred
async def test_finish_after_losing_the_lock_only_frees_the_slot_and_queue(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """A holder that lost its lock (known or not) gives back its slot and
    place but neither overwrites the new holder's record nor releases its
    lock."""
    a, b, _ = await three(fleets)
    old = await a.acquire("k", 1.0)
    assert old
    assert await take_turn(a, old, "k", limit=5) == SLOT_TAKEN
    redis.command("ZADD", "archiverd:queue", "1", old)  # as if queued again
    new = await eventually(
        lambda: b.acquire("k", 30), what="b to take the lock a let expire"
    )
    assert await b.keep("k", new, 30, "k", {"state": "STARTED"}, 30, seq=1)
    for fields in ({"state": "SUCCESS"}, None):
        assert not await a.finish("k", old, "k", fields, 60, seq=9)
        assert await b.load_task("k") == {"token": new, "seq": "1", "state": "STARTED"}
        assert await b.holds("k", new)
    assert redis.command("ZSCORE", "archiverd:slots", old) is None
    assert redis.command("ZRANK", "archiverd:queue", old) is None


@pytest_twisted.ensureDeferred
async def test_keep_renews_the_slot_when_asked(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """The working holder's heartbeat renews its lock, its slot and its
    record in one call; an expired slot is not brought back."""
    a, b, _ = await three(fleets)
    token = await a.acquire("k", 30)
    late = await a.acquire("late", 30)
    assert token and late
    assert await a.take_slot(token, 2, 1.0)
    assert await a.keep("k", token, 30, "t", {"state": "PROGRESS"}, 30, 1, 30)
    assert await a.take_slot(late, 2, 1.0)
    await redis_clock_passes(a, 1.0)  # past both slots' first TTL
    # Too late for this one: its lock and record are kept, its slot is not.
    assert await a.keep("late", late, 30, "u", {"state": "PROGRESS"}, 30, 1, 30)
    assert await b.take_slot("next", 2, 30)  # late's slot was free to take
    assert not await b.take_slot("after", 2, 30)  # k's still held: renewed


# -- Redis going away ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_stopped_then_back(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """With Redis stopped every call raises FleetUnavailable at once, on the
    refused connection rather than by waiting out its timeout, and ``up`` is
    False; once it is back the same object works again."""
    a = await fleets()  # the default 2 s timeout
    token = await a.acquire("k", 30)
    assert token and a.up
    redis.stop()
    calls = [
        lambda: a.ping(),
        lambda: a.acquire("k2", 30),
        lambda: a.holds("k", token),
        lambda: a.release("k", token),
        lambda: a.take_slot("s", 2, 30),
        lambda: a.load_task("t"),
        lambda: a.keep("k", token, 30, "t", {"state": "PENDING"}, 30, seq=1),
        lambda: take_turn(a, token, "t"),
        lambda: a.finish("k", token, "t", {"state": "SUCCESS"}, 30, seq=2),
    ]
    for call in calls:
        with pytest.raises(FleetUnavailable) as raised:
            await call()
        assert "no answer within" not in str(raised.value), raised.value
        assert not a.up
    redis.start()  # empty: it kept nothing
    token = await a.acquire("k", 30)
    assert token is not None
    assert a.up
    assert await a.keep("k", token, 30, "t", {"state": "PENDING"}, 30, seq=1)
    assert await a.load_task("t") == {"token": token, "seq": "1", "state": "PENDING"}


@pytest_twisted.ensureDeferred
async def test_up_follows_redis_without_calls(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """The periodic ping keeps ``up`` current for /__heartbeat__."""
    a = await fleets(ping_interval=0.1)
    assert a.up
    redis.stop()
    await eventually(lambda: not a.up, what="up to turn False with Redis stopped")
    redis.start()
    await eventually(lambda: a.up, what="up to turn True with Redis back")


@pytest_twisted.ensureDeferred
async def test_start_with_redis_down_does_not_raise(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    redis.stop()
    a = await fleets(timeout=1.0)
    assert not a.up
    with pytest.raises(FleetUnavailable):
        await a.ping()
    redis.start()
    await a.ping()
    assert a.up


@pytest_twisted.ensureDeferred
async def test_hung_redis_times_out(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """A Redis that accepts but never answers (SIGSTOP) costs a caller the
    timeout, not more: on a clock the test moves, the call is still waiting
    just before ``timeout`` and has failed at ``timeout``. The next calls
    after Redis resumes work."""
    clock = TimeoutClock()
    a = await fleets(clock=clock, timeout=0.5)
    assert await a.acquire("k", 30)
    redis.pause()
    try:
        call = defer.Deferred.fromCoroutine(a.acquire("k2", 30))
        clock.advance(0.499)
        assert not call.called
        clock.advance(0.001)
        assert call.called
        with pytest.raises(FleetUnavailable, match="no answer within 0.5 s"):
            await call
        assert not a.up
    finally:
        redis.resume()
    await a.ping()
    assert a.up


@pytest_twisted.ensureDeferred
async def test_timed_out_calls_waiting_for_a_thread_are_not_made(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """Locks asked for while the only thread is stuck are not taken later
    behind their callers' backs (nobody would release them). The one already
    sent when Redis froze cannot be unsent: it may be taken, and expires."""
    a = await fleets(timeout=0.5, threads=1)
    redis.pause()
    try:
        results = await race(
            *(_unavailable(a.acquire(f"late-{n}", 30)) for n in range(3))
        )
        assert results == [True, True, True]
    finally:
        redis.resume()
    await a.ping()
    assert set(redis.command("KEYS", "archiverd:lock:late-*")) <= {
        "archiverd:lock:late-0"
    }
    assert redis.command("PTTL", "archiverd:lock:late-0") in (-2, *range(1, 30_001))


async def _unavailable(call: Awaitable[object]) -> bool:
    try:
        await call
    except FleetUnavailable:
        return True
    return False


# -- pre-warm's watch lock: one daemon watches each repo -------------------------


@pytest_twisted.ensureDeferred
async def test_exactly_one_daemon_watches_a_repo_and_another_takes_over(
    fleets: MakeFleet,
) -> None:
    from archiverd.prewarm.watcher import WatchLock

    a, b = await fleets(), await fleets()
    first, second = WatchLock(a, ttl=1.0), WatchLock(b, ttl=1.0)
    results = await race(first.hold("hgmo/ash"), second.hold("hgmo/ash"))
    assert sorted(results) == [(False, False), (True, True)]  # type: ignore[type-var]
    holder, other = (first, second) if results[0] == (True, True) else (second, first)
    holder_fleet = a if holder is first else b
    assert await holder.hold("hgmo/ash") == (True, False)  # renewed, not new
    assert await other.hold("hgmo/ash") == (False, False)
    assert await other.hold("hgmo/elm") == (True, True)  # each repo its own lock
    # The holder stops renewing (it died): once the lock expires, the
    # other daemon takes the repo over.
    await redis_clock_passes(holder_fleet, 1.0)
    assert await other.hold("hgmo/ash") == (True, True)
    await holder.release_all()  # a stale token releases nothing
    assert await holder.hold("hgmo/ash") == (False, False)
    assert await other.hold("hgmo/ash") == (True, False)
