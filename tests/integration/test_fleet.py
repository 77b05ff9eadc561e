"""archiverd.tasks.redis_store against a real redis-server on loopback: locks with
fencing, the fleet-wide slot limit, the queue, task records, and Redis going
away and coming back. Several RedisFleet objects stand for several daemons."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_twisted
from redis_fixture import RedisServer, redis, redis_server  # noqa: F401
from twisted.internet import defer, reactor, task

from archiverd.tasks.redis_store import FleetUnavailable, RedisFleet

pytestmark = pytest.mark.integration

MakeFleet = Callable[..., Awaitable[RedisFleet]]


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def race(*calls: Awaitable[object]) -> list[object]:
    """Run the calls at once (each on its own fleet's thread pool)."""
    return await defer.gatherResults(
        [defer.ensureDeferred(c) for c in calls],  # type: ignore[arg-type]
        consumeErrors=True,
    )


@pytest_twisted.async_yield_fixture
async def fleets(redis: RedisServer) -> AsyncIterator[MakeFleet]:  # noqa: F811
    """Make started RedisFleets on the test server; stopped afterwards."""
    made: list[RedisFleet] = []

    async def make(**kwargs: object) -> RedisFleet:
        fleet = RedisFleet(redis.url, reactor, instance=f"daemon-{len(made)}", **kwargs)
        made.append(fleet)
        await fleet.start()
        return fleet

    yield make
    for fleet in made:
        await fleet.stop()


async def three(make: MakeFleet, **kwargs: object) -> list[RedisFleet]:
    return [await make(**kwargs) for _ in range(3)]


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
async def test_expired_lock_can_be_taken_over(fleets: MakeFleet) -> None:
    a, b, _ = await three(fleets)
    assert await a.acquire("k", 0.2)
    assert await b.acquire("k", 0.2) is None
    await sleep(0.3)
    assert await b.acquire("k", 30) is not None


@pytest_twisted.ensureDeferred
async def test_renewed_lock_outlives_its_first_ttl(fleets: MakeFleet) -> None:
    a, b, _ = await three(fleets)
    token = await a.acquire("k", 0.3)
    assert token
    await sleep(0.15)
    assert await a.renew("k", token, 1.0)
    await sleep(0.3)  # past the first TTL
    assert await b.acquire("k", 30) is None
    assert await a.holds("k", token)


@pytest_twisted.ensureDeferred
async def test_release_by_a_non_holder_is_refused(fleets: MakeFleet) -> None:
    a, b, _ = await three(fleets)
    token = await a.acquire("k", 30)
    assert token
    assert not await b.release("k", "daemon-1:not-the-token")
    assert not await b.renew("k", "daemon-1:not-the-token", 30)
    assert await a.holds("k", token)
    assert await a.release("k", token)
    assert not await a.release("k", token)  # already gone
    assert await b.acquire("k", 30) is not None


@pytest_twisted.ensureDeferred
async def test_fencing_a_holder_that_lost_its_lock_knows_it(
    fleets: MakeFleet,
) -> None:
    """After expiry and a takeover the old holder's token no longer holds:
    it must not complete its upload, renew, or release the new holder's."""
    a, b, _ = await three(fleets)
    old = await a.acquire("k", 0.1)
    assert old
    await sleep(0.2)
    new = await b.acquire("k", 30)
    assert new
    assert not await a.holds("k", old)
    assert not await a.renew("k", old, 30)
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
    await ours.enqueue(token, 30)
    await ours.position(token)
    await ours.save_task("t", {"state": "PENDING"}, 30)
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
    await daemons[winner].release_slot(f"task-{winner}")
    assert await daemons[loser].take_slot(f"task-{loser}", 2, 30)


@pytest_twisted.ensureDeferred
async def test_slot_of_a_silent_holder_is_freed(fleets: MakeFleet) -> None:
    """A slot not renewed within its TTL (its daemon died) goes to the next;
    a renewed one stays; a holder retaking its own slot keeps it."""
    a, b, c = await three(fleets)
    assert await a.take_slot("dies", 2, 0.2)
    assert await b.take_slot("lives", 2, 0.4)
    assert await b.take_slot("lives", 2, 0.4)  # already held: renewed
    assert not await c.take_slot("waits", 2, 30)
    await sleep(0.25)
    assert await b.renew_slot("lives", 30)
    assert not await a.renew_slot("dies", 30)  # expired: not brought back
    assert await c.take_slot("waits", 2, 30)
    assert not await a.take_slot("dies", 2, 30)


# -- the queue -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_queue_positions(fleets: MakeFleet) -> None:
    a, b, c = await three(fleets)
    await a.enqueue("t1", 30)
    await b.enqueue("t2", 30)
    await c.enqueue("t3", 30)
    assert [await a.position(t) for t in ("t1", "t2", "t3")] == [0, 1, 2]
    await b.enqueue("t2", 30)  # renewing keeps the place
    assert await c.position("t2") == 1
    await a.dequeue("t1")
    assert [await b.position(t) for t in ("t1", "t2", "t3")] == [None, 0, 1]
    await a.enqueue("t1", 30)  # back in: at the end
    assert await a.position("t1") == 2


@pytest_twisted.ensureDeferred
async def test_queue_drops_entries_whose_holder_stopped_renewing(
    fleets: MakeFleet,
) -> None:
    a, b, _ = await three(fleets)
    await a.enqueue("gone", 0.2)
    await b.enqueue("stays", 0.6)
    assert await b.position("stays") == 1
    await sleep(0.3)
    await b.enqueue("stays", 30)
    assert await b.position("stays") == 0
    assert await a.position("gone") is None


# -- task records ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_task_record_round_trip_and_ttl(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    a, b, _ = await three(fleets, prefix="p:")
    fields = {"state": "PENDING", "bytes_received": "0", "error": ""}
    await a.save_task("task-1", fields, 30)
    assert await b.load_task("task-1") == fields
    assert 29_000 < redis.command("PTTL", "p:task:task-1") <= 30_000

    assert await a.update_task("task-1", {"state": "PROGRESS"}, 60)
    assert await b.load_task("task-1") == {**fields, "state": "PROGRESS"}
    assert 59_000 < redis.command("PTTL", "p:task:task-1") <= 60_000

    await a.save_task("task-1", {"state": "SUCCESS"}, 0.2)  # replaces
    assert await b.load_task("task-1") == {"state": "SUCCESS"}
    await sleep(0.3)
    assert await b.load_task("task-1") is None
    assert not await a.update_task("task-1", {"state": "PROGRESS"}, 30)
    assert await b.load_task("task-1") is None  # not brought back half-made


# -- Redis going away ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_stopped_then_back(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """With Redis stopped every call raises FleetUnavailable within 3 s and
    ``up`` is False; once it is back the same object works again."""
    a = await fleets()  # the default 2 s timeout
    token = await a.acquire("k", 30)
    assert token and a.up
    redis.stop()
    calls = [
        lambda: a.ping(),
        lambda: a.acquire("k2", 30),
        lambda: a.holds("k", token),
        lambda: a.take_slot("s", 2, 30),
        lambda: a.position("s"),
        lambda: a.load_task("t"),
        lambda: a.save_task("t", {"state": "PENDING"}, 30),
    ]
    for call in calls:
        began = time.monotonic()
        with pytest.raises(FleetUnavailable):
            await call()
        assert time.monotonic() - began < 3
        assert not a.up
    redis.start()  # empty: it kept nothing
    assert await a.acquire("k", 30) is not None
    assert a.up
    await a.save_task("t", {"state": "PENDING"}, 30)
    assert await a.load_task("t") == {"state": "PENDING"}


@pytest_twisted.ensureDeferred
async def test_up_follows_redis_without_calls(
    fleets: MakeFleet,
    redis: RedisServer,  # noqa: F811
) -> None:
    """The periodic ping keeps ``up`` current for /__heartbeat__."""
    a = await fleets(ping_interval=0.1)
    assert a.up
    redis.stop()
    for _ in range(50):
        if not a.up:
            break
        await sleep(0.1)
    assert not a.up
    redis.start()
    for _ in range(50):
        if a.up:
            break
        await sleep(0.1)
    assert a.up


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
    timeout, not more; the next calls after it resumes work."""
    a = await fleets(timeout=0.5)
    assert await a.acquire("k", 30)
    redis.pause()
    try:
        began = time.monotonic()
        with pytest.raises(FleetUnavailable):
            await a.acquire("k2", 30)
        assert time.monotonic() - began < 2.0  # 0.5 s, and room for a busy machine
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
