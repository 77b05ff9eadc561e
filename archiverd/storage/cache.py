"""Small bounded caches that keep storage calls off the hit path.

Archives are immutable, so "this key exists in this region" stays true once
seen; only its absence is never cached (an archive may appear at any time).
A signed URL can be handed out again while most of its validity remains.
Both caches are bounded (least recently used entries go first) and expire
entries after a configured time, so an object deleted behind archiverd's back
(a lifecycle rule) is noticed within that time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringLRU(Generic[K, V]):
    """At most ``size`` entries, each kept for at most ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float, now: Callable[[], float]) -> None:
        self.size = size
        self.ttl = ttl
        self._now = now
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, max_age: float | None = None) -> V | None:
        """The value if present and younger than ``max_age`` (default ttl)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        added, value = entry
        age = self._now() - added
        if age >= self.ttl:
            del self._entries[key]
            return None
        if max_age is not None and age >= max_age:
            return None
        self._entries.move_to_end(key)
        return value

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (self._now(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
