"""archiverd.tasks: the task table, driven by a Clock and a runner we control."""

from __future__ import annotations

import pytest
from fakes import FakeRunner, has_no_result, result_of
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from archiverd.errors import (
    Busy,
    StorageError,
    UpstreamRefused,
    UpstreamUnavailable,
)
from archiverd.keys import ArchiveRequest
from archiverd.tasks.model import (
    SUCCESS_STATUS,
    Outcome,
    State,
    Task,
    from_record,
    to_record,
)
from archiverd.tasks.service import TaskService

SRC_URL = "https://hg.example/projects/ash/archive/42bf8560b395.tar.gz"
OUTCOME = Outcome(1234, "ab" * 32)


@pytest.fixture
def tasks(clock: Clock, runner: FakeRunner) -> TaskService:
    return TaskService(clock, runner, keep_finished=3600)


def request(rev: str = "42bf8560b395") -> ArchiveRequest:
    return ArchiveRequest.parse("hgmo", "projects/ash", rev)


def submit(tasks: TaskService, clock: Clock, rev: str = "42bf8560b395") -> Task:
    return tasks.submit(
        request(rev), SRC_URL, ("east", "west"), "hg.example", since=clock.seconds()
    )


def test_submit_starts_the_runner_and_the_task_is_started(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    task = submit(tasks, clock)
    assert [call.task for call in runner.calls] == [task]
    assert task.state is State.STARTED
    assert task.status == "Downloading archive from hg.example"
    assert task.regions == ("east", "west")
    assert tasks.get(task.task_id) is task
    assert tasks.active(task.task_id) is task


def test_progress_moves_the_task_to_progress_with_mib_so_far(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    task = submit(tasks, clock)
    runner.calls[0].progress(3 * 2**20 + 2**19)
    assert task.state is State.PROGRESS
    assert task.bytes_received == 3 * 2**20 + 2**19
    assert task.status == "Uploading: 3.5 MiB so far"


def test_success_records_size_and_sha256(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    task = submit(tasks, clock)
    clock.advance(2.5)
    runner.calls[0].deferred.callback(OUTCOME)
    assert task.state is State.SUCCESS
    assert task.status == SUCCESS_STATUS
    assert (task.size, task.sha256) == (1234, "ab" * 32)
    assert task.finished == clock.seconds()
    assert tasks.active(task.task_id) is None
    described = task.describe(clock.seconds() + 100)
    assert described["state"] == "SUCCESS"
    assert (described["size"], described["sha256"]) == (1234, "ab" * 32)
    assert described["elapsed_seconds"] == 2.5


@pytest.mark.parametrize(
    "error",
    [
        UpstreamRefused("hg.example", 404, SRC_URL, "unknown revision 'nope'"),
        UpstreamUnavailable("hg.example broke off after 10 bytes"),
        StorageError("storage in west failed: OSError"),
    ],
)
def test_an_expected_failure_becomes_failure_with_its_message(
    tasks: TaskService, runner: FakeRunner, clock: Clock, error: Exception
) -> None:
    task = submit(tasks, clock)
    with capturedLogs() as events:
        runner.calls[0].deferred.errback(error)
    assert task.state is State.FAILURE
    assert task.status == str(error)
    assert task.describe(clock.seconds())["status"] == str(error)
    assert [e["log_level"] for e in events] == [LogLevel.warn]


def test_an_unexpected_failure_is_logged_and_shown_without_details(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    task = submit(tasks, clock)
    with capturedLogs() as events:
        runner.calls[0].deferred.errback(KeyError("secret internals"))
    assert task.state is State.FAILURE
    assert task.status == "internal error; see archiverd's log"
    [event] = [e for e in events if "log_failure" in e]
    assert event["log_failure"].check(KeyError)


def test_a_second_submit_while_running_joins_the_running_task(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    first = submit(tasks, clock)
    runner.calls[0].progress(10)
    clock.advance(5)
    second = submit(tasks, clock)
    assert second is first
    assert len(runner.calls) == 1
    assert len(tasks) == 1


def test_different_archives_get_different_tasks(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    one = submit(tasks, clock, rev="42bf8560b395")
    two = submit(tasks, clock, rev="0123456789ab")
    assert one is not two
    assert len(runner.calls) == 2


def test_after_a_failure_the_next_submit_starts_a_new_task(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    failed = submit(tasks, clock)
    runner.calls[0].deferred.errback(UpstreamUnavailable("down"))
    clock.advance(1)
    retry = submit(tasks, clock)
    assert retry is not failed
    assert len(runner.calls) == 2
    assert retry.state is State.STARTED
    assert tasks.get(retry.task_id) is retry


def test_a_success_at_or_after_since_is_joined(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    since = clock.seconds()
    done = submit(tasks, clock)
    runner.calls[0].deferred.callback(OUTCOME)  # finished == since
    joined = tasks.submit(request(), SRC_URL, ("east",), "hg.example", since=since)
    assert joined is done
    assert len(runner.calls) == 1


def test_a_success_older_than_since_is_replaced(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    done = submit(tasks, clock)
    runner.calls[0].deferred.callback(OUTCOME)
    clock.advance(1)
    # The caller looked in storage after that success and did not find it.
    fresh = submit(tasks, clock)
    assert fresh is not done
    assert len(runner.calls) == 2


def test_a_runner_that_finishes_at_once_leaves_no_deferred_behind(
    clock: Clock,
) -> None:
    async def instant(task: Task, progress: object) -> Outcome:
        return OUTCOME

    tasks = TaskService(clock, instant)
    task = submit(tasks, clock)
    assert task.state is State.SUCCESS
    assert task.deferred is None


# -- expiry ------------------------------------------------------------------


def test_a_finished_task_is_gone_from_get_after_keep_finished(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    task = submit(tasks, clock)
    runner.calls[0].deferred.callback(OUTCOME)
    clock.advance(3599)
    assert tasks.get(task.task_id) is task
    clock.advance(1)
    assert tasks.get(task.task_id) is None
    assert len(tasks) == 0


def test_a_running_task_never_expires(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    task = submit(tasks, clock)
    clock.advance(10 * 3600)
    assert tasks.get(task.task_id) is task


def test_the_expiry_loop_drops_finished_tasks_after_start_service(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    tasks.startService()
    try:
        running = submit(tasks, clock, rev="0123456789ab")
        finished = submit(tasks, clock)
        runner.calls[1].deferred.callback(OUTCOME)
        clock.advance(3599)
        assert len(tasks) == 2
        clock.pump([60, 60])  # the loop runs every minute
        assert len(tasks) == 1
        assert tasks.active(running.task_id) is running
        assert tasks.get(finished.task_id) is None
    finally:
        result_of(tasks.stopService())


def test_stop_service_leaves_no_delayed_calls(tasks: TaskService, clock: Clock) -> None:
    tasks.startService()
    assert clock.getDelayedCalls()
    result_of(tasks.stopService())
    assert clock.getDelayedCalls() == []


# -- stopping ----------------------------------------------------------------


def test_stop_service_cancels_running_tasks_which_end_as_failures(
    tasks: TaskService, runner: FakeRunner, clock: Clock
) -> None:
    tasks.startService()
    task = submit(tasks, clock)
    done = submit(tasks, clock, rev="0123456789ab")
    runner.calls[1].deferred.callback(OUTCOME)
    with capturedLogs():
        stopped = tasks.stopService()
    assert runner.calls[0].cancelled
    assert not runner.calls[1].cancelled
    result_of(stopped)
    assert task.state is State.FAILURE
    assert task.status == "cancelled: archiverd is stopping"
    assert done.state is State.SUCCESS


def test_stop_service_waits_for_a_runner_that_cleans_up_after_cancel(
    clock: Clock,
) -> None:
    """The stop Deferred fires only when the runner has finished cleaning up
    (aborting uploads), not merely when it was asked to stop."""
    waiting: Deferred[None] = Deferred()
    cleanup: Deferred[None] = Deferred()

    async def runner(task: Task, progress: object) -> Outcome:
        try:
            await waiting
        except CancelledError:
            await cleanup
            raise
        return OUTCOME

    tasks = TaskService(clock, runner)
    task = submit(tasks, clock)
    with capturedLogs():
        stopped = tasks.stopService()
        has_no_result(stopped)
        assert not task.done
        cleanup.callback(None)
    result_of(stopped)
    assert task.state is State.FAILURE


# -- limits: concurrency and table size ---------------------------------------


def test_beyond_max_concurrent_a_task_waits_its_turn_as_pending(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=1)
    first = submit(tasks, clock, rev="000000000001")
    second = submit(tasks, clock, rev="000000000002")
    third = submit(tasks, clock, rev="000000000003")
    assert [call.task for call in runner.calls] == [first]
    assert (second.state, second.status) == (State.PENDING, "queued (0 ahead)")
    assert third.status == "queued (1 ahead)"
    assert tasks.active(second.task_id) is second
    runner.calls[0].deferred.callback(OUTCOME)
    assert [call.task for call in runner.calls] == [first, second]
    assert second.state is State.STARTED
    assert third.status == "queued (0 ahead)"
    runner.calls[1].deferred.errback(UpstreamUnavailable("down"))
    assert [call.task for call in runner.calls] == [first, second, third]


def test_queued_tasks_are_cancelled_on_stop_and_never_run(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_concurrent=1)
    running = submit(tasks, clock, rev="000000000001")
    queued = submit(tasks, clock, rev="000000000002")
    with capturedLogs():
        stopped = tasks.stopService()
    result_of(stopped)
    assert [call.task for call in runner.calls] == [running]
    assert queued.state is State.FAILURE
    assert queued.status == "cancelled: archiverd is stopping"


def test_a_full_table_drops_the_oldest_finished_task_to_make_room(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_tasks=2)
    oldest = submit(tasks, clock, rev="000000000001")
    runner.calls[0].deferred.callback(OUTCOME)
    clock.advance(1)
    newer = submit(tasks, clock, rev="000000000002")
    runner.calls[1].deferred.callback(OUTCOME)
    third = submit(tasks, clock, rev="000000000003")
    assert len(tasks) == 2
    assert tasks.get(oldest.task_id) is None
    assert tasks.get(newer.task_id) is newer
    assert tasks.get(third.task_id) is third


def test_a_table_full_of_unfinished_tasks_refuses_new_work(
    clock: Clock, runner: FakeRunner
) -> None:
    tasks = TaskService(clock, runner, max_tasks=2)
    first = submit(tasks, clock, rev="000000000001")
    submit(tasks, clock, rev="000000000002")
    with pytest.raises(Busy):
        submit(tasks, clock, rev="000000000003")
    assert submit(tasks, clock, rev="000000000001") is first  # joining is fine
    assert len(runner.calls) == 2


# -- the public fields through a fleet's record ------------------------------


@pytest.mark.parametrize("state", list(State))
def test_a_tasks_fields_survive_a_record_unchanged(clock: Clock, state: State) -> None:
    task = Task(request(), SRC_URL, ("east", "west"), clock.seconds(), "hg.example")
    task.state, task.bytes_received, task.error = state, 5 * 2**20, "it broke"
    task.size, task.sha256 = 1234, "ab" * 32
    described = task.describe(clock.seconds() + 2.5)
    record = to_record(described)
    assert all(isinstance(v, str) for v in record.values())
    assert from_record(record) == described


def test_a_record_with_missing_fields_reads_as_empty_and_no_record_as_none() -> None:
    assert from_record(None) is None
    assert from_record({}) is None
    assert from_record({"status": "no state"}) is None
    assert from_record({"state": "SUCCESS"}) == {
        "state": "SUCCESS",
        "status": "",
        "src_url": "",
        "bytes_received": 0,
        "elapsed_seconds": 0.0,
        "regions": [],
        "size": 0,
        "sha256": "",
    }
