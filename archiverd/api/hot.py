"""The hot path: hits and status polls answered ahead of Klein.

Nearly every request archiverd gets is one of two: ``GET
/archiver/<source>/<repo>/<rev>`` for a stored archive (a 302) and ``GET
/archiver/status/<task_id>`` (a poll). Both are answered from memory, so
their cost is the framework's: werkzeug binding a URL map and matching the
path against every rule, Klein adapting the request and wrapping the
handler's answer in two Deferreds and a chain of callbacks. Measured, that
was half of a hit's cost (docs/performance.md).

:class:`HotPath` stands in front of the Klein resource. For a GET or HEAD
whose path is plainly one of those two routes (ASCII, no percent-escapes,
no empty segments, a configured source) and whose Accept does not mention
HTML (browsers get the page from Klein), it asks the route's own no-I/O
answer (:meth:`~archiverd.api.web.ArchiverAPI.archive_now`,
:meth:`~archiverd.api.web.ArchiverAPI.status_now`) and writes it as Klein
would (``request.write``, then ``finish``). Anything else, and any request
those methods decline (a miss, a wait, bad input, an error), goes to Klein
untouched, which answers it as it always did. Klein stays the router for
the API as a whole.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

if TYPE_CHECKING:
    from archiverd.api.web import ArchiverAPI
    from archiverd.tasks.model import Task
    from archiverd.tasks.service import TaskService

_METHODS = frozenset({b"GET", b"HEAD"})
#: :meth:`HotPath._answer`'s word for "held: answered later".
_HELD = b"held"
#: Seconds: how long a task's shared wait may last (its polls end sooner).
_LONGEST = 86400.0
#: Seconds between two looks for held polls whose clients left.
SWEEP_EVERY = 1.0
_PREFIX = b"/archiver/"
#: Path segments after ``/archiver/`` that Klein routes elsewhere: never
#: taken for a source here, even if one were configured so.
_ROUTED_ELSEWHERE = frozenset({"status", "files", "openapi.json"})


def wants_json(accept: list[bytes] | None) -> bool:
    """Whether the hot path may answer a request with these Accept values:
    none, or none that mentions HTML (``*/*``, ``application/json``...).
    One that does may prefer the page, which Klein decides."""
    return accept is None or not any(b"html" in value.lower() for value in accept)


def route(path: bytes) -> tuple[str, ...] | None:
    """``("status", task_id)`` or ``("archive", source, repo, rev)`` for a
    path the hot path takes, else None.

    Only paths that Klein's routing would split the same way without a
    second thought: ASCII, no percent-escape (Twisted unquotes segments),
    no empty segment (werkzeug's slash rules).
    """
    if not path.startswith(_PREFIX) or b"%" in path or not path.isascii():
        return None
    parts = path[len(_PREFIX) :].decode("ascii").split("/")
    if "" in parts:
        return None
    if parts[0] == "status":
        return ("status", parts[1]) if len(parts) == 2 else None
    if len(parts) < 3 or parts[0] in _ROUTED_ELSEWHERE:
        return None
    return ("archive", parts[0], "/".join(parts[1:-1]), parts[-1])


class HotPath(Resource):
    """Hits and polls answered directly; everything else to ``routes``
    (the Klein resource)."""

    isLeaf = True
    _log = Logger()

    def __init__(self, api: ArchiverAPI, routes: Resource) -> None:
        super().__init__()
        self._api = api
        self._routes = routes
        self._sources = frozenset(api.archives.sources) - _ROUTED_ELSEWHERE
        archives = api.archives
        self._polls = HeldPolls(archives.tasks, archives.clock, self._answer_held)

    def render(self, request: Any) -> Any:
        body = self._answer(request)
        if body is None:
            return self._routes.render(request)
        if body is not _HELD:
            _send(request, body)
        return NOT_DONE_YET

    def _answer(self, request: Any) -> bytes | None:
        if request.method not in _METHODS:
            return None
        found = route(request.path)
        if found is None:
            return None
        if not wants_json(request.requestHeaders.getRawHeaders(b"accept")):
            return None
        if found[0] == "status":
            body = self._api.status_now(request, found[1])
            return self._hold(request, found[1]) if body is None else body
        _, source, repo, rev = found
        if source not in self._sources:
            return None
        return self._api.archive_now(request, source, repo, rev)

    # -- long polls ------------------------------------------------------

    def _hold(self, request: Any, task_id: str) -> bytes | None:
        """Hold a poll of this daemon's unfinished task until it finishes or
        the poll's hold is over, as the route would (``_HELD``); None when
        the route must answer."""
        hold = self._api.status_hold(request)
        task = self._api.archives.tasks.get(task_id) if hold > 0 else None
        if task is None or task.done:
            return None
        self._polls.hold(request, task, hold)
        return _HELD

    def _answer_held(self, request: Any, task: Task) -> None:
        try:
            body = self._api.status_now(request, task.task_id, waited=True)
            if body is None:  # a success whose URLs must be signed: the route's
                self._routes.render(request)
            else:
                _send(request, body)
        except Exception:
            failure = Failure()
            if request.startedWriting:
                self._log.failure("answering {uri}", failure, uri=request.uri)
            else:
                _send(request, self._api.internal_error(request, failure))


class _Poll:
    """One held poll; ``request`` is None once answered or its client gone."""

    __slots__ = ("request", "task")

    def __init__(self, request: Any, task: Task) -> None:
        self.request: Any = request
        self.task = task


class HeldPolls:
    """Long polls held for their tasks, at a few hundred bytes each.

    A poll held through Klein and :meth:`TaskService.settled` costs about
    7 KB beyond the request itself (Klein's Deferreds and closures, a
    Deferred and a timer per poll). Here the polls of one task share one
    ``settled`` Deferred, and every deadline shares one timer (a heap of
    deadlines, the earliest scheduled): a held poll is a slot in its task's
    table and an entry in the heap. A poll whose client left is dropped
    within :data:`SWEEP_EVERY` seconds by one sweep over all of them (a
    ``notifyFinish`` Deferred per poll, the other way to learn it, costs
    575 bytes: 5.5 MiB for 10,000 polls; the sweep, ~1 ms a second).
    """

    def __init__(
        self,
        tasks: TaskService,
        clock: IReactorTime,
        answer: Callable[[Any, Task], None],
    ) -> None:
        self._tasks = tasks
        self._clock = clock
        self._answer = answer
        #: Per task: its polls, and the Deferred that fires when it ends.
        self._by_task: dict[Task, tuple[dict[_Poll, None], Deferred[Task]]] = {}
        self._deadlines: list[tuple[float, int, _Poll]] = []
        self._count = 0
        self._timer: IDelayedCall | None = None
        self._sweeper: IDelayedCall | None = None

    def __len__(self) -> int:
        return sum(len(polls) for polls, _ in self._by_task.values())

    def hold(self, request: Any, task: Task, seconds: float) -> None:
        poll = _Poll(request, task)
        entry = self._by_task.get(task)
        if entry is None:
            # Fires when the task ends (the long timeout only bounds it).
            ended = self._tasks.settled(task, _LONGEST)
            entry = self._by_task[task] = ({}, ended)
            ended.addCallback(self._ended)
            ended.addErrback(_ignore_cancel)
        entry[0][poll] = None
        self._count += 1
        deadline = self._clock.seconds() + seconds
        heapq.heappush(self._deadlines, (deadline, self._count, poll))
        if self._timer is None or deadline < self._timer.getTime():
            self._schedule(deadline)
        if self._sweeper is None:
            self._sweeper = self._clock.callLater(SWEEP_EVERY, self._sweep)

    def _schedule(self, deadline: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        delay = max(0.0, deadline - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._expire)

    def _release(self, poll: _Poll) -> Any:
        """Take ``poll`` out of its task's table: its request if it was
        still held, else None. Only the empty ``_Poll`` stays in the heap
        until its deadline."""
        request, poll.request = poll.request, None
        if request is not None:
            entry = self._by_task.get(poll.task)
            if entry is not None:
                entry[0].pop(poll, None)
                if not entry[0]:
                    del self._by_task[poll.task]
                    entry[1].cancel()  # nobody waits for this task any more
                    self._forget_deadlines()
        return request

    def _forget_deadlines(self) -> None:
        """With no poll held, no deadline is left to keep, nor a timer."""
        if self._by_task:
            return
        self._deadlines.clear()
        for name in ("_timer", "_sweeper"):
            timer = getattr(self, name)
            if timer is not None:
                setattr(self, name, None)
                if timer.active():
                    timer.cancel()

    def _sweep(self) -> None:
        """Drop the polls whose clients left (Twisted detaches a request
        from its connection when the connection is lost)."""
        self._sweeper = None
        for polls, _ in list(self._by_task.values()):
            for poll in [p for p in polls if p.request.channel is None]:
                self._release(poll)
        if self._by_task:
            self._sweeper = self._clock.callLater(SWEEP_EVERY, self._sweep)

    def _ended(self, task: Task) -> None:
        entry = self._by_task.pop(task, None)
        if entry is None:
            return
        for poll in list(entry[0]):
            request, poll.request = poll.request, None
            if request is not None:
                self._answer(request, task)
        self._forget_deadlines()

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, poll = heapq.heappop(deadlines)
            request = self._release(poll)
            if request is not None:
                self._answer(request, poll.task)
        while deadlines and deadlines[0][2].request is None:
            heapq.heappop(deadlines)  # answered or gone before its deadline
        if deadlines:
            self._schedule(deadlines[0][0])


def _ignore_cancel(failure: Failure) -> None:
    failure.trap(CancelledError)


def _send(request: Any, body: bytes) -> None:
    """Answer as Klein does: the body, then the end (chunked, on HTTP/1.1)."""
    request.write(body)
    request.finish()
