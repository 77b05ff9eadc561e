"""The tasks waiting for a slot: first come, first served.

A status poll shows "queued (N ahead)". N is worked out when asked, from the
order the tasks joined, so neither joining nor leaving renumbers anyone:
joining and leaving from the front cost O(1), leaving from the middle O(log n)
(plus a short ``memmove``; amortized), a question O(log n), and closing the
line on stop O(n) for all of it. (The line used to be rebuilt and renumbered
each time a task left it: stopping with 20,000 tasks queued took 38 s.)
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred

if TYPE_CHECKING:
    from archiverd.tasks.model import Task


class WaitingLine:
    """Tasks waiting for a slot, in the order they joined.

    The first one asks the coordinator for a slot itself; the others wait
    for their turn, which comes when every task ahead has left (taken a slot
    or given up).
    """

    def __init__(self) -> None:
        #: Each waiting task's ticket (the order it joined) and its turn.
        self._waiting: OrderedDict[Task, tuple[int, Deferred[None]]] = OrderedDict()
        self._tickets = 0
        #: Tickets of tasks that left from behind the first one, sorted: the
        #: gaps to leave out when counting who is ahead.
        self._gaps: list[int] = []
        self._closed = False
        #: How many are ahead of the first task (another daemon's, in a fleet).
        self.first_ahead = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def join(self, task: Task) -> Deferred[None] | None:
        """Put ``task`` at the back: None when it is first (it asks for a
        slot now), else its turn, which fires when it becomes first.

        Raises :class:`CancelledError` once the line is closed.
        """
        if self._closed:
            raise CancelledError()
        first = not self._waiting
        turn: Deferred[None] = Deferred()
        self._waiting[task] = (self._tickets, turn)
        self._tickets += 1
        task.line = self
        return None if first else turn

    def leave(self, task: Task) -> None:
        """Take ``task`` out (wherever it stands); if it was first, the next
        one's turn comes."""
        entry = self._waiting.pop(task, None)
        task.line = None
        if entry is None:
            return
        if not self._waiting:
            self._gaps.clear()  # an empty line starts afresh
            self.first_ahead = 0
            return
        first_ticket, turn = next(iter(self._waiting.values()))
        was_first = entry[0] < first_ticket
        if not was_first:
            insort(self._gaps, entry[0])  # from the middle: a gap
        if len(self._gaps) > 2 * len(self._waiting) + 64:
            self._compact()
        if was_first:
            turn.callback(None)  # the next stands where the first stood

    def _compact(self) -> None:
        """Number the waiting tasks afresh, without gaps: O(n), after at
        least 2n + 64 tasks left from the middle, so O(1) for each."""
        for ticket, (task, (_, turn)) in enumerate(list(self._waiting.items())):
            self._waiting[task] = (ticket, turn)
        self._tickets = len(self._waiting)
        self._gaps.clear()

    def report(self, first_ahead: int) -> None:
        """The coordinator's news: ``first_ahead`` are ahead of the first."""
        self.first_ahead = first_ahead

    def ahead(self, task: Task) -> int:
        """How many tasks will start before ``task`` (0 if not waiting)."""
        entry = self._waiting.get(task)
        if entry is None:
            return 0
        first_ticket = next(iter(self._waiting.values()))[0]
        gaps = bisect_left(self._gaps, entry[0]) - bisect_right(
            self._gaps, first_ticket
        )
        return self.first_ahead + entry[0] - first_ticket - gaps

    def close(self) -> None:
        """Stopping: nobody's turn comes any more, and nobody joins. The
        waiting tasks are cancelled by their owner; each leave is then O(1)."""
        self._closed = True
        self._waiting.clear()
        self._gaps.clear()
