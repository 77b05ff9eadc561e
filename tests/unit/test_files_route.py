"""The files route against its own storage and hostile Range headers: never
more bytes than the object holds, never a byte from outside the store, and
every answer's headers true to its body."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_web import ASH, INFO, REV, World
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from archiverd.api.files import SignedFiles
from archiverd.storage.files import FileStorage

BODY = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable


def _world(tmp_path: Path, body: bytes = BODY, sha256: str = "ab" * 32) -> World:
    clock = Clock()
    clock.advance(1_700_000_000)
    files = FileStorage(tmp_path, ("local",), secret="s" * 32, clock=clock.seconds)
    files.open()
    files.put("local", ASH.key, body, INFO, sha256)
    return World(files=files, clock=clock)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return _world(tmp_path)


def _url(world: World) -> str:
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    assert answer.code == 302
    return answer.header("Location")


def _object_path(world: World) -> Path:
    files: FileStorage = world.backend
    return files._object_path("local", ASH.key)


def _length(answer: Any) -> int:
    """The Content-Length sent (a HEAD answer's is among its headers)."""
    if answer.length is not None:
        return int(answer.length)
    return int(answer.header("Content-Length"))


# -- Range amplification (issue 10, item 10) -----------------------------------


@pytest_twisted.ensureDeferred
async def test_thousands_of_overlapping_ranges_never_send_more_than_the_object(
    world: World,
) -> None:
    """5,000 ``0-`` ranges once made a 206 of 5,000 copies (62 GB for a
    12 MiB object); now the object is sent once."""
    url = _url(world)
    answer = await world.served(url, Range="bytes=" + ",".join(["0-"] * 5000))
    assert (answer.code, answer.body, _length(answer)) == (200, BODY, len(BODY))
    # Fewer (up to a thousand) are coalesced into the one range they cover.
    answer = await world.served(url, Range="bytes=" + ",".join(["0-"] * 100))
    assert (answer.code, answer.body, _length(answer)) == (206, BODY, len(BODY))
    assert answer.header("Content-Range") == f"bytes 0-{len(BODY) - 1}/{len(BODY)}"


@pytest_twisted.ensureDeferred
async def test_overlapping_and_adjacent_ranges_are_coalesced_into_one(
    world: World,
) -> None:
    answer = await world.served(_url(world), Range="bytes=100-199, 0-99,150-299")
    assert answer.code == 206
    assert answer.header("Content-Range") == f"bytes 0-299/{len(BODY)}"
    assert answer.body == BODY[:300]


@pytest_twisted.ensureDeferred
async def test_disjoint_ranges_get_the_whole_object_once(world: World) -> None:
    """RFC 9110 14.2 lets a server ignore a Range header; several disjoint
    ranges get the object with 200 (never a multipart body that could add up
    to more than the object)."""
    answer = await world.served(_url(world), Range="bytes=0-0,1000-1000,-1")
    assert answer.code == 200
    assert answer.header("Content-Range") is None
    assert answer.body == BODY and _length(answer) == len(BODY)


@pytest.mark.parametrize(
    ("header", "code", "content_range", "expected"),
    [
        ("bytes=10-19", 206, "bytes 10-19/10240", BODY[10:20]),
        ("bytes=10240-", 416, "bytes */10240", b""),
        ("bytes=-100", 206, "bytes 10140-10239/10240", BODY[-100:]),
        # A suffix longer than the object is the whole object (RFC 9110
        # 14.1.1), not a negative offset and a 500.
        ("bytes=-99999", 206, "bytes 0-10239/10240", BODY),
        ("bytes=0-99999999999999999999999", 206, "bytes 0-10239/10240", BODY),
        ("bytes=-0", 416, "bytes */10240", b""),
        ("BYTES = 5-9", 206, "bytes 5-9/10240", BODY[5:10]),
        ("bytes=9-5", 200, None, BODY),  # invalid: ignored
        ("bytes=5", 200, None, BODY),
        ("bytes=+5-9", 200, None, BODY),
        ("bytes=0x5-9", 200, None, BODY),
        ("items=0-9", 200, None, BODY),
        ("bytes=" + "9" * 5000 + "-", 416, "bytes */10240", b""),
    ],
)
@pytest_twisted.ensureDeferred
async def test_each_range_answer_says_exactly_what_its_body_holds(
    world: World, header: str, code: int, content_range: str | None, expected: bytes
) -> None:
    with capturedLogs() as events:
        answer = await world.served(_url(world), Range=header)
    assert (answer.code, answer.header("Content-Range")) == (code, content_range)
    assert answer.body == expected
    assert _length(answer) == len(expected)
    assert not [e for e in events if e["log_level"].name in ("error", "critical")]


@pytest_twisted.ensureDeferred
async def test_if_range_with_another_validator_gets_the_whole_new_object(
    world: World,
) -> None:
    """A client resuming a download of an object that has since changed must
    not be handed a piece of the new one to splice onto the old."""
    url = _url(world)
    whole = await world.served(url)
    etag = whole.header("ETag")
    assert etag == '"' + "ab" * 32 + '"'
    same = await world.served(url, Range="bytes=0-9", **{"If-Range": etag})
    assert (same.code, same.body) == (206, BODY[:10])
    dated = await world.served(
        url, Range="bytes=0-9", **{"If-Range": whole.header("Last-Modified")}
    )
    assert (dated.code, dated.body) == (206, BODY[:10])
    for other in ('"' + "cd" * 32 + '"', "W/" + etag, "Tue, 01 Jan 2000 00:00:00 GMT"):
        answer = await world.served(url, Range="bytes=0-9", **{"If-Range": other})
        assert (answer.code, answer.body) == (200, BODY), other


@pytest_twisted.ensureDeferred
async def test_head_ignores_range_and_gives_the_whole_length(world: World) -> None:
    answer = world.get(_url(world), method="HEAD", Range="bytes=0-9")
    assert (answer.code, answer.body) == (200, b"")
    assert _length(answer) == len(BODY)
    assert answer.header("Accept-Ranges") == "bytes"


@pytest_twisted.ensureDeferred
async def test_an_empty_object_is_served_and_any_range_is_unsatisfiable(
    tmp_path: Path,
) -> None:
    world = _world(tmp_path, b"")
    url = _url(world)
    whole = await world.served(url)
    assert (whole.code, whole.body, _length(whole)) == (200, b"", 0)
    ranged = await world.served(url, Range="bytes=0-")
    assert (ranged.code, ranged.header("Content-Range")) == (416, "bytes */0")


# -- the object's file: links and other odd files (issue 10, item 11) -------------


@pytest_twisted.ensureDeferred
async def test_an_object_replaced_by_a_symlink_is_not_followed(
    world: World, tmp_path: Path
) -> None:
    """An object file swapped for a link to a file outside the store (as to
    /etc/passwd) is never served, even by a validly signed URL."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"root:x:0:0:root:/root:/bin/sh\n")
    url = _url(world)
    path = _object_path(world)
    path.unlink()
    path.symlink_to(outside)
    answer = await world.served(url)
    assert answer.code == 404
    assert b"root:" not in answer.body


@pytest_twisted.ensureDeferred
async def test_a_symlinked_folder_inside_the_store_is_not_followed(
    world: World, tmp_path: Path
) -> None:
    url = _url(world)
    path = _object_path(world)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    path.parent.rename(elsewhere)
    path.parent.symlink_to(elsewhere)
    answer = await world.served(url)
    assert answer.code == 404


@pytest_twisted.ensureDeferred
async def test_metadata_through_a_symlink_is_not_read(
    world: World, tmp_path: Path
) -> None:
    url = _url(world)
    meta = _object_path(world).with_suffix(".json")
    copy = tmp_path.parent / f"{tmp_path.name}-meta.json"
    copy.write_bytes(meta.read_bytes())
    meta.unlink()
    meta.symlink_to(copy)
    assert (await world.served(url)).code == 404


@pytest_twisted.ensureDeferred
async def test_a_fifo_in_place_of_an_object_is_a_404_without_blocking(
    world: World,
) -> None:
    """Opening a FIFO for reading waits for a writer: the storage thread (or
    the reactor) would hang for ever."""
    url = _url(world)
    path = _object_path(world)
    path.unlink()
    os.mkfifo(path)
    assert (await world.served(url)).code == 404


@pytest.mark.parametrize(
    "meta",
    [b"{}", b'{"key": 1}', b"[]", b"not json", b'{"key": "%s"}'],
)
@pytest_twisted.ensureDeferred
async def test_broken_metadata_is_a_404_not_a_500(world: World, meta: bytes) -> None:
    url = _url(world)
    path = _object_path(world).with_suffix(".json")
    path.write_bytes(meta.replace(b"%s", ASH.key.encode()))
    with capturedLogs() as events:
        answer = await world.served(url)
    assert answer.code == 404
    assert not [e for e in events if e["log_level"].name in ("error", "critical")]


@pytest_twisted.ensureDeferred
async def test_exists_does_not_count_a_symlink_as_stored(world: World) -> None:
    files: FileStorage = world.backend
    assert files.exists("local", ASH.key)
    path = _object_path(world)
    target = path.with_name("target")
    path.rename(target)
    path.symlink_to(target)
    assert not files.exists("local", ASH.key)


class _Truncating:
    """The file backend, with each object cut short right after it is
    opened: as if something outside archiverd truncated it mid-download."""

    def __init__(self, files: FileStorage) -> None:
        self.files = files

    def verify(self, *args: str) -> bool:
        return self.files.verify(*args)

    def open_object(self, region: str, key: str) -> Any:
        stored = self.files.open_object(region, key)
        if stored is not None:
            os.truncate(self.files._object_path(region, key), 100)
        return stored


@pytest_twisted.ensureDeferred
async def test_a_file_cut_short_while_served_aborts_instead_of_ending_short(
    world: World,
) -> None:
    """The answer announced 10,240 bytes: sending 100 and ending cleanly would
    be a lie the client could take for the whole object."""
    url = _url(world)
    world.api.files = SignedFiles(_Truncating(world.backend), world.storage.call)
    with capturedLogs() as events:
        with pytest.raises(AssertionError) as failed:
            await world.served(url)
    assert "ResponseFailed" in repr(failed.value) or "DataLoss" in repr(failed.value)
    assert any("ended 10140 bytes early" in formatEvent(e) for e in events)


@pytest_twisted.ensureDeferred
async def test_an_object_cut_short_at_rest_is_neither_served_nor_counted_stored(
    world: World,
) -> None:
    """Its sha256 header would be a lie; counting it as absent means the next
    request for the archive fetches and stores it again."""
    url = _url(world)
    os.truncate(_object_path(world), 100)
    assert (await world.served(url)).code == 404
    assert not world.backend.exists("local", ASH.key)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 202


def test_an_upload_never_writes_through_a_link(world: World, tmp_path: Path) -> None:
    files: FileStorage = world.backend
    upload = files.start_upload("local", "k", INFO)
    partial = files._partial_path("local", upload)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_bytes(b"precious")
    partial.unlink()
    partial.symlink_to(victim)
    with pytest.raises(OSError):
        files.upload_part("local", "k", upload, 1, 0, b"overwritten")
    with pytest.raises(OSError):
        files.complete_upload("local", "k", upload, [], INFO, "0" * 64, 8)
    assert victim.read_bytes() == b"precious"
