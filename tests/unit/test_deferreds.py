"""archiverd.util.deferreds: one run shared by concurrent callers, a result
handed to every waiter, and a Deferred that cancellation cannot stop."""

from __future__ import annotations

from fakes import failure_of, has_no_result, result_of
from twisted.internet.defer import CancelledError, Deferred

from archiverd.util.deferreds import Shared, SingleFlight, shielded


def test_concurrent_calls_for_one_key_share_one_run() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    started: list[Deferred[int]] = []

    async def start() -> int:
        d: Deferred[int] = Deferred()
        started.append(d)
        return await d

    waiters = [flights.run("k", start) for _ in range(10)]
    other = flights.run("other", start)
    assert len(started) == 2
    started[0].callback(7)
    assert [result_of(w) for w in waiters] == [7] * 10
    has_no_result(other)


def test_a_failure_reaches_every_waiter_and_the_next_call_runs_again() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    runs: list[Deferred[int]] = []

    async def start() -> int:
        d: Deferred[int] = Deferred()
        runs.append(d)
        return await d

    first, second = flights.run("k", start), flights.run("k", start)
    runs[0].errback(ValueError("down"))
    failure_of(first, ValueError)
    failure_of(second, ValueError)
    third = flights.run("k", start)
    assert len(runs) == 2  # landed: a new run
    runs[1].callback(3)
    assert result_of(third) == 3


def test_a_run_that_ends_at_once_is_not_kept() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = []

    async def start() -> int:
        calls.append(1)
        return len(calls)

    assert result_of(flights.run("k", start)) == 1
    assert result_of(flights.run("k", start)) == 2


def test_shared_hands_the_result_to_waiters_before_and_after() -> None:
    d: Deferred[str] = Deferred()
    shared = Shared(d)
    early = shared.wait()
    d.callback("x")
    assert result_of(early) == "x"
    assert result_of(shared.wait()) == "x"


def test_cancelling_a_shielded_deferred_leaves_the_inner_one_running() -> None:
    inner: Deferred[str] = Deferred()
    seen: list[str] = []
    inner.addCallback(lambda result: seen.append(result) or result)
    outer = shielded(inner)
    outer.cancel()
    failure_of(outer, CancelledError)
    assert not inner.called
    inner.callback("done")  # still runs to its end, unharmed
    assert seen == ["done"]
