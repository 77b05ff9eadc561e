"""A dedicated pool of threads for blocking calls, driven from the reactor.

Blocking clients (botocore for storage, redis-py for the fleet) each run on a
pool of their own, never on the reactor thread and never on the reactor's
default pool (that one resolves DNS). :class:`BlockingPool` is that pool:

- its threads are daemon threads, so a call stuck past the shutdown grace
  period does not keep the process alive;
- :meth:`BlockingPool.run` is called on the reactor thread and returns a
  Deferred that fires there;
- :meth:`BlockingPool.stop` waits for the calls in progress without blocking
  the reactor: ``ThreadPool.stop()`` joins every thread, so it runs on a
  helper thread that hands the news back with ``callFromThread``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class PoolStopped(Exception):
    """A call was handed to a pool that was stopped or abandoned."""


class BlockingPool:
    """Up to ``threads`` daemon threads named after ``name``, started by
    :meth:`start` and stopped by :meth:`stop` (or :meth:`abandon`); once
    stopped, it may be started again.

    Every method is called on the reactor thread. ``reactor`` needs only
    ``callFromThread``.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str, threads: int) -> None:
        self.name = name
        self._reactor = reactor
        self._threads = threads
        self._pool = self._new_pool()
        #: The stop under way or done, if any: no calls are taken meanwhile.
        self._stop: _Stop | None = None

    def _new_pool(self) -> ThreadPool:
        pool = ThreadPool(minthreads=0, maxthreads=self._threads, name=self.name)
        pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        return pool

    @property
    def running(self) -> bool:
        """Started, and neither stopped nor abandoned."""
        return self._pool.started and self._stop is None

    def start(self) -> None:
        """Start taking calls (threads are made as calls need them)."""
        if self._stop is not None:
            if not self._stop.joined.is_set():
                raise PoolStopped(f"{self.name}: still stopping")
            self._pool, self._stop = self._new_pool(), None
        self._pool.start()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """``fn(*args, **kwargs)`` on a pool thread; its result (or failure)
        on the reactor thread. A call made before :meth:`start` waits for it;
        one made after :meth:`stop` or :meth:`abandon` fails with
        :class:`PoolStopped` (ThreadPool would drop it, and its Deferred would
        never fire)."""
        if self._stop is not None:
            return fail(PoolStopped(f"{self.name}: stopped"))
        return deferToThreadPool(self._reactor, self._pool, fn, *args, **kwargs)

    async def stop(self) -> None:
        """Take no more calls; return once the calls in progress and those
        queued have finished and every thread has exited. The reactor keeps
        running meanwhile."""
        stop = self._stop_in_background()
        if stop.joined.is_set():
            return
        waiter: Deferred[None] = Deferred()
        stop.waiters.append(waiter)
        await waiter

    def abandon(self) -> None:
        """Take no more calls, and return at once: threads still in a call
        finish it (or are dropped when the process exits) in the background."""
        self._stop_in_background()

    def _stop_in_background(self) -> _Stop:
        if self._stop is not None:
            return self._stop
        stop = self._stop = _Stop()
        pool = self._pool

        def join() -> None:
            pool.stop()
            stop.joined.set()
            self._reactor.callFromThread(stop.wake)

        threading.Thread(target=join, name=f"{self.name}-stop", daemon=True).start()
        return stop


class _Stop:
    """One stop of a pool: whether its threads have all exited, and who
    waits for that on the reactor thread."""

    def __init__(self) -> None:
        #: Set on the stopping thread once ThreadPool.stop() has returned.
        self.joined = threading.Event()
        self.waiters: list[Deferred[None]] = []

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)
