"""archiverd.util.threads.BlockingPool on the real reactor: calls run on the
pool's daemon threads and answer on the reactor thread; stopping waits for the
calls in flight without blocking the reactor; abandoning does not wait.

No sleeps: a call in flight is one blocked on an Event that the test sets.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from archiverd.util.threads import BlockingPool, PoolStopped

#: Bounds a blocked call if the test that should release it fails first.
BOUND = 60.0


class Blocked:
    """A call that holds its pool thread until :meth:`release`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self) -> bool:
        self.thread = threading.current_thread()
        self.entered.set()
        # True when the test let it go; False if it waited out BOUND (which
        # is what a reactor blocked by stop() or abandon() would lead to).
        return self._release.wait(BOUND)

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def blocked() -> Iterator[Blocked]:
    call = Blocked()
    yield call
    call.release()  # never leave a thread behind


async def next_turn() -> None:
    """Return after one turn of the reactor (it is not blocked)."""
    await deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_call_runs_on_a_daemon_thread_and_answers_on_the_reactor() -> None:
    pool = BlockingPool(reactor, "archiverd-test", 2)
    pool.start()
    reactor_thread = threading.current_thread()
    try:
        answered_on: list[threading.Thread] = []
        d = pool.run(lambda a, b=0: (threading.current_thread(), a + b), 1, b=2)
        d.addCallback(lambda r: answered_on.append(threading.current_thread()) or r)
        thread, total = await d
        assert total == 3
        assert thread is not reactor_thread
        assert thread.name.startswith("PoolThread-archiverd-test-")
        assert thread.daemon
        assert answered_on == [reactor_thread]
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
    finally:
        await pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_call_made_before_start_runs_once_started() -> None:
    pool = BlockingPool(reactor, "archiverd-test", 1)
    d = pool.run(lambda: "ran")
    await next_turn()
    assert not d.called
    pool.start()
    try:
        assert await d == "ran"
    finally:
        await pool.stop()


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_the_call_in_flight_without_blocking_the_reactor(
    blocked: Blocked,
) -> None:
    pool = BlockingPool(reactor, "archiverd-test", 2)
    pool.start()
    call = pool.run(blocked)
    assert blocked.entered.wait(BOUND)

    stopping = Deferred.fromCoroutine(pool.stop())
    also_stopping = Deferred.fromCoroutine(pool.stop())
    await next_turn()
    assert not stopping.called and not also_stopping.called
    assert not pool.running
    with pytest.raises(PoolStopped):
        await pool.run(lambda: None)  # no new calls once stopping

    blocked.release()
    assert await call is True  # let go by the test, not by the bound
    await stopping
    await also_stopping
    assert blocked.thread is not None and not blocked.thread.is_alive()


@pytest_twisted.ensureDeferred
async def test_abandon_returns_at_once_and_the_call_still_answers(
    blocked: Blocked,
) -> None:
    pool = BlockingPool(reactor, "archiverd-test", 2)
    pool.start()
    call = pool.run(blocked)
    assert blocked.entered.wait(BOUND)

    pool.abandon()
    await next_turn()
    assert not call.called
    with pytest.raises(PoolStopped):
        await pool.run(lambda: None)

    blocked.release()
    assert await call is True
    await pool.stop()  # returns once the abandoned thread has exited
    assert blocked.thread is not None and not blocked.thread.is_alive()


@pytest_twisted.ensureDeferred
async def test_a_pool_never_started_stops_at_once() -> None:
    pool = BlockingPool(reactor, "archiverd-test", 1)
    await pool.stop()
    with pytest.raises(PoolStopped):
        await pool.run(lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_stopped_pool_starts_again() -> None:
    pool = BlockingPool(reactor, "archiverd-test", 1)
    pool.start()
    assert await pool.run(lambda: 1) == 1
    await pool.stop()
    pool.start()
    try:
        assert pool.running
        assert await pool.run(lambda: 2) == 2
    finally:
        await pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_pool_still_stopping_cannot_start(blocked: Blocked) -> None:
    pool = BlockingPool(reactor, "archiverd-test", 1)
    pool.start()
    call = pool.run(blocked)
    assert blocked.entered.wait(BOUND)
    stopping = Deferred.fromCoroutine(pool.stop())
    with pytest.raises(PoolStopped, match="still stopping"):
        pool.start()
    blocked.release()
    assert await call is True
    await stopping
