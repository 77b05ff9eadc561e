"""archiverd.util.clock: the reactor keeps time on the monotonic clock; only
what shows a date reads the wall clock."""

from __future__ import annotations

import time

import pytest
from twisted.internet.task import Clock

from archiverd.util.clock import WallDated, schedule_on_monotonic


def test_the_reactor_keeps_time_on_the_monotonic_clock() -> None:
    reactor = Clock()
    schedule_on_monotonic(reactor)
    assert reactor.seconds is time.monotonic
    call = reactor.callLater(30, lambda: None)
    assert call.getTime() - time.monotonic() == pytest.approx(30, abs=1)


def test_the_switch_refuses_once_something_is_scheduled() -> None:
    """A call placed on the wall clock would fire decades late."""
    reactor = Clock()
    reactor.callLater(1, lambda: None)
    with pytest.raises(RuntimeError):
        schedule_on_monotonic(reactor)


def test_wall_dated_shows_the_wall_clock_and_schedules_on_the_reactor() -> None:
    reactor = Clock()
    dated = WallDated(reactor)
    assert dated.seconds() == pytest.approx(time.time(), abs=5)
    fired: list[int] = []
    dated.callLater(2, fired.append, 1)
    assert dated.getDelayedCalls() == reactor.getDelayedCalls()
    reactor.advance(2)
    assert fired == [1]
