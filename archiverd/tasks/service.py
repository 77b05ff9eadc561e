"""The in-memory task table: one task per archive being fetched.

A task id names exactly one archive (see :mod:`archiverd.keys`), so the table
is keyed by it and a request for an archive whose task is running joins that
task: N concurrent requests make one download. A failed task is replaced by the
next request; a finished one stays for ``keep_finished`` seconds so pollers can
read its outcome, then is dropped.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from archiverd.errors import Busy, StorageError, UpstreamError
from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics

SUCCESS_STATUS = "Task completed! Check 's3_urls' for upload locations."


class State(enum.Enum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


FINISHED = (State.SUCCESS, State.FAILURE)


@dataclass(eq=False)
class Task:
    """One archive being fetched into some regions."""

    request: ArchiveRequest
    src_url: str
    regions: tuple[str, ...]
    created: float
    upstream_host: str = ""
    state: State = State.PENDING
    error: str = ""
    bytes_received: int = 0
    #: While queued: how many tasks will start before this one.
    ahead: int = 0
    started: float | None = None
    finished: float | None = None
    size: int | None = None
    sha256: str | None = None
    deferred: Deferred[None] | None = field(default=None, repr=False)
    #: With a fleet: the lock's token, and the check made before the
    #: upload is completed (see :mod:`archiverd.tasks.fleet`).
    token: str = ""
    fence: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    #: Once finished: the status body last rendered, and the URLs in it
    #: (kept here so it lives and dies with the task).
    rendered: tuple[dict[str, str], bytes] | None = field(default=None, repr=False)

    @property
    def task_id(self) -> str:
        return self.request.task_id

    @property
    def key(self) -> str:
        return self.request.key

    @property
    def done(self) -> bool:
        return self.state in FINISHED

    @property
    def status(self) -> str:
        """A sentence for people."""
        if self.state is State.PENDING:
            return f"queued ({self.ahead} ahead)"
        if self.state is State.STARTED:
            return f"Downloading archive from {self.upstream_host}"
        if self.state is State.PROGRESS:
            return f"Uploading: {self.bytes_received / 2**20:.1f} MiB so far"
        if self.state is State.SUCCESS:
            return SUCCESS_STATUS
        return self.error

    def describe(self, now: float) -> dict[str, Any]:
        """The task as the status endpoint shows it (without ``s3_urls``)."""
        end = self.finished if self.finished is not None else now
        result: dict[str, Any] = {
            "state": self.state.value,
            "status": self.status,
            "src_url": self.src_url,
            "bytes_received": self.bytes_received,
            "elapsed_seconds": round(end - self.created, 3),
            "regions": list(self.regions),
        }
        if self.state is State.SUCCESS:
            result["size"] = self.size
            result["sha256"] = self.sha256
        return result


@dataclass(frozen=True)
class Outcome:
    size: int
    sha256: str


Runner = Callable[[Task, Callable[[int], None]], Awaitable[Outcome]]


class TaskService(Service):
    """Starts, tracks and expires tasks; cancels the running ones on stop."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        runner: Runner,
        keep_finished: float = 3600.0,
        *,
        max_concurrent: int = 8,
        max_tasks: int = 10000,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._runner = runner
        self.keep_finished = keep_finished
        self.max_concurrent = max_concurrent
        self.max_tasks = max_tasks
        self._tasks: dict[str, Task] = {}
        self._working = 0
        self._stopping = False
        self._queue: deque[tuple[Task, Deferred[None]]] = deque()
        self._expiry = LoopingCall(self._tick)
        self._expiry.clock = clock

    def __len__(self) -> int:
        return len(self._tasks)

    def startService(self) -> None:
        super().startService()
        interval = max(1.0, min(self.keep_finished, 60.0))
        self._expiry.start(interval, now=False).addErrback(
            lambda f: self.log.failure("task expiry stopped", f)
        )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True  # queued tasks are cancelled, not started
        if self._expiry.running:
            self._expiry.stop()
        running = [t.deferred for t in self._tasks.values() if t.deferred is not None]
        for d in running:
            d.cancel()
        return DeferredList(running, consumeErrors=True)

    def get(self, task_id: str) -> Task | None:
        """The task with this id, unless it finished too long ago."""
        task = self._tasks.get(task_id)
        if task is not None and self._expired(task):
            del self._tasks[task_id]
            return None
        return task

    def active(self, task_id: str) -> Task | None:
        """The task with this id if it is still working."""
        task = self._tasks.get(task_id)
        return task if task is not None and not task.done else None

    def _expired(self, task: Task) -> bool:
        return (
            task.finished is not None
            and self._clock.seconds() - task.finished >= self.keep_finished
        )

    def expire(self) -> None:
        """Drop finished tasks older than ``keep_finished``."""
        for task_id in [t for t, task in self._tasks.items() if self._expired(task)]:
            del self._tasks[task_id]

    def _tick(self) -> None:
        self.expire()
        if self._tasks:
            self.log.info(
                "task table: {size} of {max_tasks} ({working} working, "
                "{queued} queued)",
                size=len(self._tasks),
                max_tasks=self.max_tasks,
                working=self._working,
                queued=len(self._queue),
            )

    async def claim(
        self,
        request: ArchiveRequest,
        src_url: str,
        regions: Sequence[str],
        upstream_host: str,
        since: float,
        stored_in: Callable[[], Awaitable[Sequence[str]]],
    ) -> str:
        """Make sure some task stores ``request`` in ``regions``; its id.

        One daemon: :meth:`submit`. (A fleet's service also decides which
        daemon does the work; ``stored_in`` asks storage again then.)
        """
        return self.submit(request, src_url, regions, upstream_host, since).task_id

    def joinable(self, task_id: str, since: float) -> Task | None:
        """This daemon's task for ``task_id`` if a request may join it: it is
        still working, or it succeeded at or after ``since``."""
        task = self.get(task_id)
        if task is None:
            return None
        if not task.done:
            return task
        if (
            task.state is State.SUCCESS
            and task.finished is not None
            and task.finished >= since
        ):
            return task
        return None

    async def lookup(self, task_id: str) -> dict[str, Any] | None:
        """The status of a task another daemon runs (None: one daemon)."""
        return None

    def peek(self, task_id: str) -> dict[str, Any] | None:
        """:meth:`lookup`'s answer if known without asking anyone (None)."""
        return None

    def submit(
        self,
        request: ArchiveRequest,
        src_url: str,
        regions: Sequence[str],
        upstream_host: str,
        since: float,
        *,
        token: str = "",
    ) -> Task:
        """The task that stores ``request`` in ``regions``, started if needed.

        A running task for the same archive is joined. So is one that
        succeeded at or after ``since``, when the caller looked in storage:
        the caller's view is older than that success.
        """
        task = self.joinable(request.task_id, since)
        if task is not None:
            return task
        if self.get(request.task_id) is None and len(self._tasks) >= self.max_tasks:
            self._make_room()
        task = Task(
            request,
            src_url,
            tuple(regions),
            self._clock.seconds(),
            upstream_host=upstream_host,
            token=token,
        )
        self._tasks[task.task_id] = task
        d = Deferred.fromCoroutine(self._run(task))
        task.deferred = None if task.done else d
        return task

    def _make_room(self) -> None:
        """Drop finished tasks, oldest first; refuse when all are unfinished."""
        self.expire()
        finished = sorted(
            (t for t in self._tasks.values() if t.finished is not None),
            key=lambda t: t.finished or 0.0,
        )
        for task in finished[: len(self._tasks) - self.max_tasks + 1]:
            del self._tasks[task.task_id]
        if len(self._tasks) >= self.max_tasks:
            raise Busy(f"{len(self._tasks)} archives are being fetched; try again soon")

    async def _wait_turn(self, task: Task) -> None:
        """Wait while ``max_concurrent`` tasks are working."""
        turn: Deferred[None] = Deferred()
        task.ahead = len(self._queue)
        self._queue.append((task, turn))
        try:
            await turn
        finally:
            if self._queue and any(t is task for t, _ in self._queue):
                self._queue = deque(e for e in self._queue if e[0] is not task)
                self._renumber()

    def _renumber(self) -> None:
        for ahead, (task, _) in enumerate(self._queue):
            task.ahead = ahead

    def _next_turn(self) -> None:
        while (
            not self._stopping and self._queue and self._working < self.max_concurrent
        ):
            _, turn = self._queue.popleft()
            self._renumber()
            turn.callback(None)

    async def _run(self, task: Task) -> None:
        try:
            if self._working >= self.max_concurrent or self._queue:
                await self._wait_turn(task)
        except CancelledError:
            self._finish(task, State.FAILURE, "cancelled: archiverd is stopping")
            return
        self._working += 1
        try:
            await self._work(task)
        finally:
            self._working -= 1
            self._next_turn()

    async def _work(self, task: Task) -> None:
        task.state = State.STARTED
        task.started = self._clock.seconds()
        self.log.info(
            "fetching {key} from {url} into {regions}",
            key=task.key,
            url=task.src_url,
            regions=",".join(task.regions),
        )

        def progress(received: int) -> None:
            task.bytes_received = received
            task.state = State.PROGRESS

        try:
            outcome = await self._runner(task, progress)
        except CancelledError:
            self._finish(task, State.FAILURE, "cancelled: archiverd is stopping")
            self.log.warn("{key}: cancelled", key=task.key)
        except (UpstreamError, StorageError) as e:
            self._finish(task, State.FAILURE, str(e))
            self.log.warn("{key} failed: {error}", key=task.key, error=str(e))
        except Exception:
            self._finish(task, State.FAILURE, "internal error; see archiverd's log")
            self.log.failure("{key} failed", Failure(), key=task.key)
        else:
            task.size = outcome.size
            task.sha256 = outcome.sha256
            self._finish(task, State.SUCCESS)
            self.log.info(
                "stored {key} ({size} bytes, sha256 {sha256}) in {regions} "
                "in {seconds:.2f}s",
                key=task.key,
                size=outcome.size,
                sha256=outcome.sha256,
                regions=",".join(task.regions),
                seconds=(task.finished or 0) - task.created,
            )

    def _finish(self, task: Task, state: State, error: str = "") -> None:
        task.state = state
        task.error = error
        task.finished = self._clock.seconds()
        task.deferred = None
        began = task.started if task.started is not None else task.created
        self._metrics.task_duration.labels(state.value).observe(task.finished - began)

    def counts(self) -> dict[str, int]:
        """How many tasks the table holds in each state."""
        counts = dict.fromkeys((s.value for s in State), 0)
        for task in self._tasks.values():
            counts[task.state.value] += 1
        return counts

    @property
    def working(self) -> int:
        return self._working

    @property
    def queued(self) -> int:
        return len(self._queue)
