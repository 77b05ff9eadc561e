"""A result that many coroutines can await."""

from __future__ import annotations

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
