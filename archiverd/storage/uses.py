"""When each stored archive was last used (redirected to, or its URL handed
out in a status), kept in memory on the reactor thread.

A hit costs one dict store. What :meth:`Uses.take_unsaved` returns is written
out in batches by whoever needs it to last (the file backend's retention sets
each used object's metadata mtime, once per object per flush, never once per
hit). The ones asked for lately are what the refresher keeps from expiring.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

Slot = tuple[str, str]


class Uses:
    """The last use of at most ``size`` (region, key) pairs."""

    def __init__(
        self, size: int, now: Callable[[], float], wall: Callable[[], float]
    ) -> None:
        self.size = size
        self._now = now
        self._wall = wall
        #: Monotonic time of each pair's last use, least recent first.
        self._last: OrderedDict[Slot, float] = OrderedDict()
        #: Wall time of the last use of pairs used since the last take.
        self._unsaved: dict[Slot, float] = {}
        #: Called with (region, key) at each use (the refresher).
        self.listeners: list[Callable[[str, str], None]] = []

    def __len__(self) -> int:
        return len(self._last)

    def record(self, region: str, key: str) -> None:
        slot = (region, key)
        self._last[slot] = self._now()
        self._last.move_to_end(slot)
        if len(self._last) > self.size:
            self._last.popitem(last=False)
        if len(self._unsaved) < self.size:
            self._unsaved[slot] = self._wall()
        for listener in self.listeners:
            listener(region, key)

    def take_unsaved(self) -> dict[Slot, float]:
        """The wall time of each use since the last take (and forget them)."""
        unsaved, self._unsaved = self._unsaved, {}
        return unsaved

    def used_within(self, seconds: float) -> Iterator[Slot]:
        """Pairs used in the last ``seconds``, most recent first."""
        since = self._now() - seconds
        for slot in reversed(self._last):
            if self._last[slot] < since:
                return
            yield slot

    def forget_older(self, seconds: float) -> None:
        """Drop what was last used more than ``seconds`` ago."""
        since = self._now() - seconds
        while self._last:
            slot, when = next(iter(self._last.items()))
            if when >= since:
                return
            del self._last[slot]
