"""archiverd.ops.health: the checks at start (what stops archiverd, what only
degrades it) and heartbeats that never pile up calls to stuck storage."""

from __future__ import annotations

from typing import Any

from fakes import has_no_result, result_of, started
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from archiverd.errors import FleetUnavailable
from archiverd.ops.health import Health
from archiverd.storage.base import MissingStorage


class Storage:
    """The storage service as the checks see it; each check answers as the
    test says (an exception, or a Deferred that has not fired)."""

    regions = ("east", "west")

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.open_error: BaseException | None = None
        self.checked: list[str] = []

    async def check(self, region: str) -> None:
        self.checked.append(region)
        answer = self.answers.get(region)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Deferred):
            await answer


class Fleet:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def ping(self) -> None:
        if self.error is not None:
            raise self.error


def warnings(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["what"] + ": " + e["error"] for e in events if e["log_level"] is LogLevel.warn
    ]


def test_everything_reachable_at_start_says_nothing() -> None:
    health = Health(Storage(), {}, Clock(), fleet=Fleet())
    with capturedLogs() as events:
        assert result_of(started(health.check_at_start())) is None
    assert warnings(events) == []


def test_a_missing_bucket_at_start_is_why_archiverd_must_not_run() -> None:
    missing = MissingStorage("storage.s3.buckets: bucket 'b' (west) does not exist")
    health = Health(Storage(west=missing), {}, Clock())
    with capturedLogs() as events:
        why = result_of(started(health.check_at_start()))
    assert why == "storage.s3.buckets: bucket 'b' (west) does not exist"
    assert warnings(events) == []


def test_storage_that_cannot_be_opened_is_why_archiverd_must_not_run() -> None:
    storage = Storage()
    storage.open_error = ValueError("Provided region_name 'us_east_1' is not valid")
    health = Health(storage, {}, Clock())
    why = result_of(started(health.check_at_start()))
    assert why == (
        "storage cannot be opened: ValueError: Provided region_name 'us_east_1' "
        "is not valid"
    )


def test_unreachable_storage_and_redis_at_start_are_said_once_each() -> None:
    """They may come back: archiverd starts degraded, and says so."""
    clock = Clock()
    storage = Storage(east=OSError("connection refused"), west=Deferred())
    health = Health(storage, {}, clock, fleet=Fleet(FleetUnavailable("redis: down")))
    with capturedLogs() as events:
        d = started(health.check_at_start())
        has_no_result(d)
        clock.advance(5)  # west never answers
        assert result_of(d) is None
    assert warnings(events) == [
        "storage in east: OSError: connection refused",
        "storage in west: TimeoutError: no answer within 5s",
        "redis: FleetUnavailable: redis: down",
    ]


def test_a_heartbeat_joins_a_check_still_stuck_instead_of_starting_another() -> None:
    """A load balancer asks every few seconds; storage that never answers
    would otherwise get one more stuck call (a storage thread) each time."""
    clock = Clock()
    stuck: Deferred[None] = Deferred()
    storage = Storage(west=stuck)
    health = Health(storage, {}, clock)
    for _ in range(3):
        d = started(health.heartbeat())
        clock.advance(5)
        healthy, body = result_of(d)
        assert not healthy
        assert body["details"]["storage:west"]["message"] == (
            "TimeoutError: no answer within 5s"
        )
    assert storage.checked == ["east", "west", "east", "east"]
    stuck.callback(None)
    healthy, _ = result_of(started(health.heartbeat()))
    assert healthy and storage.checked[-2:] == ["east", "west"]
