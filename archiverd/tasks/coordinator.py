"""What differs between one daemon and a fleet, behind one interface.

:class:`~archiverd.tasks.service.TaskService` owns a task's one lifecycle
(claim, queue, work, finish, expire); a coordinator, chosen in ``tap.py``,
decides what only a fleet needs decided:

- who may fetch an archive (a claim: a fleet's lock),
- when a task may start (a slot under ``max_concurrent_tasks``),
- whether its upload may still be completed (a fence),
- how other daemons learn of it (its published record), and how this daemon
  reads theirs.

:class:`LocalCoordinator` is one daemon on its own: every claim granted, slots
counted in memory, nothing published. The fleet's is
:class:`archiverd.tasks.fleet.RedisCoordinator`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed

from archiverd.keys import ArchiveRequest
from archiverd.tasks.model import Task

#: Told how many tasks are ahead of the one waiting for a slot.
Report = Callable[[int], None]


class Coordinator(Protocol):
    """How tasks are shared (or not) with other daemons."""

    #: Whether other daemons fetch and store the same archives: storage is
    #: then asked again once a claim is granted.
    shared: bool

    async def start(self) -> None:
        """Connect to whatever is shared (never raises for it being down)."""

    async def stop(self) -> None:
        """Let go of it, once every task has settled."""

    async def acquire(self, request: ArchiveRequest) -> str | None:
        """Claim the archive: a token, or None when another holds it.

        Raises :class:`~archiverd.errors.Busy` when no claim can be made.
        """

    async def release(self, key: str, token: str) -> None:
        """Give back a claim that no task was started for."""

    def watch(self, task: Task) -> Callable[[], None]:
        """Keep ``task``'s claim alive while it lives; returns the stop."""

    def fence(self, task: Task) -> Callable[[], Awaitable[None]] | None:
        """The check made before completing ``task``'s upload, if any."""

    def take_slot(self, task: Task, limit: int, report: Report) -> Deferred[None]:
        """Fires when ``task`` holds one of ``limit`` slots."""

    def try_slot(self, task: Task, limit: int) -> Deferred[bool]:
        """Take one of ``limit`` slots for ``task`` now, if one is free and
        no task waits for one (a pre-warm task's way: it never queues)."""

    async def begin(self, task: Task) -> None:
        """``task`` has its slot and is STARTED: tell the others."""

    async def publish(self, task: Task) -> None:
        """Make ``task``'s state readable by the others now."""

    async def settle(self, task: Task) -> None:
        """``task`` finished: publish its outcome, free its slot and claim."""

    async def lookup(self, task_id: str) -> dict[str, Any] | None:
        """Another daemon's task's status fields, or None."""

    def peek(self, task_id: str) -> dict[str, Any] | None:
        """:meth:`lookup`'s answer if known without asking anyone (not to
        be changed: it may answer every poll for a while)."""

    def seen(self, task_id: str) -> Task | None:
        """Another daemon's task that :meth:`peek` knows to have succeeded,
        as a :class:`Task` that stands for it here (it describes itself with
        :meth:`peek`'s fields, and keeps its rendered answer as this
        daemon's own tasks do); else None."""


def _nothing() -> None:
    pass


class LocalCoordinator:
    """One daemon on its own: it alone fetches, so every claim is granted."""

    shared = False

    def __init__(self) -> None:
        #: Tasks holding a slot.
        self._holders: set[Task] = set()
        #: The one task waiting for a slot (the task service's queue head).
        self._next: tuple[Task, int, Deferred[None]] | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def acquire(self, request: ArchiveRequest) -> str | None:
        return ""

    async def release(self, key: str, token: str) -> None:
        pass

    def watch(self, task: Task) -> Callable[[], None]:
        return _nothing

    def fence(self, task: Task) -> Callable[[], Awaitable[None]] | None:
        return None

    def take_slot(self, task: Task, limit: int, report: Report) -> Deferred[None]:
        if len(self._holders) < limit:
            self._holders.add(task)
            return succeed(None)
        report(0)  # next in line: the queue is the task service's

        def cancel(d: Deferred[None]) -> None:
            if self._next is not None and self._next[2] is d:
                self._next = None

        turn: Deferred[None] = Deferred(cancel)
        self._next = (task, limit, turn)
        return turn

    def try_slot(self, task: Task, limit: int) -> Deferred[bool]:
        if self._next is None and len(self._holders) < limit:
            self._holders.add(task)
            return succeed(True)
        return succeed(False)

    async def begin(self, task: Task) -> None:
        pass

    async def publish(self, task: Task) -> None:
        pass

    async def settle(self, task: Task) -> None:
        self._holders.discard(task)
        if self._next is not None and len(self._holders) < self._next[1]:
            waiting, _, turn = self._next
            self._next = None
            self._holders.add(waiting)
            turn.callback(None)

    async def lookup(self, task_id: str) -> dict[str, Any] | None:
        return None

    def peek(self, task_id: str) -> dict[str, Any] | None:
        return None

    def seen(self, task_id: str) -> Task | None:
        return None
