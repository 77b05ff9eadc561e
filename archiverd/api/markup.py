"""HTML built from templates that escape every value put into them.

The page for people (:mod:`archiverd.api.page`) shows repo names, revs,
subdirs and upstream's error messages: text a request or an upstream chose.
So every value goes into HTML through :func:`render`, which escapes it unless
it is :class:`Markup` (HTML this module or a template made). Nothing can be
forgotten: escaping is the default, and only templates, which are constants
in the code, are ever taken as HTML.
"""

from __future__ import annotations

import html
import string
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit


class Markup(str):
    """Text that is already HTML: put into templates as it is."""

    __slots__ = ()


class _Escaping(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markup):
            return value
        return html.escape(format(value, format_spec), quote=True)


_FORMATTER = _Escaping()


def render(template: str, /, **values: Any) -> Markup:
    """``template`` (a constant of the code: ``str.format`` syntax) with each
    value escaped, unless it is :class:`Markup`."""
    return Markup(_FORMATTER.vformat(template, (), values))


def join(parts: Iterable[Markup], separator: str = "") -> Markup:
    """Pieces of HTML, one after the other."""
    return Markup(separator.join(parts))


def link(url: str, text: str) -> Markup:
    """An ``<a>`` to an http(s) or relative URL; any other scheme (a
    ``javascript:`` URL, say) is shown as text, never made a link."""
    if urlsplit(url).scheme.lower() not in ("", "http", "https"):
        return render("{text}", text=text)
    return render('<a href="{url}">{text}</a>', url=url, text=text)


def size(nbytes: float | None) -> str:
    """Bytes for people: ``"1.5 MiB"``."""
    if nbytes is None:
        return "?"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """Seconds for people: ``"4 s"``, ``"2 min 5 s"``, ``"3 h 20 min"``."""
    if seconds is None:
        return "?"
    whole = max(0, int(round(seconds)))
    if whole < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"
