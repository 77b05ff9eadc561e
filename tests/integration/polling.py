"""The integration tier's one way to wait: poll for a condition, with a
generous bound and a failure that names what was awaited.

Tests wait for events, never for a length of time: a fixed sleep is either
too short on a busy machine or wasted on an idle one. The bound only stops a
test that would otherwise hang; it is not an assertion about speed.

- ``await eventually(...)`` in tests that run on the reactor (the condition
  may be a coroutine function, e.g. a call to Redis or to the daemon);
- ``eventually_blocking(...)`` in tests and fixtures that drive
  subprocesses and never touch the reactor (importing this module does not
  import the reactor).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet import task

T = TypeVar("T")

#: Long enough for a busy CI machine; reached only by a test that fails.
TIMEOUT = 60.0
INTERVAL = 0.05


def _truthy(value: object) -> bool:
    return bool(value)


def _describe(condition: Callable[..., object]) -> str:
    """The condition's own source line, for a failure message."""
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


def _failure(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"waited {timeout:g} s for {what}; last saw: {last!r}")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    until: Callable[[T], bool] = _truthy,
    what: str = "",
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """Call ``condition()`` (awaiting it if it returns an awaitable) every
    ``interval`` seconds, letting the reactor run in between, until
    ``until(value)`` holds; return that value. Fail after ``timeout`` with
    ``what`` (by default the condition's source) and the last value seen.
    An exception raised by the condition fails the wait at once."""
    from twisted.internet import reactor  # the one pytest-twisted runs

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise _failure(what or _describe(condition), timeout, value)
        await task.deferLater(reactor, interval, lambda: None)


def eventually_blocking(
    condition: Callable[[], T],
    *,
    until: Callable[[T], bool] = _truthy,
    what: str = "",
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """:func:`eventually` for tests that do not run on the reactor: the same
    rules, sleeping between attempts."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise _failure(what or _describe(condition), timeout, value)
        time.sleep(interval)
