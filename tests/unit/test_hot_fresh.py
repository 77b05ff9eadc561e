"""Polls stay on the hot path when the signed URLs' reuse window ends: the
URLs of polled tasks are signed again in the background before it does, and
no URL handed out has lost more than 10% of its validity."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from test_hot import CACHES, Both, _finished
from test_web import ASH, World

from archiverd.fresh_urls import FreshUrls

EXPIRY = 300
WINDOW = EXPIRY / 10


@pytest.fixture
def both() -> Both:
    world = World(caches=CACHES)
    world.store(ASH.key)
    archives = world.archives
    # As tap.py builds it (no jitter here: due at 75% of the window).
    archives.fresh_urls = FreshUrls(
        archives.regions,
        world.clock,
        WINDOW,
        archives._sign_afresh,
        world.storage.uses.record,
        jitter=lambda: 0.0,
    )
    return Both(world)


def _validity_left(urls: dict[str, str], now: float) -> list[float]:
    """Each URL's remaining validity, as a share of the whole."""
    return [
        (int(parse_qs(urlsplit(url).query)["Expires"][0]) - now) / EXPIRY
        for url in urls.values()
    ]


def _poll(both: Both, task_id: str) -> dict[str, str]:
    answer = both.get(both.with_hot, f"/archiver/status/{task_id}", "GET")
    assert answer.code == 200
    urls: dict[str, str] = answer.json["result"]["s3_urls"]
    return urls


def test_polls_after_the_reuse_window_never_reach_klein(both: Both) -> None:
    world = both.world
    task_id = _finished(world, "0123456789ab")
    first = _poll(both, task_id)  # signs its URLs (through Klein)
    rendered = both.klein.rendered
    batches = world.storage.calls.count("sign")
    for _ in range(int(3 * WINDOW)):  # a poll a second for three windows
        world.clock.advance(1)
        urls = _poll(both, task_id)
        assert min(_validity_left(urls, world.clock.seconds())) >= 0.9
    assert both.klein.rendered == rendered
    assert urls != first
    # Signed again every 23.5 s (75% of the window, and a second to gather
    # others), not at every poll.
    assert world.storage.calls.count("sign") - batches == 3


def test_urls_nobody_polled_for_a_whole_window_are_signed_at_the_next_poll(
    both: Both,
) -> None:
    world = both.world
    task_id = _finished(world, "0123456789ab")
    _poll(both, task_id)
    rendered = both.klein.rendered
    world.clock.advance(WINDOW)
    urls = _poll(both, task_id)
    assert both.klein.rendered == rendered + 1  # signed as before
    assert min(_validity_left(urls, world.clock.seconds())) == 1.0


def test_urls_partly_reused_from_the_storage_cache_are_not_kept(both: Both) -> None:
    """A URL whose age is unknown (reused by the storage) is never kept for
    a further window."""
    world = both.world
    archives = world.archives
    task_id = _finished(world, "0123456789ab")
    key = world.tasks.get(task_id).key
    world.store(key)
    # A hit signs the default region's URL, which polls then reuse.
    assert world.get("/archiver/hgmo/projects/ash/0123456789ab").code == 302
    world.clock.advance(WINDOW - 1)
    _poll(both, task_id)
    assert archives.fresh_urls is not None
    assert archives.fresh_urls.get(key) is None


def test_the_answers_stay_klein_s_own(both: Both) -> None:
    world = both.world
    task_id = _finished(world, "0123456789ab")
    both.same(f"/archiver/status/{task_id}")
    for _ in range(4):
        world.clock.advance(WINDOW / 2)
        _poll(both, task_id)  # (signs again, when due)
        both.same(f"/archiver/status/{task_id}")


def test_a_keys_use_is_told_at_most_once_a_second() -> None:
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    clock = Clock()
    told: list[tuple[str, str]] = []
    fresh = FreshUrls(
        ("a", "b"),
        clock,
        WINDOW,
        lambda keys: succeed([{"a": "u", "b": "v"} for _ in keys]),
        lambda region, key: told.append((region, key)),
    )
    fresh.put("k", {"a": "u", "b": "v"})
    for _ in range(10):
        assert fresh.get("k") == {"a": "u", "b": "v"}
        clock.advance(0.09)
    assert told == [("a", "k"), ("b", "k")]
    clock.advance(0.2)
    fresh.get("k")
    assert len(told) == 4
