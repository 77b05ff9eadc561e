"""The cache of stored keys: which (region, key) pairs are stored, since when,
and until when a client may still be sent to them.

Archives are immutable, so "this key is stored in this region" stays true
until the object is deleted: by the bucket's lifecycle rule (``[storage]
expire_after`` seconds after it was stored), by the file backend's retention,
or out of band. The cache knows when each object was stored, so it stops
answering "stored" ``margin`` seconds before the expiry deletes it (the
margin covers a signed URL's validity: a client sent there just before can
still download); and an entry is forgotten at once when the object is found
missing (:meth:`StoredKeys.drop`), so the next request is not a redirect to
nothing. Entries are also checked again ``ttl`` seconds after they were
learnt, for deletions nobody tells archiverd about.

An entry past its ``ttl`` is kept (not answered) until asked about again, so
that the next look at storage can tell "gone" from "never known": a key the
cache held that storage no longer has is counted as found missing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Slot = tuple[str, str]


@dataclass(slots=True)
class Entry:
    #: When the entry was learnt, on the monotonic clock (for ``ttl``).
    seen: float
    #: When the object was stored (or last refreshed), on the wall clock.
    stored_at: float


class StoredKeys:
    """At most ``size`` (region, key) pairs seen stored, least recently used
    first out; each answered for ``ttl`` seconds and, with ``expire_after``,
    only while the object has more than ``margin`` seconds left to live."""

    def __init__(
        self,
        size: int,
        ttl: float,
        now: Callable[[], float],
        wall: Callable[[], float],
        *,
        expire_after: float = 0.0,
        margin: float = 0.0,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.expire_after = expire_after
        self.margin = margin
        self._now = now
        self._wall = wall
        self._entries: OrderedDict[Slot, Entry] = OrderedDict()
        #: Keys about to be evicted: not stored, whatever storage says,
        #: until this monotonic time (or until stored again).
        self._barred: dict[Slot, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def wall(self) -> float:
        """Now, on the wall clock that stored times are on."""
        return self._wall()

    def deadline(self, stored_at: float) -> float:
        """The wall-clock time after which an object stored at ``stored_at``
        is no longer redirected to (infinite without ``expire_after``)."""
        if self.expire_after <= 0:
            return float("inf")
        return stored_at + self.expire_after - self.margin

    def redirectable(self, stored_at: float) -> bool:
        """Whether an object stored at ``stored_at`` may be redirected to now."""
        return self._wall() < self.deadline(stored_at)

    def known(self, region: str, key: str) -> bool:
        """Stored, learnt within ``ttl``, and not about to expire."""
        entry = self._entries.get((region, key))
        if entry is None or self._now() - entry.seen >= self.ttl:
            return False
        if self.expire_after > 0 and not self.redirectable(entry.stored_at):
            return False
        self._entries.move_to_end((region, key))
        return True

    def held(self, region: str, key: str) -> bool:
        """Whether there is an entry at all (answered or not)."""
        return (region, key) in self._entries

    def stored_at(self, region: str, key: str) -> float | None:
        """When the cached object was stored, if there is an entry."""
        entry = self._entries.get((region, key))
        return None if entry is None else entry.stored_at

    def put(self, region: str, key: str, stored_at: float | None = None) -> None:
        """Remember the key as stored at ``stored_at`` (default: now)."""
        if self.size <= 0:
            return
        if stored_at is None:
            self._barred.pop((region, key), None)  # a new copy
        when = self._wall() if stored_at is None else stored_at
        self._entries[(region, key)] = Entry(self._now(), when)
        self._entries.move_to_end((region, key))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, region: str, key: str) -> bool:
        """Forget the key; whether there was an entry."""
        return self._entries.pop((region, key), None) is not None

    def bar(self, region: str, key: str, seconds: float) -> None:
        """Count the key as not stored for ``seconds`` (it is being evicted),
        unless it is stored again meanwhile."""
        now = self._now()
        if len(self._barred) > self.size:
            self._barred = {s: t for s, t in self._barred.items() if t > now}
        self._barred[(region, key)] = now + seconds

    def barred(self, region: str, key: str) -> bool:
        until = self._barred.get((region, key))
        if until is None:
            return False
        if self._now() < until:
            return True
        del self._barred[(region, key)]
        return False
