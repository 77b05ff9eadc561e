"""The cache of stored keys never outlives the object: it knows when each
object was stored and stops redirecting before ``expire_after`` deletes it;
an object found missing is forgotten at once; popular archives close to
expiry are refreshed before it (driven by a Clock, no real time)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from fakes import InlineStorageService, MemoryStorage
from twisted.internet.task import Clock

from archiverd.ops.metrics import Metrics
from archiverd.storage.expiry import Refresher, default_window
from archiverd.storage.stored import StoredKeys

DAY = 86400.0
EXPIRE = 30 * DAY
MARGIN = 360.0


class Wall:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class DatedStorage(MemoryStorage):  # type: ignore[misc]
    """Memory storage that knows when each object was stored, as S3 and the
    file backend do, and counts refreshes."""

    def __init__(self, wall: Wall) -> None:
        super().__init__(("east", "west"), wall)
        self.wall = wall
        self.stored: dict[tuple[str, str], float] = {}
        self.refreshed: list[tuple[str, str]] = []

    def keep(self, region: str, key: str, at: float) -> None:
        self.objects[(region, key)] = b"x"
        self.stored[(region, key)] = at

    def stored_at(self, region: str, key: str) -> float | None:
        if (region, key) not in self.objects:
            return None
        return self.stored[(region, key)]

    def refresh(self, region: str, key: str, stored_before: float) -> float | None:
        if (region, key) not in self.objects:
            return None
        self.refreshed.append((region, key))
        self.stored[(region, key)] = self.wall.now
        return self.wall.now


def service(wall: Wall, storage: Any, clock: Clock, **kw: Any) -> Any:
    return InlineStorageService(
        storage,
        clock,
        exists_cache_size=100,
        exists_cache_ttl=3600,
        signed_url_reuse=30,
        expire_after=EXPIRE,
        expiry_margin=MARGIN,
        wall=wall,
        metrics=Metrics(),
        **kw,
    )


def test_a_key_is_not_answered_within_the_margin_of_its_expiry() -> None:
    wall, clock = Wall(), Clock()
    keys = StoredKeys(10, 3600, clock.seconds, wall, expire_after=EXPIRE, margin=MARGIN)
    keys.put("east", "k", wall.now - EXPIRE + MARGIN + 10)
    assert keys.known("east", "k")
    wall.now += 10
    assert not keys.known("east", "k")
    assert keys.held("east", "k")  # kept, so that a 404 later is told apart


@pytest_twisted.ensureDeferred
async def test_exists_says_no_for_an_object_about_to_expire() -> None:
    """Storage still has it, but it would be deleted before a client sent
    there could fetch it: it counts as missing (and is fetched again)."""
    wall, clock = Wall(), Clock()
    storage = DatedStorage(wall)
    storage.keep("east", "old", wall.now - EXPIRE + MARGIN - 1)
    storage.keep("east", "new", wall.now - DAY)
    svc = service(wall, storage, clock)
    assert not await svc.exists("east", "old")
    assert await svc.exists("east", "new")
    assert svc.known("east", "new")
    wall.now += EXPIRE - DAY - MARGIN  # the cached entry reaches its deadline
    assert not svc.known("east", "new")
    assert svc.cached_signed_url("east", "new", 300) is None


@pytest_twisted.ensureDeferred
async def test_an_object_deleted_out_of_band_is_forgotten_on_the_next_look() -> None:
    wall, clock = Wall(), Clock()
    storage = DatedStorage(wall)
    storage.keep("east", "k", wall.now)
    svc = service(wall, storage, clock)
    assert await svc.exists("east", "k")
    await svc.signed_url("east", "k", 300)
    del storage.objects[("east", "k")]
    clock.advance(3600)  # the entry is looked at again
    assert not await svc.exists("east", "k")
    assert not svc.stored.held("east", "k")
    assert svc.cached_signed_url("east", "k", 300) is None
    assert svc.metrics.repairs.labels("head")._value.get() == 1


@pytest_twisted.ensureDeferred
async def test_a_forgotten_key_gets_no_cached_url_and_a_barred_one_is_missing() -> None:
    wall, clock = Wall(), Clock()
    storage = DatedStorage(wall)
    storage.keep("east", "k", wall.now)
    svc = service(wall, storage, clock)
    assert await svc.exists("east", "k")
    assert await svc.signed_url("east", "k", 300)
    svc.forget("east", "k", "eviction", bar=8)
    assert not svc.known("east", "k")
    assert svc.cached_signed_url("east", "k", 300) is None
    assert not await svc.exists("east", "k")  # storage still has it: barred
    clock.advance(9)
    assert await svc.exists("east", "k")
    assert svc.metrics.repairs.labels("eviction")._value.get() == 1


@pytest_twisted.ensureDeferred
async def test_a_popular_archive_is_refreshed_before_it_expires() -> None:
    """Asked for within the last day and less than a day from its deadline:
    refreshed in the background (its stored time moves to now); one nobody
    asked for is not, and stops being redirected to at its deadline."""
    wall, clock = Wall(), Clock()
    storage = DatedStorage(wall)
    svc = service(wall, storage, clock)
    start = wall.now
    for key in ("popular", "cold"):
        storage.keep("east", key, start)
        assert await svc.exists("east", key)
    refresher = Refresher(
        svc, clock, window=default_window(EXPIRE), interval=600, metrics=svc.metrics
    )
    refresher.startService()
    try:
        await svc.signed_url("east", "popular", 300)  # asked for: not due yet
        assert storage.refreshed == []
        # 29 days on (the monotonic clock moved less: a day's worth).
        wall.now = start + EXPIRE - MARGIN - DAY / 2
        clock.advance(DAY - 3600)
        await svc.signed_url("east", "popular", 300)  # asked again, due now
        assert storage.refreshed == [("east", "popular")]
        assert svc.stored.stored_at("east", "popular") == wall.now
        wall.now = start + EXPIRE - MARGIN
        clock.advance(600)
        assert svc.known("east", "popular")
        assert not svc.known("east", "cold")
        assert storage.refreshed == [("east", "popular")]
        assert svc.metrics.refreshes.labels("ok")._value.get() == 1
    finally:
        refresher.stopService()


@pytest_twisted.ensureDeferred
async def test_the_pass_refreshes_what_was_asked_for_within_a_day_only() -> None:
    wall, clock = Wall(), Clock()
    storage = DatedStorage(wall)
    svc = service(wall, storage, clock)
    refresher = Refresher(svc, clock, window=DAY, interval=600)
    start = wall.now
    for key in ("yesterday", "last-week"):
        storage.keep("east", key, start)
        assert await svc.exists("east", key)
    await svc.signed_url("east", "last-week", 300)
    clock.advance(6 * DAY)
    await svc.signed_url("east", "yesterday", 300)
    clock.advance(DAY - 60)
    wall.now = start + EXPIRE - MARGIN - DAY / 2
    assert refresher.pass_once() == 1
    assert storage.refreshed == [("east", "yesterday")]
