"""archiverd.transfer.complete: a body HTTP did not prove whole is whole only
when its format says so; every beginning of an archive is refused."""

from __future__ import annotations

import bz2
import gzip
import io
import random
import struct
import tracemalloc
import zipfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiverd.transfer.complete import Bzip2Check, GzipCheck, format_check


def verdict(suffix: str, data: bytes, pieces: int = 1) -> str | None:
    """The check's verdict on ``data`` fed in ``pieces`` (about equal)."""
    check = format_check(suffix)
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        check.feed(data[start : start + step])
    return check.verdict()


def payload(nbytes: int, seed: int = 0) -> bytes:
    """Half random, half repetitive: compresses, but not to nothing."""
    rng = random.Random(seed)
    return rng.randbytes(nbytes // 2) + b"archiverd " * (nbytes // 20)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zipped(members: dict[str, bytes], comment: bytes = b"") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.comment = comment
    return out.getvalue()


ARCHIVES = {
    "tar.gz": gz(payload(20_000)),
    "tar.bz2": bz2.compress(payload(20_000)),
    "zip": zipped({"a/b.txt": payload(20_000), "a/c": b""}),
}


@pytest.mark.parametrize("suffix", sorted(ARCHIVES))
@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_a_whole_archive_is_whole_however_it_arrives(suffix: str, pieces: int) -> None:
    assert verdict(suffix, ARCHIVES[suffix], pieces) is None


@pytest.mark.parametrize("suffix", sorted(ARCHIVES))
def test_every_beginning_of_an_archive_is_refused(suffix: str) -> None:
    """Cut anywhere: not whole, and the verdict says why."""
    data = ARCHIVES[suffix]
    for cut in range(len(data)):
        why = verdict(suffix, data[:cut], pieces=2)
        assert why, (suffix, cut)


@pytest.mark.parametrize("suffix", sorted(ARCHIVES))
def test_an_empty_body_is_no_archive(suffix: str) -> None:
    assert verdict(suffix, b"") == "it is empty"


@pytest.mark.parametrize("suffix", sorted(ARCHIVES))
def test_an_html_page_is_no_archive(suffix: str) -> None:
    assert verdict(suffix, b"<html><body>Service unavailable</body></html>\n")


def test_an_unknown_suffix_has_no_check() -> None:
    with pytest.raises(ValueError, match="tar.zst"):
        format_check("tar.zst")


# -- gzip ----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(size=st.integers(0, 300_000), level=st.integers(0, 9), cut=st.integers(0))
def test_gzip_of_any_size_and_level_is_whole_only_to_its_last_byte(
    size: int, level: int, cut: int
) -> None:
    data = gzip.compress(payload(size, seed=size), compresslevel=level, mtime=0)
    assert verdict("tar.gz", data, pieces=7) is None
    cut %= len(data)
    assert verdict("tar.gz", data[:cut], pieces=7) is not None


def test_gzip_with_a_wrong_crc_or_length_in_its_trailer_is_refused() -> None:
    """zlib checks the trailer against what it inflated."""
    data = ARCHIVES["tar.gz"]
    crc, isize = struct.unpack("<II", data[-8:])
    for trailer in (
        struct.pack("<II", crc ^ 1, isize),
        struct.pack("<II", crc, isize + 1),
    ):
        why = verdict("tar.gz", data[:-8] + trailer)
        assert why is not None and why.startswith("not a valid gzip stream"), why


def test_concatenated_gzip_members_are_whole_and_a_cut_second_one_is_not() -> None:
    one, two = gz(b"first member\n"), gz(payload(5000))
    assert verdict("tar.gz", one + two, pieces=5) is None
    assert verdict("tar.gz", one + two[:-1]) is not None


def test_zero_padding_after_gzip_is_accepted_and_other_trailing_bytes_are_not() -> None:
    data = ARCHIVES["tar.gz"]
    assert verdict("tar.gz", data + bytes(512), pieces=3) is None
    assert verdict("tar.gz", data + bytes(10) + b"x") is not None
    assert verdict("tar.gz", data + b"garbage") is not None


def test_a_body_of_zeros_is_no_gzip() -> None:
    assert verdict("tar.gz", bytes(100)) is not None


def test_gzip_that_inflates_hugely_is_checked_in_bounded_pieces() -> None:
    """128 MiB of zeros compress to 128 KiB; checking them must not hold
    the 128 MiB: zlib hands them over a MiB at a time, each thrown away."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = b"".join(deflater.compress(bytes(1 << 20)) for _ in range(128))
    data += deflater.flush()

    tracemalloc.start()
    try:
        check = GzipCheck()
        check.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert check.verdict() is None
    assert peak < 8 * 1024 * 1024, peak


# -- bzip2 ---------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 50_000), level=st.integers(1, 9))
def test_bzip2_of_any_size_ends_with_its_marker_at_any_bit_offset(
    size: int, level: int
) -> None:
    """The marker is not byte-aligned: streams of every length end whole."""
    data = bz2.compress(payload(size, seed=size), compresslevel=level)
    assert verdict("tar.bz2", data, pieces=3) is None
    assert verdict("tar.bz2", data[:-1]) is not None


def test_the_bzip2_marker_is_found_at_all_eight_paddings() -> None:
    paddings = set()
    for size in range(80):
        data = bz2.compress(payload(size, seed=size))
        assert verdict("tar.bz2", data) is None
        tail = int.from_bytes(data[-11:], "big")
        paddings |= {
            p for p in range(8) if (tail >> (32 + p)) & (2**48 - 1) == 0x177245385090
        }
    assert paddings == set(range(8))


def test_concatenated_bzip2_streams_are_whole() -> None:
    data = bz2.compress(b"one") + bz2.compress(payload(3000))
    assert verdict("tar.bz2", data) is None


def test_a_body_that_does_not_start_as_bzip2_is_refused() -> None:
    assert Bzip2Check().verdict() == "it is empty"
    data = ARCHIVES["tar.bz2"]
    assert verdict("tar.bz2", b"XZh9" + data[4:]) == (
        "it does not start as a bzip2 stream"
    )


# -- zip -----------------------------------------------------------------------


def test_an_empty_zip_is_a_whole_zip() -> None:
    assert verdict("zip", zipped({})) is None


def test_a_fake_end_record_in_a_long_zip_comment_does_not_count() -> None:
    fake = b"PK\x05\x06" + bytes(18)
    data = zipped({"a": b"x" * 1000}, comment=fake + b"c" * 60_000)
    assert len(data) > 60_000
    assert verdict("zip", data, pieces=9) is None
    assert verdict("zip", data[:-1]) is not None


def test_a_zip_cut_just_after_a_record_inside_a_member_is_refused() -> None:
    """A member holding what looks like an end record: the record's central
    directory would have to end where it starts, and it does not."""
    inner = zipped({"x": b"y"})
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("inner.zip", inner)
        zf.writestr("after", payload(3000))
    whole = stored.getvalue()
    cut = whole.index(inner) + len(inner)
    assert verdict("zip", whole) is None
    assert verdict("zip", whole[:cut]) is not None


def test_zip64_end_records_are_followed() -> None:
    """Over 65,535 entries (or 4 GiB) the end record defers to zip64's."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for n in range(0x10000):
            zf.writestr(zipfile.ZipInfo(f"{n}"), b"")
    data = out.getvalue()
    assert data[-22 - 20 : -22][:4] == b"PK\x06\x07"  # zip64 wrote its locator
    assert verdict("zip", data, pieces=4) is None
    assert verdict("zip", data[:-1]) is not None
    # A locator that points past itself does not count.
    locator = len(data) - 22 - 20
    bad = bytearray(data)
    bad[locator + 8 : locator + 16] = struct.pack("<Q", len(data))
    assert verdict("zip", bytes(bad)) is not None
