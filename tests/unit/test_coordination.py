"""The task service's one lifecycle against a coordinator that shares work
(as a fleet's does), scripted by the test: claims, slots, fences, settling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from fakes import FakeRunner, result_of
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from archiverd.errors import FleetUnavailable
from archiverd.keys import ArchiveRequest
from archiverd.tasks.coordinator import Report
from archiverd.tasks.model import CANCELLED, Outcome, State, Task
from archiverd.tasks.service import TaskService

SRC_URL = "https://hg.example/projects/ash/archive/42bf8560b395.tar.gz"
OUTCOME = Outcome(1234, "ab" * 32)
REGIONS = ("east", "west")


class Scripted:
    """A coordinator whose claims and slots the test hands out."""

    shared = True

    def __init__(self) -> None:
        self.events: list[str] = []
        self.claims: list[Deferred[str | None]] = []
        self.slots: list[tuple[Task, Report, Deferred[None]]] = []
        self.free_slots = 0
        self.unwatched: list[Task] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")

    async def acquire(self, request: ArchiveRequest) -> str | None:
        d: Deferred[str | None] = Deferred()
        self.claims.append(d)
        return await d

    async def release(self, key: str, token: str) -> None:
        self.events.append(f"release {token}")

    def watch(self, task: Task) -> Callable[[], None]:
        self.events.append(f"watch {task.token}")
        return lambda: self.unwatched.append(task)

    def fence(self, task: Task) -> Callable[[], Awaitable[None]] | None:
        async def fence() -> None:
            self.events.append(f"fence {task.token}")

        return fence

    def take_slot(self, task: Task, limit: int, report: Report) -> Deferred[None]:
        if self.free_slots:
            self.free_slots -= 1
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.slots.append((task, report, d))
        return d

    async def begin(self, task: Task) -> None:
        self.events.append(f"begin {task.token} {task.state.value}")

    async def publish(self, task: Task) -> None:
        self.events.append(f"publish {task.token} {task.state.value}")

    async def settle(self, task: Task) -> None:
        self.events.append(f"settle {task.token} {task.state.value}")

    async def lookup(self, task_id: str) -> dict[str, Any] | None:
        return None

    def peek(self, task_id: str) -> dict[str, Any] | None:
        return None


@pytest.fixture
def coordinator() -> Scripted:
    return Scripted()


@pytest.fixture
def tasks(clock: Clock, runner: FakeRunner, coordinator: Scripted) -> TaskService:
    return TaskService(clock, runner, coordinator=coordinator)


def claim(
    tasks: TaskService,
    clock: Clock,
    rev: str = "42bf8560b395",
    stored: Sequence[str] = (),
) -> Deferred[str]:
    request = ArchiveRequest.parse("hgmo", "projects/ash", rev)

    async def stored_in() -> Sequence[str]:
        return stored

    return Deferred.fromCoroutine(
        tasks.claim(request, SRC_URL, REGIONS, "hg.example", clock.seconds(), stored_in)
    )


def test_concurrent_claims_for_one_archive_make_one_claim(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    coordinator.free_slots = 1
    claims = [claim(tasks, clock) for _ in range(50)]
    assert len(coordinator.claims) == 1
    coordinator.claims[0].callback("token-1")
    assert {result_of(d) for d in claims} == {"projects_ash-42bf8560b395.tar.gz"}
    assert len(runner.calls) == 1


def test_a_claim_held_elsewhere_starts_nothing_here(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    d = claim(tasks, clock)
    coordinator.claims[0].callback(None)
    assert result_of(d) == "projects_ash-42bf8560b395.tar.gz"
    assert runner.calls == [] and len(tasks) == 0


def test_a_shared_claim_looks_in_storage_again_and_fetches_only_what_is_missing(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    coordinator.free_slots = 1
    d = claim(tasks, clock, stored=("east",))
    coordinator.claims[0].callback("token-1")
    result_of(d)
    assert runner.calls[0].task.regions == ("west",)
    assert runner.calls[0].task.token == "token-1"


def test_a_claim_for_an_archive_stored_meanwhile_is_given_back(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    d = claim(tasks, clock, stored=REGIONS)
    coordinator.claims[0].callback("token-1")
    result_of(d)
    assert runner.calls == []
    assert coordinator.events == ["release token-1"]


def test_a_task_publishes_begins_is_fenced_and_settles_in_order(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    coordinator.free_slots = 1
    d = claim(tasks, clock)
    coordinator.claims[0].callback("t")
    result_of(d)
    task = runner.calls[0].task
    assert task.fence is not None
    result_of(Deferred.fromCoroutine(_awaited(task.fence())))
    runner.calls[0].deferred.callback(OUTCOME)
    assert coordinator.events == [
        "watch t",
        "begin t STARTED",
        "publish t STARTED",
        "fence t",
        "settle t SUCCESS",
    ]
    assert coordinator.unwatched == [task]


def test_only_the_first_queued_task_asks_for_a_slot(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    """The others wait behind it here, numbered from what it was told."""
    queued = []
    for n in range(3):
        d = claim(tasks, clock, rev=f"00000000000{n}")
        coordinator.claims[n].callback(f"t{n}")
        result_of(d)
        queued.append(tasks.get(f"projects_ash-00000000000{n}.tar.gz"))
    assert [slot[0] for slot in coordinator.slots] == [queued[0]]
    assert tasks.queued == 3
    coordinator.slots[0][1](7)  # the fleet has 7 ahead of the first
    assert [t.status for t in queued if t] == [
        "queued (7 ahead)",
        "queued (8 ahead)",
        "queued (9 ahead)",
    ]
    coordinator.slots[0][2].callback(None)
    assert [call.task for call in runner.calls] == [queued[0]]
    assert [slot[0] for slot in coordinator.slots[1:]] == [queued[1]]
    assert tasks.queued == 2


def test_a_coordinator_that_cannot_queue_fails_the_task_with_the_cause(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    d = claim(tasks, clock)
    coordinator.claims[0].callback("t")
    result_of(d)
    coordinator.slots[0][2].errback(FleetUnavailable("redis: timed out"))
    task = tasks.get("projects_ash-42bf8560b395.tar.gz")
    assert task is not None
    assert (task.state, task.status) == (
        State.FAILURE,
        "cannot coordinate: redis: timed out",
    )
    assert runner.calls == []
    assert coordinator.events[-1] == "settle t FAILURE"


def test_stopping_cancels_a_task_waiting_for_a_slot_then_stops_the_coordinator(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    d = claim(tasks, clock)
    coordinator.claims[0].callback("t")
    result_of(d)
    task = tasks.get("projects_ash-42bf8560b395.tar.gz")
    assert task is not None
    with capturedLogs():
        stopped = tasks.stopService()
    result_of(stopped)
    assert (task.state, task.status) == (State.FAILURE, CANCELLED)
    assert coordinator.events[-2:] == ["settle t FAILURE", "stop"]
    assert runner.calls == []


def test_a_slot_given_after_stopping_starts_nothing(
    tasks: TaskService, clock: Clock, coordinator: Scripted, runner: FakeRunner
) -> None:
    coordinator.free_slots = 1
    first = claim(tasks, clock, rev="000000000001")
    coordinator.claims[0].callback("t1")
    second = claim(tasks, clock, rev="000000000002")
    coordinator.claims[1].callback("t2")
    result_of(first), result_of(second)
    # The running task's cleanup hands the waiting one its slot mid-stop.
    slot = coordinator.slots[0][2]
    runner.calls[0].deferred.addBoth(lambda _: slot.callback(None))
    with capturedLogs():
        stopped = tasks.stopService()
    result_of(stopped)
    assert len(runner.calls) == 1


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable
