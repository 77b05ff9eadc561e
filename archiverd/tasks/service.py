"""The task table: one task per archive being fetched, one lifecycle for all.

A task id names exactly one archive (see :mod:`archiverd.keys`), so the table
is keyed by it and a request for an archive whose task is running joins that
task: N concurrent requests make one download. A failed task is replaced by the
next request; a finished one stays for ``keep_finished`` seconds so pollers can
read its outcome, then is dropped.

A task's life: claimed (:meth:`TaskService.claim`), queued until it holds a
slot, worked (the runner streams the archive), finished, settled. What differs
between one daemon and a fleet (claims, slots, fences, published records) is
the coordinator's (:mod:`archiverd.tasks.coordinator`); this module has one
queue and one definition of everything else, including what every task does
before it uploads: abort the uploads of its archive left pending by a daemon
that was killed (this one before a restart, or another in a fleet).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from archiverd.errors import Busy, FleetUnavailable, StorageError, UpstreamError
from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics
from archiverd.tasks.coordinator import Coordinator, LocalCoordinator
from archiverd.tasks.line import WaitingLine
from archiverd.tasks.model import CANCELLED, Runner, State, Task
from archiverd.tasks.standby import Standby
from archiverd.util.deferreds import SingleFlight

#: Aborts the multipart uploads of a key left pending in some regions.
Cleaner = Callable[[str, Sequence[str]], Awaitable[None]]

#: How many finished tasks :attr:`TaskService.recent` keeps.
RECENT = 50


class TaskService(Service):
    """Starts, tracks and expires tasks; cancels the running ones on stop."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        runner: Runner,
        keep_finished: float = 3600.0,
        *,
        coordinator: Coordinator | None = None,
        max_concurrent: int = 8,
        max_tasks: int = 10000,
        metrics: Metrics | None = None,
        clean_up: Cleaner | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._clean_up = clean_up
        self._clock = clock
        self._runner = runner
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self.keep_finished = keep_finished
        self.max_concurrent = max_concurrent
        self.max_tasks = max_tasks
        self._tasks: dict[str, Task] = {}
        #: The last tasks to finish, newest last (for the page for people).
        self._recent: deque[Task] = deque(maxlen=RECENT)
        self._working = 0
        self._stopping = False
        #: This daemon's tasks waiting for a slot, first come first; only
        #: the first asks the coordinator for one.
        self._line = WaitingLine()
        #: Pre-warm tasks waiting for a slot no client's task waits for.
        self._standby = Standby(
            clock,
            lambda task: self.coordinator.try_slot(task, self.prewarm_limit),
            lambda: len(self._line) > 0,
        )
        #: Claims in progress, by task id.
        self._claims: SingleFlight[str, str] = SingleFlight()
        self._expiry = LoopingCall(self._tick)
        self._expiry.clock = clock

    def __len__(self) -> int:
        return len(self._tasks)

    # -- life cycle -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        interval = max(1.0, min(self.keep_finished, 60.0))
        self._expiry.start(interval, now=False).addErrback(
            lambda f: self.log.failure("task expiry stopped", f)
        )
        Deferred.fromCoroutine(self.coordinator.start()).addErrback(
            lambda f: self.log.failure("starting the coordinator", f)
        )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True  # queued tasks are cancelled, not started
        self._line.close()  # at once, not one renumbering per queued task
        self._standby.close()
        if self._expiry.running:
            self._expiry.stop()
        running = [t.deferred for t in self._tasks.values() if t.deferred is not None]
        for d in running:
            d.cancel()

        async def then_coordinator() -> None:
            await DeferredList(running, consumeErrors=True)
            await self.coordinator.stop()

        return DeferredList([Deferred.fromCoroutine(then_coordinator())])

    # -- the table --------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        """The task with this id, unless it finished too long ago."""
        task = self._tasks.get(task_id)
        if task is not None and self._expired(task):
            del self._tasks[task_id]
            return None
        return task

    def active(self, task_id: str) -> Task | None:
        """The task with this id if it is still working, for a client that
        asks for its archive (a pre-warm task becomes a client task)."""
        task = self._tasks.get(task_id)
        if task is None or task.done:
            return None
        self._promote(task)
        return task

    @property
    def prewarm_limit(self) -> int:
        """Slots pre-warm tasks may hold: all but one, so that a client's
        task starts at once when no other client's task holds the last."""
        return max(1, self.max_concurrent - 1)

    def _promote(self, task: Task) -> None:
        """A client asked for ``task``'s archive: it is a client task now."""
        if task.prewarm:
            task.prewarm = False
            self._standby.promote(task)

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
                queued=self.queued,
            )

    def _check_room(self, task_id: str) -> None:
        """Drop finished tasks, oldest first, if a new one needs room; refuse
        (:class:`Busy`) when all are unfinished."""
        if self.get(task_id) is not None or len(self._tasks) < self.max_tasks:
            return
        self.expire()
        finished = sorted(
            (t for t in self._tasks.values() if t.finished is not None),
            key=lambda t: t.finished or 0.0,
        )
        for task in finished[: len(self._tasks) - self.max_tasks + 1]:
            del self._tasks[task.task_id]
        if len(self._tasks) >= self.max_tasks:
            raise Busy(f"{len(self._tasks)} archives are being fetched; try again soon")

    # -- claiming work ----------------------------------------------------------

    async def claim(
        self,
        request: ArchiveRequest,
        src_url: str,
        regions: Sequence[str],
        upstream_host: str,
        since: float,
        stored_in: Callable[[], Awaitable[Sequence[str]]],
        *,
        prewarm: bool = False,
    ) -> str:
        """Make sure some task (here or at another daemon) stores ``request``
        in ``regions``; its id. A pre-warm claim (``prewarm``) starts a task
        that yields to clients' tasks; a client's claim that joins one makes
        it a client task.

        ``since`` is when the caller last looked in storage; ``stored_in``
        looks again, which a shared coordinator needs once the claim is
        granted (the last holder may have finished meanwhile). Concurrent
        claims for one archive share one (one coordinator call, not 1,000).
        """
        task_id = request.task_id
        joined = self.joinable(task_id, since)
        if joined is not None:
            if not prewarm:
                self._promote(joined)
            return task_id
        self._check_room(task_id)

        def start(token: str, missing: Sequence[str]) -> Task:
            return self.submit(
                request,
                src_url,
                missing,
                upstream_host,
                since,
                token=token,
                prewarm=prewarm,
            )

        return await self._claims.run(
            task_id, lambda: self._claim(request, regions, stored_in, start)
        )

    async def _claim(
        self,
        request: ArchiveRequest,
        regions: Sequence[str],
        stored_in: Callable[[], Awaitable[Sequence[str]]],
        start: Callable[[str, Sequence[str]], Task],
    ) -> str:
        coordinator = self.coordinator
        token = await coordinator.acquire(request)
        if token is None:
            return request.task_id  # another daemon (or request) has it
        try:
            missing = list(regions)
            if coordinator.shared:
                stored = await stored_in()
                missing = [r for r in regions if r not in stored]
            task = start(token, missing) if missing else None
        except BaseException:
            await coordinator.release(request.key, token)
            raise
        if task is None or task.token != token:
            await coordinator.release(request.key, token)
            return request.task_id
        await coordinator.publish(task)  # the record, before anyone polls
        return task.task_id

    def submit(
        self,
        request: ArchiveRequest,
        src_url: str,
        regions: Sequence[str],
        upstream_host: str,
        since: float,
        *,
        token: str = "",
        prewarm: bool = False,
    ) -> Task:
        """The task that stores ``request`` in ``regions``, started if needed.

        A running task for the same archive is joined. So is one that
        succeeded at or after ``since``, when the caller looked in storage:
        the caller's view is older than that success.
        """
        task = self.joinable(request.task_id, since)
        if task is not None:
            if not prewarm:
                self._promote(task)
            return task
        self._check_room(request.task_id)
        task = Task(
            request,
            src_url,
            tuple(regions),
            self._clock.seconds(),
            upstream_host=upstream_host,
            token=token,
            prewarm=prewarm,
        )
        self._tasks[task.task_id] = task
        d = Deferred.fromCoroutine(self._run(task))
        task.deferred = None if task.done else d
        return task

    def refused(
        self, request: ArchiveRequest, src_url: str, upstream_host: str, error: Any
    ) -> Task:
        """A task that failed before it began (upstream refused the name it
        asks for), for clients that learn of failures only by polling."""
        self._check_room(request.task_id)
        task = Task(
            request, src_url, (), self._clock.seconds(), upstream_host=upstream_host
        )
        task.permanent = getattr(error, "permanent", False)
        self._tasks[task.task_id] = task
        self._finish(task, State.FAILURE, str(error))
        return task

    # -- running ----------------------------------------------------------------

    async def _run(self, task: Task) -> None:
        coordinator = self.coordinator
        task.fence = coordinator.fence(task)
        unwatch = coordinator.watch(task)
        try:
            try:
                await self._wait_turn(task)
            except CancelledError:
                self._finish(task, State.FAILURE, CANCELLED)
                return
            except FleetUnavailable as e:
                self._finish(task, State.FAILURE, f"cannot coordinate: {e}")
                return
            self._working += 1
            try:
                await self._work(task)
            finally:
                self._working -= 1
        finally:
            unwatch()
            await coordinator.settle(task)
            self._standby.offer()  # a slot freed: pre-warm's, if no client waits

    async def _wait_turn(self, task: Task) -> None:
        """Wait, first come first served, until ``task`` holds a slot.

        Only the first task in the line asks the coordinator; the others
        wait there, behind it.
        """
        if task.prewarm and await self._standby.wait(task):
            return  # a slot no client's task waited for
        line = self._line
        turn = line.join(task)
        try:
            if turn is not None:
                await turn  # the one ahead took a slot, or gave up
            await self.coordinator.take_slot(task, self.max_concurrent, line.report)
            if self._stopping:
                raise CancelledError()
        finally:
            line.leave(task)
            if not line:
                self._standby.offer()

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
            await self.coordinator.begin(task)
            await self._abort_abandoned(task)
            outcome = await self._runner(task, progress)
        except CancelledError:
            self._finish(task, State.FAILURE, CANCELLED)
            self.log.warn("{key}: cancelled", key=task.key)
        except (UpstreamError, StorageError) as e:
            task.permanent = getattr(e, "permanent", False)
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

    async def _abort_abandoned(self, task: Task) -> None:
        """Abort what a killed daemon left pending for this archive: a
        SIGKILL leaves its multipart uploads behind (the bucket's lifecycle
        rule is only the backstop). No upload of this archive is in flight
        meanwhile: this task holds its claim."""
        if self._clean_up is None:
            return
        try:
            await self._clean_up(task.key, task.regions)
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn(
                "{key}: cannot look for abandoned uploads: {error}",
                key=task.key,
                error=str(e),
            )

    def _finish(self, task: Task, state: State, error: str = "") -> None:
        task.state = state
        task.error = error
        task.finished = self._clock.seconds()
        task.deferred = None
        self._recent.append(task)
        if state is State.SUCCESS and task.prewarm:
            self._metrics.prewarmed.inc()
        began = task.started if task.started is not None else task.created
        self._metrics.task_duration.labels(state.value).observe(task.finished - began)
        waiters, task.waiters = task.waiters, []
        for waiter in waiters:
            waiter.callback(task)

    def settled(self, task: Task, seconds: float) -> Deferred[Task]:
        """Fires with ``task`` when it finishes, or after ``seconds``,
        whichever comes first. Holding a request costs this Deferred and a
        timer, never a thread; cancelling it (the client left) drops both."""
        if task.done or seconds <= 0:
            return succeed(task)

        def give_up(d: Deferred[Task]) -> None:
            if d in task.waiters:
                task.waiters.remove(d)
            if timer.active():
                timer.cancel()

        waiter: Deferred[Task] = Deferred(give_up)

        def expire() -> None:
            task.waiters.remove(waiter)
            waiter.callback(task)

        timer = self._clock.callLater(seconds, expire)
        waiter.addBoth(_cancel_timer, timer)
        task.waiters.append(waiter)
        return waiter

    # -- status -----------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many tasks the table holds in each state."""
        counts = dict.fromkeys((s.value for s in State), 0)
        for task in self._tasks.values():
            counts[task.state.value] += 1
        return counts

    @property
    def working(self) -> int:
        return self._working

    def unfinished(self) -> list[Task]:
        """This daemon's unfinished tasks, running or queued, oldest first."""
        tasks = [t for t in self._tasks.values() if not t.done]
        tasks.sort(key=lambda t: t.created)
        return tasks

    @property
    def recent(self) -> list[Task]:
        """The last :data:`RECENT` tasks to finish, newest first."""
        return list(reversed(self._recent))

    @property
    def queued(self) -> int:
        return len(self._line) + len(self._standby)


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result
