"""Held requests (``[tasks] hold``), long polls (``Prefer: wait=N``) and the
answers old clients get for failures (issue 11), on the in-memory API."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fakes import has_no_result
from test_web import NODE, REV, World

from archiverd.api.clients import LegacyClients, preferred_wait
from archiverd.errors import UpstreamRefused, UpstreamUnavailable
from archiverd.keys import ArchiveRequest
from archiverd.tasks.model import Outcome

ARCHIVE = f"/archiver/hgmo/projects/ash/{REV}"
STATUS = "/archiver/status/projects_ash-42bf8560b395.tar.gz"
OLD = {"User-Agent": "Python-urllib/2.7"}


def _held(world: World, outcome: str) -> float:
    return world.metrics.held.labels(outcome)._value.get()  # type: ignore[no-any-return]


# -- [tasks] hold ----------------------------------------------------------------


def test_a_request_held_until_its_task_stores_the_archive_gets_the_302() -> None:
    world = World(hold=5)
    d = world.start(ARCHIVE)
    has_no_result(d)
    world.clock.advance(1)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    answer = world.answer(d)
    assert answer.code == 302
    assert "projects/ash-42bf8560b395.tar.gz" in answer.header("Location")
    assert _held(world, "stored") == 1


def test_a_request_held_past_hold_gets_the_202_and_the_task_goes_on() -> None:
    world = World(hold=5)
    d = world.start(ARCHIVE)
    world.clock.advance(4.9)
    has_no_result(d)
    world.clock.advance(0.1)
    answer = world.answer(d)
    assert answer.code == 202
    assert answer.header("Location").endswith(STATUS)
    assert not world.runner.calls[0].cancelled
    assert _held(world, "waiting") == 1
    assert world.clock.getDelayedCalls() == [] or all(
        c.getTime() > world.clock.seconds() + 5 for c in world.clock.getDelayedCalls()
    )


def test_hold_zero_answers_202_at_once() -> None:
    world = World(hold=0)
    assert world.get(ARCHIVE).code == 202
    assert _held(world, "waiting") == _held(world, "stored") == 0


def test_a_thousand_held_requests_make_one_task_and_all_get_the_302() -> None:
    world = World(hold=5)
    waiting = [world.start(ARCHIVE) for _ in range(1000)]
    assert len(world.runner.calls) == 1
    [task] = [call.task for call in world.runner.calls]
    assert len(task.waiters) == 1000
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    assert {world.answer(d).code for d in waiting} == {302}
    assert task.waiters == [] and _held(world, "stored") == 1000


def test_a_held_client_that_leaves_costs_nothing_further() -> None:
    """Cancelling the held answer (Klein does when the connection is lost)
    drops its waiter and its timer; the task goes on for the others."""
    world = World(hold=5)
    d = world.archives.locate("hgmo", "projects/ash", REV, hold=5)
    task = world.runner.calls[0].task
    assert len(task.waiters) == 1 and len(world.clock.getDelayedCalls()) >= 1
    timers = len(world.clock.getDelayedCalls())
    d.cancel()
    d.addErrback(lambda _: None)
    assert task.waiters == []
    assert len(world.clock.getDelayedCalls()) == timers - 1
    assert not world.runner.calls[0].cancelled and _held(world, "gone") == 1


def test_a_failed_task_ends_the_hold_with_the_202() -> None:
    world = World(hold=5)
    d = world.start(ARCHIVE)
    world.runner.calls[0].deferred.errback(UpstreamUnavailable("cannot reach"))
    assert world.answer(d).code == 202
    assert _held(world, "failed") == 1


# -- Prefer: wait=N ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (b"wait=10", 10),
        (b"respond-async, wait=5", 5),
        (b"wait = 7 ; foo", 7),
        (b'wait="3"', 3),
        (b"handling=lenient", None),
        (b"wait=-1", None),
        (b"wait=abc", None),
        (b"nowait=3", None),
    ],
)
def test_the_wait_preference_is_read_from_prefer(
    header: bytes, seconds: int | None
) -> None:
    headers = SimpleNamespace(getRawHeaders=lambda name, default: [header])
    assert preferred_wait(SimpleNamespace(requestHeaders=headers)) == seconds  # type: ignore[arg-type]


def test_a_long_poll_answers_when_the_task_finishes() -> None:
    world = World(hold=0)
    assert world.get(ARCHIVE).code == 202
    d = world.start(STATUS, Prefer="wait=30")
    world.clock.advance(10)
    has_no_result(d)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    answer = world.answer(d)
    assert answer.code == 200 and answer.json["result"]["state"] == "SUCCESS"
    assert answer.header("Preference-Applied") == "wait=30"
    assert sorted(answer.json["result"]["s3_urls"]) == ["us-east-1", "us-west-2"]


def test_a_long_poll_answers_after_its_wait_capped_by_max_wait() -> None:
    world = World(hold=0)
    world.get(ARCHIVE)
    d = world.start(STATUS, Prefer="wait=3600")
    world.clock.advance(59.9)
    has_no_result(d)
    world.clock.advance(0.1)
    answer = world.answer(d)
    assert answer.json["result"]["state"] == "STARTED"
    assert answer.header("Preference-Applied") == "wait=60"


def test_prefer_wait_holds_the_archive_request_even_with_hold_zero() -> None:
    world = World(hold=0)
    d = world.start(ARCHIVE, Prefer="wait=20")
    world.clock.advance(15)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    answer = world.answer(d)
    assert answer.code == 302 and answer.header("Preference-Applied") == "wait=20"


def test_without_prefer_nothing_says_a_preference_was_applied() -> None:
    world = World(hold=0)
    answer = world.get(ARCHIVE)
    assert answer.header("Preference-Applied") is None


def test_a_wait_that_cannot_be_honoured_is_not_said_to_be_applied() -> None:
    """A task this daemon does not know (another daemon's, or none) is
    answered at once: saying the wait was applied would make a client ask
    again at once, in a loop."""
    world = World(hold=0)
    answer = world.get(STATUS, Prefer="wait=30")
    assert answer.json["result"]["state"] == "PENDING"
    assert answer.header("Preference-Applied") is None


# -- failures as old clients must see them --------------------------------------------


def _failed(world: World, error: Exception) -> None:
    world.get(ARCHIVE)
    world.runner.calls[-1].deferred.errback(error)


REFUSED = UpstreamRefused("hg.mozilla.org", 404, "https://x", "unknown revision 'x'")


def test_an_old_client_sees_a_permanent_failure_as_success_with_no_urls() -> None:
    world = World(legacy_clients=("Python-urllib/2.*",))
    _failed(world, REFUSED)
    result = world.get(STATUS, **OLD).json["result"]
    assert (result["state"], result["s3_urls"]) == ("SUCCESS", {})
    assert "unknown revision 'x'" in result["status"]
    new = world.get(STATUS, **{"User-Agent": "archiverd-fetch/1"}).json["result"]
    assert (new["state"], new["permanent"]) == ("FAILURE", True)
    assert world.get(STATUS).json["result"]["state"] == "FAILURE"


def test_an_old_client_sees_a_transient_failure_as_a_503_and_asks_again() -> None:
    world = World(legacy_clients=("Python-urllib/2.*",))
    _failed(world, UpstreamUnavailable("cannot reach hg.mozilla.org"))
    answer = world.get(STATUS, **OLD)
    assert answer.code == 503 and "cannot reach" in answer.json["error"]
    assert world.get(STATUS).json["result"]["permanent"] is False
    # Asking again starts a new task.
    assert world.get(ARCHIVE, **OLD).code == 202
    assert len(world.runner.calls) == 2


def test_an_unknown_name_is_a_task_an_old_client_can_poll_to_its_end() -> None:
    world = World(legacy_clients=("Python-urllib/2.*",))
    answer = world.get("/archiver/hgmo/projects/ash/nope", **OLD)
    assert answer.code == 202
    assert answer.header("Location").endswith(
        "/archiver/status/projects_ash-nope.tar.gz"
    )
    result = world.get("/archiver/status/projects_ash-nope.tar.gz", **OLD).json
    assert result["result"]["state"] == "SUCCESS" and result["result"]["s3_urls"] == {}
    assert "unknown revision 'nope'" in result["result"]["status"]
    assert world.get("/archiver/hgmo/projects/ash/nope").code == 404  # new clients
    assert world.runner.calls == []


def test_no_legacy_patterns_means_every_client_sees_failure() -> None:
    world = World(legacy_clients=())
    _failed(world, REFUSED)
    assert world.get(STATUS, **OLD).json["result"]["state"] == "FAILURE"


@pytest.mark.parametrize(
    ("agent", "legacy"),
    [
        (b"Python-urllib/2.7", True),
        (b"Python-urllib/3.11", False),
        (b"curl/8.0", False),
        (None, False),
    ],
)
def test_legacy_clients_match_by_user_agent(agent: bytes | None, legacy: bool) -> None:
    request: Any = SimpleNamespace(getHeader=lambda name: agent)
    assert (request in LegacyClients(["Python-urllib/2.*"])) is legacy


def test_a_name_resolved_for_an_old_client_is_keyed_by_its_changeset() -> None:
    world = World(hold=0, legacy_clients=("Python-urllib/2.*",))
    answer = world.get("/archiver/hgmo/projects/ash/default", **OLD)
    by_name = ArchiveRequest.parse("hgmo", "projects/ash", "default").with_rev(NODE)
    assert answer.header("Location").endswith(by_name.task_id)


def test_an_old_clients_poll_is_held_as_its_first_request_was() -> None:
    """It sleeps 10 s after any answer but SUCCESS, so its poll waits up to
    ``hold`` for the task, as the archive request did; new clients' polls
    without ``Prefer`` are answered at once."""
    world = World(hold=5, legacy_clients=("Python-urllib/2.*",))
    first = world.start(ARCHIVE, **OLD)
    world.clock.advance(5)
    assert world.answer(first).code == 202
    assert world.get(STATUS).json["result"]["state"] == "STARTED"
    d = world.start(STATUS, **OLD)
    world.clock.advance(2)
    has_no_result(d)
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    answer = world.answer(d)
    assert answer.json["result"]["state"] == "SUCCESS"
    assert answer.header("Preference-Applied") is None
