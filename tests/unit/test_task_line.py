"""archiverd.tasks: the line of tasks waiting for a slot (what it costs, and
the numbers it shows), and what every task does before it uploads."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from fakes import FakeRunner, result_of
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

import archiverd.tasks
from archiverd.errors import StorageError
from archiverd.keys import ArchiveRequest
from archiverd.tasks.line import WaitingLine
from archiverd.tasks.model import Outcome, State, Task
from archiverd.tasks.service import TaskService

SRC_URL = "https://hg.example/projects/ash/archive/42bf8560b395.tar.gz"
OUTCOME = Outcome(1234, "ab" * 32)


def submit(tasks: TaskService, clock: Clock, rev: str = "42bf8560b395") -> Task:
    request = ArchiveRequest.parse("hgmo", "projects/ash", rev)
    return tasks.submit(
        request, SRC_URL, ("east", "west"), "hg.example", since=clock.seconds()
    )


# -- the queue: its cost grows with its length, not its square ----------------

TASKS_PACKAGE = str(Path(archiverd.tasks.__file__).parent)


def _lines_run_in_tasks(work: Callable[[], object]) -> int:
    """How many lines of ``archiverd.tasks`` run while ``work()`` does: a
    count of operations, the same on any machine (never a time)."""
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename.startswith(TASKS_PACKAGE):
            return local
        return None

    sys.settrace(calls)
    try:
        work()
    finally:
        sys.settrace(None)
    return count


def _queue_of(clock: Clock, queued: int) -> tuple[TaskService, FakeRunner, list[Task]]:
    """A service running one task with ``queued`` more waiting their turn."""
    runner = FakeRunner()
    tasks = TaskService(clock, runner, max_concurrent=1, max_tasks=queued + 1)
    waiting = [submit(tasks, clock, rev=f"{n:012x}") for n in range(queued + 1)]
    assert tasks.queued == queued
    return tasks, runner, waiting


def _stop_cost(clock: Clock, queued: int) -> int:
    tasks, _, waiting = _queue_of(clock, queued)

    def stop() -> None:
        with capturedLogs():
            result_of(tasks.stopService())

    cost = _lines_run_in_tasks(stop)
    assert all(t.status == "cancelled: archiverd is stopping" for t in waiting)
    return cost


def test_stopping_costs_in_proportion_to_the_queue_not_its_square(
    clock: Clock,
) -> None:
    """SIGTERM with 20,000 queued tasks took 38.6 s (2,500: 1.7 s): each
    cancelled task rebuilt and renumbered the whole queue. Four times the
    queue may now cost about four times the work, never sixteen."""
    small, large = _stop_cost(clock, 200), _stop_cost(clock, 800)
    assert large < 5 * small, (small, large)


def test_draining_the_queue_costs_in_proportion_to_its_length(clock: Clock) -> None:
    """Each task that starts leaves the queue without renumbering the rest."""

    def drain_cost(queued: int) -> int:
        tasks, runner, waiting = _queue_of(clock, queued)

        def drain() -> None:
            for n in range(queued):
                runner.calls[n].deferred.callback(OUTCOME)

        cost = _lines_run_in_tasks(drain)
        assert len(runner.calls) == queued + 1 and tasks.queued == 0
        return cost

    small, large = drain_cost(200), drain_cost(800)
    assert large < 5 * small, (small, large)


def test_queued_numbers_stay_right_when_tasks_leave_from_anywhere(
    clock: Clock,
) -> None:
    """ "queued (N ahead)" counts the tasks still ahead, whichever left: the
    one at the front (it started) or one in the middle (it was cancelled)."""
    tasks, runner, waiting = _queue_of(clock, 6)
    queued = waiting[1:]
    assert [t.ahead for t in queued] == [0, 1, 2, 3, 4, 5]
    with capturedLogs():
        queued[2].deferred.cancel()  # type: ignore[union-attr]
        queued[4].deferred.cancel()  # type: ignore[union-attr]
    assert queued[2].status == queued[4].status == "cancelled: archiverd is stopping"
    assert [queued[i].status for i in (0, 1, 3, 5)] == [
        "queued (0 ahead)",
        "queued (1 ahead)",
        "queued (2 ahead)",
        "queued (3 ahead)",
    ]
    runner.calls[0].deferred.callback(OUTCOME)  # the first queued one starts
    assert queued[0].state is State.STARTED
    assert [queued[i].ahead for i in (1, 3, 5)] == [0, 1, 2]
    with capturedLogs():
        queued[1].deferred.cancel()  # type: ignore[union-attr]  (the new first)
    assert [queued[i].ahead for i in (3, 5)] == [0, 1]
    runner.calls[1].deferred.callback(OUTCOME)
    assert queued[3].state is State.STARTED and queued[5].ahead == 0
    assert tasks.queued == 1


# -- what a killed daemon left behind ------------------------------------------


def test_a_task_aborts_its_archives_abandoned_uploads_before_it_fetches(
    clock: Clock, runner: FakeRunner
) -> None:
    """With one daemon too (the local coordinator): a SIGKILL left uploads
    pending, and the next task for the archive aborts them first."""
    cleaning: list[tuple[str, tuple[str, ...]]] = []
    done: Deferred[None] = Deferred()

    async def clean_up(key: str, regions: Sequence[str]) -> None:
        cleaning.append((key, tuple(regions)))
        await done

    tasks = TaskService(clock, runner, clean_up=clean_up)
    task = submit(tasks, clock)
    assert cleaning == [(task.key, ("east", "west"))]
    assert runner.calls == []  # nothing uploads before the leftovers are gone
    done.callback(None)
    assert [call.task for call in runner.calls] == [task]


def test_a_failed_look_for_abandoned_uploads_is_logged_and_the_task_goes_on(
    clock: Clock, runner: FakeRunner
) -> None:
    async def clean_up(key: str, regions: Sequence[str]) -> None:
        raise StorageError("storage in west failed: timed out")

    tasks = TaskService(clock, runner, clean_up=clean_up)
    with capturedLogs() as events:
        task = submit(tasks, clock)
    assert [call.task for call in runner.calls] == [task]
    [event] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert "cannot look for abandoned uploads" in event["log_format"]


class _Waiting:
    """A task as the line sees it."""

    line: Any = None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)), max_size=400
    )
)
def test_the_line_numbers_and_wakes_as_a_plain_list_would(
    ops: list[int | None],
) -> None:
    """Any run of joins (None) and leaves (of the task at index n modulo the
    length): each task's number is its place in a plain list, and a task's
    turn comes exactly when it becomes first."""
    line, model, turns = WaitingLine(), [], {}
    line.report(3)
    for op in ops:
        if op is None or not model:
            task = _Waiting()
            model.append(task)
            turns[task] = line.join(task)
        else:
            task = model.pop(op % len(model))
            line.leave(task)
        if not model:
            line.report(3)
        assert [line.ahead(t) for t in model] == [
            line.first_ahead + i for i in range(len(model))
        ]
        assert all(
            turns[t] is None or turns[t].called == (i == 0) for i, t in enumerate(model)
        )
    assert len(line) == len(model)
