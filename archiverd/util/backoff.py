"""The one retry delay policy: exponential backoff, optionally capped and jittered.

Used by archiverd-fetch between polls and retries, and by the server between
attempts at upstream. Standard library only, since the client imports it.
"""

from __future__ import annotations

from collections.abc import Callable


class Backoff:
    """Delays that start at ``first`` seconds and double on every :meth:`next`.

    ``cap``: no delay before jitter exceeds it (None: no limit).
    ``jitter``: a source of floats in [0, 1), such as :func:`random.random`;
    when given, each delay is multiplied by ``0.5 + jitter()``, between half
    and one and a half times the plain one, so that callers that failed
    together do not retry together. None: the plain delays, exactly.
    """

    def __init__(
        self,
        first: float,
        cap: float | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        if first < 0 or (cap is not None and cap < first):
            raise ValueError(f"need 0 <= first <= cap, not {first!r}, {cap!r}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._next = first

    def next(self, asked: float | None = None) -> float:
        """The next delay, and the one after doubles.

        ``asked`` (a server's ``Retry-After``) wins when given, as is: the
        server knows when it will have room. The sequence still moves on, so
        asking again after a failure does not start over from ``first``.
        """
        delay = self._next
        doubled = delay * 2
        self._next = doubled if self.cap is None else min(doubled, self.cap)
        if asked is not None:
            return asked
        return delay if self.jitter is None else delay * (0.5 + self.jitter())

    def reset(self) -> None:
        """Start again from ``first`` (after a success)."""
        self._next = self.first
