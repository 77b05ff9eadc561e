"""Proving an archive whole by its format, when HTTP did not prove its length.

A body with a Content-Length, or chunked and ended by its last chunk, is whole
by HTTP's own framing: Twisted fails one that stops short. A close-delimited
body (HTTP/1.0 with no Content-Length) ends when the connection does, and a
connection that drops or is reset mid-body ends it just the same
(``PotentialDataLoss``). Such a body is stored only when its format shows that
it ended where the archive ends. TCP hands over every byte in order, so the
only thing to rule out is a body cut short: each check answers "is this the
whole archive or only a beginning of it?", cheaply, seeing each byte once as it
arrives and keeping at most a short tail:

- gzip: the deflate data ends and the trailer follows it, whose CRC-32 and
  length zlib checks against what it inflated. Only inflating finds where
  deflate data ends, so this one costs CPU (about 10 s per GiB of tar.gz):
  it runs on the storage thread pool with the sha256, and only for bodies
  that need it.
- bzip2: the end-of-stream marker (48 bits, ``0x177245385090``) and the
  combined CRC end the stream, so they are its last 10 or 11 bytes. A cut
  body ends in them only by chance (about 2**-45). Decompressing to prove
  the same would cost about 90 s per GiB.
- zip: the end-of-central-directory record is last, its comment length
  reaching exactly to the end, its central directory before it.

Concatenated streams (several gzip members, several bzip2 streams) are whole
archives too, and a cut exactly between two of them cannot be told from the
end; hgweb and the common hosts write one.
"""

from __future__ import annotations

import struct
import zlib
from typing import Protocol

#: Inflate input a slice at a time, so that what zlib has not consumed is
#: copied only within the slice (``unconsumed_tail``), never a whole part.
_SLICE = 256 * 1024
#: Inflated bytes are thrown away in pieces of at most this size: a highly
#: compressed body never holds more than this in memory at once.
_OUT = 1024 * 1024


class FormatCheck(Protocol):
    """Fed every byte of a body in order; then says whether it is whole."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """The next bytes of the body."""

    def verdict(self) -> str | None:
        """None when the bytes fed are a whole archive; else why not."""


def format_check(suffix: str) -> FormatCheck:
    """The check for an archive of ``suffix`` (tar.gz, tar.bz2 or zip)."""
    if suffix == "tar.gz":
        return GzipCheck()
    if suffix == "tar.bz2":
        return Bzip2Check()
    if suffix == "zip":
        return ZipCheck()
    raise ValueError(f"no completeness check for {suffix!r}")


class _Tail:
    """The first few and the last ``size`` bytes of a body, and its length."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.head = b""
        self.tail = b""
        self.length = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if len(self.head) < 4:
            self.head += bytes(data[: 4 - len(self.head)])
        self.length += len(data)
        if len(data) >= self.size:
            self.tail = bytes(data[-self.size :])
        else:
            self.tail = (self.tail + bytes(data))[-self.size :]


class GzipCheck:
    """Inflates (and discards) the stream: whole once the last member's
    trailer is read and checked."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        #: Bytes of a member were fed and its end has not been seen.
        self._open = False
        self._members = 0
        self._padding = False
        self._seen = 0
        self._error: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self._seen += len(view)
        for start in range(0, len(view), _SLICE):
            if self._error is not None:
                return
            self._inflate(view[start : start + _SLICE])

    def _inflate(self, chunk: bytes | memoryview) -> None:
        while chunk and self._error is None:
            if self._padding or (self._members and not self._open and not chunk[0]):
                # gzip(1) accepts zeros after the last member (tape padding):
                # they follow a whole member, so they cannot hide a cut.
                self._padding = True
                if bytes(chunk).strip(b"\0"):
                    self._error = "bytes other than padding after the gzip stream"
                return
            self._open = True
            try:
                self._inflater.decompress(chunk, _OUT)
            except zlib.error as e:
                self._error = f"not a valid gzip stream ({e})"
                return
            if self._inflater.eof:
                # A member ended: CRC-32 and length checked. What follows it,
                # if anything, must be another member.
                chunk = self._inflater.unused_data
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._open = False
                self._members += 1
            else:
                chunk = self._inflater.unconsumed_tail

    def verdict(self) -> str | None:
        if self._error is not None:
            return self._error
        if self._seen == 0:
            return "it is empty"
        if self._open:
            return "the gzip stream stops before its end (no trailer)"
        return None


#: bzip2's end-of-stream marker: the digits of the square root of pi, in BCD.
_BZ2_END = 0x177245385090
_MASK48 = (1 << 48) - 1


class Bzip2Check:
    """Looks for the end-of-stream marker and combined CRC at the very end."""

    def __init__(self) -> None:
        self._body = _Tail(11)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._body.feed(data)

    def verdict(self) -> str | None:
        body = self._body
        if body.length == 0:
            return "it is empty"
        if body.head[:3] != b"BZh" or body.head[3:4] not in b"123456789":
            return "it does not start as a bzip2 stream"
        # The marker, the 32-bit CRC, then 0-7 bits of padding to a byte.
        # (Header "BZh9" plus marker and CRC: 14 bytes at the least.)
        if body.length >= 14:
            bits = int.from_bytes(body.tail, "big")
            for padding in range(8):
                if (bits >> (32 + padding)) & _MASK48 == _BZ2_END:
                    return None
        return "the bzip2 stream stops before its end-of-stream marker"


_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_EOCD_SIZE = 22
_LOCATOR_SIZE = 20
_ZIP64_EOCD_SIZE = 56
#: The record, its longest comment, and zip64's record and locator before it.
_ZIP_TAIL = _EOCD_SIZE + 0xFFFF + _LOCATOR_SIZE + _ZIP64_EOCD_SIZE


class ZipCheck:
    """Looks for the end-of-central-directory record at the very end."""

    def __init__(self) -> None:
        self._body = _Tail(_ZIP_TAIL)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._body.feed(data)

    def verdict(self) -> str | None:
        body = self._body
        if body.length == 0:
            return "it is empty"
        tail = body.tail
        at = tail.rfind(_EOCD)
        while at >= 0:
            if self._ends_at(tail, at, body.length - len(tail)):
                return None
            at = tail.rfind(_EOCD, 0, at)
        return "no end-of-central-directory record ends it"

    @staticmethod
    def _ends_at(tail: bytes, at: int, base: int) -> bool:
        """Whether a record at ``tail[at]`` (``base + at`` in the body) is
        the last thing in the body and agrees with what precedes it.

        Its central directory must end exactly where the end records begin:
        a record that ends an archive stored inside the archive (a cut just
        after it) counts its offsets from that inner archive's start, so it
        does not.
        """
        if at + _EOCD_SIZE > len(tail):
            return False
        (comment,) = struct.unpack_from("<H", tail, at + 20)
        if at + _EOCD_SIZE + comment != len(tail):
            return False
        entries, size, offset = struct.unpack_from("<HII", tail, at + 10)
        saturated = entries == 0xFFFF or 0xFFFFFFFF in (size, offset)
        locator = at - _LOCATOR_SIZE
        if locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
            return not saturated and offset + size == base + at
        # zip64: a record before the locator holds the real figures, and the
        # central directory ends where that record begins.
        (record,) = struct.unpack_from("<Q", tail, locator + 8)
        within = record - base
        if within < 0:
            return True  # before what is kept (never, as zip writers lay it out)
        if within > locator - _ZIP64_EOCD_SIZE or (
            tail[within : within + 4] != _ZIP64_EOCD
        ):
            return False
        if saturated:
            size, offset = struct.unpack_from("<QQ", tail, within + 40)
        return bool(offset + size == record)
