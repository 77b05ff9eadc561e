"""Pre-warm tasks never stand in a client's way: a client's task never waits
behind a queued pre-warm task, pre-warm takes slots only when no client
waits, and a client asking for a pre-warm task's archive makes it its own."""

from __future__ import annotations

from fakes import FakeRunner
from twisted.internet.task import Clock

from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics
from archiverd.tasks.model import Outcome, State, Task, from_record, to_record
from archiverd.tasks.service import TaskService

OUTCOME = Outcome(10, "ab" * 32)


def submit(
    tasks: TaskService, clock: Clock, rev: str, *, prewarm: bool = False
) -> Task:
    request = ArchiveRequest.parse("hgmo", "projects/ash", rev)
    return tasks.submit(
        request, "https://hg.example/x", ("east",), "hg.example", clock.seconds(),
        prewarm=prewarm,
    )  # fmt: skip


def running(runner: FakeRunner) -> list[str]:
    return [c.task.request.rev for c in runner.calls if not c.deferred.called]


def finish(runner: FakeRunner, rev: str) -> None:
    call = next(c for c in runner.calls if c.task.request.rev == rev)
    call.deferred.callback(OUTCOME)


def test_with_slots_full_of_prewarm_work_a_client_miss_starts_at_once(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=3)
    made = [submit(tasks, clock, r * 12, prewarm=True) for r in "abc"]
    # Pre-warm holds all but one slot; the third waits.
    assert running(runner) == ["a" * 12, "b" * 12]
    client = submit(tasks, clock, "d" * 12)
    assert client.state is State.STARTED
    assert running(runner) == ["a" * 12, "b" * 12, "d" * 12]
    # Stopped, not dropped: a task left waiting would otherwise be closed by
    # the garbage collector, running its clean-up in some later test.
    tasks.stopService()
    assert all(t.done for t in [*made, client])


def test_a_client_takes_the_next_slot_before_any_queued_prewarm_task(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=1)
    first = submit(tasks, clock, "a" * 12, prewarm=True)
    queued = submit(tasks, clock, "b" * 12, prewarm=True)
    client = submit(tasks, clock, "c" * 12)
    assert running(runner) == ["a" * 12]
    assert client.state is State.PENDING and queued.state is State.PENDING
    assert queued.status.startswith("pre-warm: queued")
    finish(runner, "a" * 12)
    assert first.state is State.SUCCESS
    assert running(runner) == ["c" * 12]  # the client, not the earlier pre-warm
    assert queued.state is State.PENDING
    finish(runner, "c" * 12)
    assert running(runner) == ["b" * 12]  # no client waits: pre-warm's turn


def test_prewarm_waits_while_any_client_task_is_queued(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=2)
    submit(tasks, clock, "a" * 12)
    submit(tasks, clock, "b" * 12)
    submit(tasks, clock, "c" * 12)  # queued client
    submit(tasks, clock, "d" * 12, prewarm=True)
    finish(runner, "a" * 12)
    assert running(runner) == ["b" * 12, "c" * 12]
    finish(runner, "b" * 12)
    clock.advance(5)
    # A slot is free, but pre-warm leaves the last one to clients.
    assert running(runner) == ["c" * 12]
    finish(runner, "c" * 12)
    assert running(runner) == ["d" * 12]


def test_a_client_joining_a_queued_prewarm_task_makes_it_a_client_task(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=1)
    submit(tasks, clock, "a" * 12)
    waiting = submit(tasks, clock, "b" * 12, prewarm=True)
    later_client = submit(tasks, clock, "c" * 12)
    assert waiting.describe(clock.seconds())["prewarm"] is True
    joined = submit(tasks, clock, "b" * 12)  # a client asks for it
    assert joined is waiting and not waiting.prewarm
    assert "prewarm" not in waiting.describe(clock.seconds())
    assert waiting.status == "queued (1 ahead)"  # behind the earlier client
    finish(runner, "a" * 12)
    assert running(runner) == ["c" * 12]
    finish(runner, "c" * 12)
    assert running(runner) == ["b" * 12]
    assert later_client.state is State.SUCCESS


def test_a_client_finding_a_running_prewarm_task_makes_it_a_client_task(
    clock: Clock, runner: FakeRunner
) -> None:
    metrics = Metrics()
    tasks = TaskService(clock, runner, max_concurrent=2, metrics=metrics)
    task = submit(tasks, clock, "a" * 12, prewarm=True)
    other = submit(tasks, clock, "b" * 12, prewarm=True)
    assert tasks.active(task.task_id) is task and not task.prewarm
    finish(runner, "a" * 12)
    assert metrics.prewarmed._value.get() == 0  # a client's archive now
    finish(runner, "b" * 12)
    assert other.state is State.SUCCESS
    assert metrics.prewarmed._value.get() == 1


def test_prewarm_claims_join_without_promoting(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=1)
    task = submit(tasks, clock, "a" * 12, prewarm=True)
    again = submit(tasks, clock, "a" * 12, prewarm=True)
    assert again is task and task.prewarm


def test_the_record_of_a_prewarm_task_says_so() -> None:
    request = ArchiveRequest.parse("hgmo", "r", "a" * 12)
    task = Task(request, "u", ("east",), 1.0, prewarm=True)
    found = from_record(to_record(task.describe(2.0)))
    assert found is not None and found["prewarm"] is True
    task.prewarm = False
    found = from_record(to_record(task.describe(2.0)))
    assert found is not None and "prewarm" not in found


def test_queued_prewarm_tasks_are_cancelled_on_stop(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=1)
    tasks.startService()
    submit(tasks, clock, "a" * 12)
    waiting = submit(tasks, clock, "b" * 12, prewarm=True)
    assert tasks.queued == 1
    tasks.stopService()
    assert waiting.state is State.FAILURE
    assert len(runner.calls) == 1
