"""The daemon's clock: monotonic for every deadline, the wall clock for dates.

Twisted schedules every ``callLater`` (so every ``LoopingCall``, every
``Deferred.addTimeout``, treq's timeouts, the HTTP channel's timeouts) at
``reactor.seconds() + delay``, and ``reactor.seconds`` is ``time.time``: a wall
clock that NTP or an operator may step. Stepped back an hour, every pending
deadline moved an hour away (a stalled fetch stayed STARTED); stepped forward
two hours, they all fired at once (a healthy fetch failed "took longer than
30s"). Twisted (26.10) has no monotonic option, so archiverd gives its reactor
``time.monotonic`` as its clock before anything is scheduled. Everything that
measures time through the reactor then measures it monotonically too: task
durations and expiry, the caches' ages, the shutdown grace period.

What needs a date keeps the wall clock, apart from the reactor: signed URLs'
expiry (``storage/files.py`` reads ``time.time``; botocore signs with its own),
log timestamps (``twisted.logger`` stamps events with ``time.time``), and the
access log's dates (:class:`WallDated`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer


def schedule_on_monotonic(reactor: Any) -> None:
    """Make ``reactor`` keep time, and so schedule, on the monotonic clock.

    Called once, before anything is scheduled: a call already pending was
    placed on the wall clock, and would fire decades late.
    """
    if reactor.getDelayedCalls():
        raise RuntimeError("the reactor's clock must change before any callLater")
    reactor.seconds = time.monotonic


@implementer(IReactorTime)
class WallDated:
    """``reactor``'s scheduling, with the wall clock for ``seconds()``: for
    what shows dates (``twisted.web.http.HTTPFactory`` stamps its access log
    with ``reactor.seconds()``), never for measuring time."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def seconds(self) -> float:
        return time.time()

    def callLater(  # noqa: N802 (Twisted API)
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> IDelayedCall:
        return self._reactor.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:  # noqa: N802
        return self._reactor.getDelayedCalls()
