"""The file backend's retention on a real folder: least recently used first,
down to the low-water mark; never an upload in progress nor an object used
within min_idle; a use or a newer copy since the choice spares an object; the
journal tells every daemon sharing the root; a full disk fails the write and
flags it; the files route forgets what it cannot find."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fakes import InlineStorageService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from archiverd.ops.metrics import Metrics
from archiverd.storage import retention
from archiverd.storage.base import ObjectInfo
from archiverd.storage.files import FileStorage
from archiverd.storage.limits import parse_limit
from archiverd.storage.sweeper import Sweeper

INFO = ObjectInfo("application/x-gzip", "a.tar.gz")
KIB = 1024


class Wall:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def files(tmp_path: Path, wall: Wall) -> FileStorage:
    storage = FileStorage(tmp_path, ("a", "b"), "s" * 32, clock=wall)
    storage.open()
    return storage


def store(files: FileStorage, wall: Wall, key: str, size: int = 10 * KIB) -> None:
    files.put("a", key, b"x" * size, INFO, "")
    wall.now += 10


def test_sizes_and_shares_are_read() -> None:
    assert parse_limit("200GiB") == (200 * 2**30, None)
    assert parse_limit("500G") == (500 * 10**9, None)
    assert parse_limit("1.5 MiB") == (int(1.5 * 2**20), None)
    assert parse_limit("80%") == (None, 0.8)
    for bad in ("", "lots", "0GiB", "0%", "101%", "-5G"):
        with pytest.raises(ValueError):
            parse_limit(bad)


def test_the_least_recently_used_go_first_down_to_the_low_water_mark(
    files: FileStorage, wall: Wall
) -> None:
    for n in range(10):
        store(files, wall, f"k{n}")
    retention.save_uses(files, {("a", "k0"): wall.now})  # k0 used last
    limit = 80 * KIB  # 10 x 10 KiB (and metadata) held
    victims = retention.plan(files, wall.now, max_bytes=str(limit)).victims
    chosen = [v.key for v in victims]
    assert chosen == ["k1", "k2", "k3"]  # to 90% of 80 KiB, metadata counted
    assert {v.reason for v in victims} == {"size"}
    deleted = retention.evict(files, victims, wall.now)
    assert len(deleted) == 3
    _, used = retention.scan(files)
    assert sum(used.values()) <= 0.9 * limit
    assert files.exists("a", "k0") and not files.exists("a", "k1")


def test_uploads_in_progress_count_but_are_never_evicted(
    files: FileStorage, wall: Wall
) -> None:
    store(files, wall, "old")
    upload = files.start_upload("a", "writing", INFO)
    files.upload_part("a", "writing", upload, 1, 0, b"y" * 50 * KIB)
    victims = retention.plan(files, wall.now, max_bytes="40KiB").victims
    assert [v.key for v in victims] == ["old"]
    retention.evict(files, victims, wall.now)
    files.complete_upload("a", "writing", upload, [], INFO, "", 50 * KIB)
    assert files.exists("a", "writing")


def test_objects_used_within_min_idle_are_kept_even_over_the_limit(
    files: FileStorage, wall: Wall
) -> None:
    for n in range(3):
        store(files, wall, f"k{n}")
    victims = retention.plan(files, wall.now, max_bytes="1KiB", min_idle=25).victims
    assert [v.key for v in victims] == ["k0"]  # k1, k2 stored under 25 s ago


def test_max_age_and_expire_after(files: FileStorage, wall: Wall) -> None:
    store(files, wall, "unused")
    store(files, wall, "used")
    store(files, wall, "refreshed")
    wall.now += 1000
    retention.save_uses(files, {("a", "used"): wall.now})
    files.refresh("a", "refreshed")
    victims = retention.plan(files, wall.now, max_age=500).victims
    assert [(v.key, v.reason) for v in victims] == [("unused", "age")]
    victims = retention.plan(files, wall.now, expire_after=900).victims
    assert sorted((v.key, v.reason) for v in victims) == [
        ("unused", "expired"),
        ("used", "expired"),
    ]


def test_a_use_or_a_newer_copy_since_the_choice_spares_the_object(
    files: FileStorage, wall: Wall
) -> None:
    for key in ("used", "replaced", "idle"):
        store(files, wall, key)
    victims = retention.plan(files, wall.now, max_bytes="1KiB").victims
    assert len(victims) == 3
    wall.now += 5
    retention.save_uses(files, {("a", "used"): wall.now})  # another daemon's
    store(files, wall, "replaced")  # stored again meanwhile
    deleted = retention.evict(files, victims, wall.now)
    assert [v.key for v in deleted] == ["idle"]
    assert files.exists("a", "used") and files.exists("a", "replaced")


def test_uses_are_written_once_per_object_and_never_move_back(
    files: FileStorage, wall: Wall
) -> None:
    store(files, wall, "k")
    meta = files.object_path("a", "k").with_suffix(".json")
    assert retention.save_uses(files, {("a", "k"): wall.now + 5}) == 1
    assert os.stat(meta).st_mtime == wall.now + 5
    assert retention.save_uses(files, {("a", "k"): wall.now}) == 0
    assert retention.save_uses(files, {("a", "gone"): wall.now}) == 0


def test_the_journal_names_the_evicted_keys_once(
    files: FileStorage, wall: Wall
) -> None:
    store(files, wall, "k0")
    store(files, wall, "k1")
    seen: set[str] = set()
    assert retention.read_journal(files.root, seen) == []
    victims = retention.plan(files, wall.now, max_bytes="1KiB").victims
    assert sorted(retention.read_journal(files.root, seen)) == [
        ("a", "k0"),
        ("a", "k1"),
    ]
    assert retention.read_journal(files.root, seen) == []
    wall.now += retention.JOURNAL_KEEP + 1
    retention.evict(files, victims, wall.now)  # the old file is cleaned up
    assert len(os.listdir(files.root / retention.JOURNAL)) == 1


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 1 MiB file system of its own (tmpfs; needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount]
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", mount], check=True)


def test_a_full_disk_fails_the_write_cleanly_and_flags_it(
    tiny_disk: Path, wall: Wall
) -> None:
    """No room left: the write fails saying so, abort leaves no partial file,
    the storage is flagged full (retention runs at once), and objects
    already stored are still served."""
    files = FileStorage(tiny_disk, ("a",), "s" * 32, clock=wall)
    files.open()
    files.put("a", "small", b"x" * KIB, INFO, "")
    upload = files.start_upload("a", "big", INFO)
    with pytest.raises(OSError) as failed:
        files.upload_part("a", "big", upload, 1, 0, b"x" * 2 * 1024 * KIB)
    assert failed.value.errno == errno.ENOSPC
    assert "storage a is full" in str(failed.value)
    assert files.full.is_set()
    files.abort_upload("a", "big", upload)
    assert os.listdir(tiny_disk / "a" / ".partial") == []
    assert files.exists("a", "small")


@pytest_twisted.ensureDeferred
async def test_a_pass_evicts_after_the_grace_period_and_tells_the_cache(
    files: FileStorage, wall: Wall
) -> None:
    clock = Clock()
    storage = InlineStorageService(
        files,
        clock,
        exists_cache_size=100,
        exists_cache_ttl=3600,
        metrics=Metrics(),
        wall=wall,
    )
    for n in range(4):
        store(files, wall, f"k{n}")
        assert await storage.exists("a", f"k{n}")
    sweeper = Sweeper(
        files, storage, clock, max_bytes="25KiB", min_idle=0, metrics=storage.metrics
    )
    d = Deferred.fromCoroutine(sweeper.pass_once())
    assert not d.called
    assert not storage.known("a", "k0")  # forgotten before it is deleted
    assert files.exists("a", "k0")
    clock.advance(sweeper.grace)
    deleted = await d
    assert [v.key for v in deleted] == ["k0", "k1"]  # down to 90% of 25 KiB
    assert not files.exists("a", "k0") and files.exists("a", "k3")
    assert storage.metrics.evictions.labels("size")._value.get() == 2
