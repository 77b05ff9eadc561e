"""Which bytes of an object a GET with ``Range`` gets (RFC 9110 section 14).

One rule keeps the answer bounded by the object: the ranges asked for are
clipped to the object and coalesced where they overlap or nearly touch; if one
range remains it is served (206), if several disjoint ones remain the whole
object is (200: section 14.2 lets a server ignore Range, and a multipart body
of many parts is how 5,000 overlapping ``0-`` ranges once became 62 GB).
A Range that does not parse is ignored, as section 14.2 says; ``If-Range``
with a validator other than the object's current one means the whole object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Ranges closer than this are coalesced (about a multipart part's headers).
GAP = 80
#: More range-specs than this are not even parsed: the header is ignored.
MAX_SPECS = 1000
_SPEC = re.compile(r"([0-9]*)-([0-9]*)\Z")
#: Wider numbers than this are "beyond any object" (and never cost int()).
_DIGITS = 18


@dataclass(frozen=True)
class Span:
    """Bytes ``start`` up to ``end`` (exclusive) of an object of ``size``."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


class Unsatisfiable(Exception):
    """No range asked for overlaps the object: 416."""


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= _DIGITS else 10**_DIGITS


def _clip(spec: str, size: int) -> tuple[int, int] | None:
    """One range-spec as (start, end) within the object; None if it lies
    beyond it. ValueError if it is not a range-spec."""
    match = _SPEC.match(spec.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise ValueError(spec)
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        suffix = _number(last)
        return (max(0, size - suffix), size) if suffix and size else None
    start = _number(first)
    if last and _number(last) < start:
        raise ValueError(spec)
    end = size if last == "" else min(_number(last) + 1, size)
    return (start, end) if start < size else None


def _coalesce(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def requested_span(header: str | None, size: int) -> Span | None:
    """The one span to send (206), or None for the whole object (200).

    Raises :class:`Unsatisfiable` when a valid Range overlaps nothing (416).
    """
    if header is None:
        return None
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    parts = [p for p in specs.split(",") if p.strip()]
    if not parts or len(parts) > MAX_SPECS:
        return None
    try:
        clipped = [_clip(part, size) for part in parts]
    except ValueError:
        return None
    spans = _coalesce([c for c in clipped if c is not None])
    if not spans:
        raise Unsatisfiable(f"bytes */{size}")
    if len(spans) > 1:
        return None
    start, end = spans[0]
    return Span(start, end, size)


def if_range_holds(if_range: str | None, etag: str, last_modified: str) -> bool:
    """Whether Range applies given ``If-Range`` (RFC 9110 13.1.5): absent, or
    the object's strong ETag, or exactly its Last-Modified date."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return bool(etag) and value == etag
    return value == last_modified
