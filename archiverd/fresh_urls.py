"""Polled tasks' signed URLs, signed again before they are too old to hand out.

A finished task's status carries one signed URL per region, and a URL is
handed out again only while 90% of its validity remains (the storage's reuse
window: a tenth of ``signed_url_expiry``). When the window ended, every poll
of the task waited for its URLs to be signed again, on the signing pool, and
through Klein: polls of many tasks finished together (a fleet's deploy, a
push's builds) all fell off the hot path at once, for as long as the pool
took to sign them all (measured: polls fell from 1.29 to 0.95 of bare
Klein's rate; docs/performance.md).

:class:`FreshUrls` keeps each task's set of URLs with when they were signed.
A poll that finds them due (at 75% to 85% of the window, drawn for each set)
has them signed again in the background, with the others that come due
within a second, and is answered with the ones it has, which still have at
least 90% of their validity; the new ones replace them when signed. No poll
waits, and no URL older than the window is ever handed out: a set nobody
polled for a whole window expires, and the next poll signs as before.

The keys that come due together are signed in one call on a thread, not a
thread hop per URL: measured under polls, signing sets one by one as they
came due (~0.13 ms of CPU a URL for S3, a hop to the pool and back each, and
the reactor thread waiting for the GIL meanwhile) cost polls 10-20% of their
rate for as long as it went on; in batches, about a 5-second window's 5-10%
once per window, the CPU of the signing itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from archiverd.storage.cache import ExpiringLRU

#: Key sets remembered (least recently polled go first).
REMEMBERED = 10_000
#: Keys signed again in one call at most.
BATCH = 1000
#: Seconds between two uses of a key told (a use is a time for eviction's
#: least-recently-used order: told at every poll, it was ~3% of a poll).
USE_EVERY = 1.0
#: Seconds the keys that come due are gathered before they are signed.
GATHER = 1.0


class FreshUrls:
    """Every region's signed URL for a key, signed again ahead of time.

    ``sign(keys)`` signs every region's URL of each key afresh (never from
    a cache), in one call on a thread; ``used(region, key)`` is told of the
    URLs handed out (at most once a second a key).
    """

    log = Logger()

    def __init__(
        self,
        regions: Sequence[str],
        clock: IReactorTime,
        window: float,
        sign: Callable[[list[str]], Deferred[list[dict[str, str]]]],
        used: Callable[[str, str], None],
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.regions = tuple(regions)
        self.window = window
        self._clock = clock
        self._sign = sign
        self._used = used
        self._jitter = jitter
        #: key -> (when to sign again, the URLs by region).
        self._urls: ExpiringLRU[str, tuple[float, dict[str, str]]] = ExpiringLRU(
            REMEMBERED, window, clock.seconds
        )
        #: Keys due to be signed again, in the order they were found due.
        self._due: dict[str, None] = {}
        self._signing: set[str] = set()
        self._timer: IDelayedCall | None = None
        #: When each key's use was last told.
        self._told: dict[str, float] = {}

    def get(self, key: str) -> dict[str, str] | None:
        """The key's URLs if they are fresh enough to hand out, else None;
        once due, they are signed again meanwhile."""
        entry = self._urls.get(key)
        if entry is None:
            return None
        due, urls = entry
        now = self._clock.seconds()
        if due <= now and key not in self._signing:
            self._signing.add(key)
            self._due[key] = None
            if self._timer is None:
                self._timer = self._clock.callLater(GATHER, self._start)
        if now - self._told.get(key, -USE_EVERY) >= USE_EVERY:
            self._told[key] = now
            if len(self._told) > REMEMBERED:
                self._told.clear()
            for region in urls:
                self._used(region, key)
        return urls

    def put(self, key: str, urls: dict[str, str]) -> None:
        """URLs just signed (every region's)."""
        if urls.keys() == set(self.regions):
            due = self._clock.seconds() + self.window * (0.75 + self._jitter() / 10)
            self._urls.put(key, (due, dict(urls)))

    def forget(self, key: str) -> None:
        self._urls.discard(key)

    def _start(self) -> None:
        Deferred.fromCoroutine(self._sign_due())

    async def _sign_due(self) -> None:
        """Sign the due keys again, in batches; what comes due meanwhile
        waits for the next one."""
        while self._due:
            keys = list(self._due)[:BATCH]
            for key in keys:
                del self._due[key]
            try:
                signed = await self._sign(keys)
            except Exception as e:
                # The URLs in hand expire at the end of the window; the next
                # poll of each then signs as if none had been kept.
                self.log.warn(
                    "cannot sign {count} keys' URLs again: {error}",
                    count=len(keys),
                    error=e,
                )
            else:
                for key, urls in zip(keys, signed):
                    self.put(key, urls)
            finally:
                self._signing.difference_update(keys)
        self._timer = None
