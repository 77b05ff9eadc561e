"""Pre-warm tasks waiting for a slot: never ahead of a client's task.

Pre-warm tasks (:mod:`archiverd.prewarm`) are ordinary tasks with a lower
priority. They do not queue in the task service's line, where clients' tasks
wait first come, first served; they wait here, and take a slot only when one
is free right now and no client's task waits for one (the coordinator's
``try_slot``: at a fleet, no task waits in the fleet's queue either). So a
client's task never waits behind one that is queued, and takes the next slot
that frees up before any of them.

Pre-warm tasks are offered slots again when a task settles, when the
clients' line empties, and every ``retry`` seconds (slots free up at other
daemons too). A client that asks for a queued pre-warm task's archive makes
it a client task: it leaves here (:meth:`Standby.promote`) and joins the
clients' line.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from archiverd.tasks.model import Task


class Standby:
    """Pre-warm tasks waiting, in the order they came, for a free slot."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        try_slot: Callable[[Task], Awaitable[bool]],
        clients_waiting: Callable[[], bool],
        retry: float = 1.0,
    ) -> None:
        self._clock = clock
        self._try_slot = try_slot
        self._clients_waiting = clients_waiting
        self.retry = retry
        self._waiting: OrderedDict[Task, Deferred[bool]] = OrderedDict()
        self._offering = False
        self._again = False
        self._timer: IDelayedCall | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, task: Task) -> Deferred[bool]:
        """Fires True once ``task`` holds a slot, or False when a client made
        it a client task (it must then queue as one)."""

        def cancel(d: Deferred[bool]) -> None:
            if self._waiting.get(task) is d:
                del self._waiting[task]

        turn: Deferred[bool] = Deferred(cancel)
        self._waiting[task] = turn
        self.offer()
        return turn

    def promote(self, task: Task) -> None:
        """A client asked for ``task``'s archive: out of here, to the clients'
        line."""
        turn = self._waiting.pop(task, None)
        if turn is not None:
            turn.callback(False)

    def offer(self) -> None:
        """Give free slots to the waiting tasks, first come first, unless a
        client's task waits."""
        if self._closed:
            return
        if self._offering:
            self._again = True  # once the offer under way is done
            return
        d = Deferred.fromCoroutine(self._offer())
        d.addErrback(lambda f: self.log.failure("offering slots to pre-warm", f))

    async def _offer(self) -> None:
        self._offering = True
        try:
            self._again = True
            while self._again:
                self._again = False
                while self._waiting and not self._clients_waiting():
                    task, turn = next(iter(self._waiting.items()))
                    if not await self._try_slot(task):
                        break
                    # Cancelled or promoted meanwhile, it keeps the slot
                    # until it settles (a promoted one's claim renews it).
                    if self._waiting.get(task) is turn:
                        del self._waiting[task]
                        turn.callback(True)
        finally:
            self._offering = False
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            return
        self._timer = None
        if self._waiting and not self._closed:
            self._timer = self._clock.callLater(self.retry, self.offer)

    def close(self) -> None:
        """Stopping: no more offers (the waiting tasks are cancelled by their
        owner)."""
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
