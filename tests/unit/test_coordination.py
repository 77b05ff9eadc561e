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
from archiverd.tasks.fleet import LOST, QUEUE_POLL, RedisCoordinator
from archiverd.tasks.model import CANCELLED, Outcome, State, Task
from archiverd.tasks.redis_store import LOCK_LOST, SLOT_TAKEN
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


# -- the fleet's coordinator: what each step asks of Redis --------------------------


class StubFleet:
    """The Redis side of a fleet, in memory: the calls made, in order, and
    the records written; each turn answers from ``turns`` (then a slot)."""

    instance = "daemon-a"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.records: dict[str, dict[str, str]] = {}
        self.turns: list[int] = []

    async def acquire(self, key: str, ttl: float) -> str:
        self.calls.append("acquire")
        return "token-1"

    async def turn(
        self, key: str, token: str, lock_ttl: float, task_id: str, **kw: Any
    ) -> int:
        self.calls.append("turn")
        ahead = self.turns.pop(0) if self.turns else SLOT_TAKEN
        self.records[task_id] = kw["started"] if ahead == SLOT_TAKEN else kw["queued"]
        return ahead

    async def keep(
        self,
        key: str,
        token: str,
        ttl: float,
        task_id: str,
        fields: Any,
        *_: Any,
        **__: Any,
    ) -> bool:
        self.calls.append("keep")
        self.records[task_id] = fields
        return True

    async def holds(self, key: str, token: str) -> bool:
        self.calls.append("holds")
        return True

    async def finish(
        self, key: str, token: str, task_id: str, fields: Any, *_: Any, **__: Any
    ) -> bool:
        self.calls.append("finish")
        if fields is not None:
            self.records[task_id] = fields
        return True

    async def load_task(self, task_id: str) -> dict[str, str] | None:
        self.calls.append("load_task")
        return self.records.get(task_id)


@pytest.fixture
def fleet() -> StubFleet:
    return StubFleet()


@pytest.fixture
def fleet_tasks(clock: Clock, runner: FakeRunner, fleet: StubFleet) -> TaskService:
    coordinator = RedisCoordinator(fleet, clock, lock_ttl=30)  # type: ignore[arg-type]
    return TaskService(clock, runner, coordinator=coordinator)


def test_a_cold_task_asks_redis_four_times(
    fleet_tasks: TaskService, clock: Clock, fleet: StubFleet, runner: FakeRunner
) -> None:
    """Claim; one turn that takes the slot and publishes the record as
    started (claim's publish and begin wait for it, and write nothing);
    the fence; one finish."""
    task_id = result_of(claim(fleet_tasks, clock))
    assert fleet.calls == ["acquire", "turn"]
    assert fleet.records[task_id]["state"] == "STARTED"
    task = runner.calls[0].task
    assert task.fence is not None
    result_of(Deferred.fromCoroutine(_awaited(task.fence())))
    runner.calls[0].deferred.callback(OUTCOME)
    assert fleet.calls == ["acquire", "turn", "holds", "finish"]
    assert fleet.records[task_id]["state"] == "SUCCESS"


def test_a_queued_task_takes_a_turn_each_queue_poll(
    fleet_tasks: TaskService, clock: Clock, fleet: StubFleet, runner: FakeRunner
) -> None:
    """Each turn is one call that keeps its place, renews its lock and
    writes its record; the heartbeat then has nothing to add."""
    fleet.turns = [2, 1]
    task_id = result_of(claim(fleet_tasks, clock))
    task = fleet_tasks.get(task_id)
    assert task is not None and task.status == "queued (2 ahead)"
    assert fleet.records[task_id]["state"] == "PENDING"
    clock.advance(QUEUE_POLL)
    assert task.status == "queued (1 ahead)"
    clock.advance(QUEUE_POLL)
    assert task.state is State.STARTED and runner.calls
    assert fleet.calls == ["acquire", "turn", "turn", "turn"]
    assert fleet.records[task_id]["state"] == "STARTED"


def test_a_turn_that_finds_the_lock_taken_over_stops_the_task(
    fleet_tasks: TaskService, clock: Clock, fleet: StubFleet, runner: FakeRunner
) -> None:
    fleet.turns = [LOCK_LOST]
    with capturedLogs():
        task_id = result_of(claim(fleet_tasks, clock))
    task = fleet_tasks.get(task_id)
    assert task is not None
    assert (task.state, task.status) == (State.FAILURE, LOST)
    assert runner.calls == []
    assert fleet.calls[-1] == "finish" and fleet.records[task_id]["state"] != "FAILURE"


def test_another_daemons_success_stands_here_as_a_task_that_describes_itself_alike(
    fleet_tasks: TaskService, clock: Clock, fleet: StubFleet, runner: FakeRunner
) -> None:
    """A non-owner answers a finished task's polls as the owner does: from a
    task (which keeps its rendered answer) that describes itself as the
    record says; anything but a success has no stand-in."""
    task_id = result_of(claim(fleet_tasks, clock))
    runner.calls[0].deferred.callback(OUTCOME)
    owner = fleet_tasks.get(task_id)
    assert owner is not None and owner.state is State.SUCCESS

    elsewhere = RedisCoordinator(fleet, clock)  # type: ignore[arg-type]
    assert elsewhere.seen(task_id) is None  # not read yet
    fields = result_of(Deferred.fromCoroutine(elsewhere.lookup(task_id)))
    assert fields == owner.describe(clock.seconds())
    clock.advance(20)
    stand_in = elsewhere.seen(task_id)
    assert stand_in is not None
    assert (stand_in.task_id, stand_in.state) == (task_id, State.SUCCESS)
    assert stand_in.describe(clock.seconds()) == elsewhere.peek(task_id) == fields
    assert stand_in.finished == owner.finished
    assert fleet.calls.count("load_task") == 1

    fleet.records["other"] = {"state": "PROGRESS", "status": "Uploading"}
    result_of(Deferred.fromCoroutine(elsewhere.lookup("other")))
    assert elsewhere.peek("other") is not None and elsewhere.seen("other") is None
