"""Deferreds with more than one waiter (:class:`Shared`, :class:`SingleFlight`)
or none that may stop them (:func:`shielded`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")


class Shared(Generic[T]):
    """The outcome of one Deferred, handed to every waiter.

    Awaiting a Deferred hands its result to the awaiting coroutine and leaves
    None behind, so a Deferred can be awaited only once; this keeps the result
    and gives each waiter a Deferred of its own.
    """

    def __init__(self, d: Deferred[T]) -> None:
        self._done = False
        self._result: Any = None
        self._waiters: list[Deferred[T]] = []
        d.addBoth(self._fire)

    @property
    def done(self) -> bool:
        return self._done

    def _fire(self, result: Any) -> None:
        self._done = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def wait(self) -> Deferred[T]:
        """A new Deferred that fires with the shared outcome."""
        if not self._done:
            waiter: Deferred[T] = Deferred()
            self._waiters.append(waiter)
            return waiter
        if isinstance(self._result, Failure):
            return fail(self._result)
        return succeed(self._result)


K = TypeVar("K", bound=Hashable)


class SingleFlight(Generic[K, T]):
    """Concurrent calls for one key share one run (and its outcome).

    A thousand clients asking at once for one archive make one storage look,
    one claim or one upstream lookup, not a thousand. Once a run ends, the
    next call for its key starts a new one.
    """

    def __init__(self) -> None:
        self._running: dict[K, Shared[T]] = {}

    def run(self, key: K, start: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """The outcome of the run for ``key``: the one in progress, or a new
        one of ``start()``."""
        flight = self._running.get(key)
        if flight is None:
            flight = Shared(Deferred.fromCoroutine(start()))
            if not flight.done:
                self._running[key] = flight
                flight.wait().addBoth(self._landed, key, flight)
        return flight.wait()

    def _landed(self, _: object, key: K, flight: Shared[T]) -> None:
        if self._running.get(key) is flight:
            del self._running[key]


def shielded(d: Deferred[T]) -> Deferred[T]:
    """A Deferred with ``d``'s result whose cancellation leaves ``d`` running."""
    proxy: Deferred[T] = Deferred()

    def relay(result: Any) -> None:
        if not proxy.called:
            if isinstance(result, Failure):
                proxy.errback(result)
            else:
                proxy.callback(result)

    d.addBoth(relay)
    return proxy
