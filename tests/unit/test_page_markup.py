"""archiverd.api.markup and the page's Accept negotiation: values are escaped
whatever they hold, and only a client that asks for HTML above JSON gets it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archiverd.api.markup import Markup, duration, join, link, render, size
from archiverd.api.page import prefers_html

#: What a browser sends when a person opens a URL.
CHROMIUM = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    "image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/json, */*", False),
        # urllib2 (the old client) and archiverd-fetch send none, or this:
        ("identity", False),
        ("text/html;q=0, */*", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html, application/json", False),  # a tie keeps the JSON
        ("text/html;level=1, application/json;q=0.5", True),
        # HTML is for an Accept that names it, as a browser's does.
        ("text/*, application/json;q=0.5", False),
        ("application/json;q=0.9, text/html", True),
        ("TEXT/HTML", True),
        ("text/html;q=bogus", False),
        (CHROMIUM, True),
        (FIREFOX, True),
        (CHROMIUM.encode(), True),
        (b"application/json", False),
    ],
)
def test_only_an_accept_that_rates_html_above_json_gets_html(
    accept: str | bytes | None, html: bool
) -> None:
    assert prefers_html(accept) is html


@given(st.text())
def test_an_accept_that_does_not_name_html_always_gets_json(accept: str) -> None:
    if "html" not in accept.lower():
        assert prefers_html(accept) is False


@given(st.text())
def test_any_accept_header_is_answered_without_error(accept: str) -> None:
    assert prefers_html(accept) in (True, False)


@given(st.text())
def test_every_value_put_into_a_template_is_escaped(value: str) -> None:
    out = render("<p title='{v}'>{v}</p>", v=value)
    inner = out[len("<p title='") :]
    for dangerous in "<>'\"":
        assert dangerous not in inner[: inner.index("'")]
    assert out.count("<") == 2


def test_markup_is_put_in_as_it_is_and_plain_text_is_not() -> None:
    hostile = "<script>alert(1)</script>"
    assert render("{a}{b}", a=Markup("<b>x</b>"), b=hostile) == (
        "<b>x</b>&lt;script&gt;alert(1)&lt;/script&gt;"
    )
    assert join([Markup("<i>"), render("{x}", x="&")]) == "<i>&amp;"


def test_a_format_spec_is_applied_before_escaping() -> None:
    assert render("{n:.1f}%", n=12.345) == "12.3%"


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<b>"]
)
def test_a_link_to_a_script_url_is_shown_as_text(url: str) -> None:
    assert link(url, "download") == "download"


def test_a_link_escapes_its_url_and_text() -> None:
    out = link('https://s3.example/k?a=1&b="2"', "<x>")
    assert out == (
        '<a href="https://s3.example/k?a=1&amp;b=&quot;2&quot;">&lt;x&gt;</a>'
    )


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (None, "?"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
    ],
)
def test_sizes_for_people(nbytes: int | None, text: str) -> None:
    assert size(nbytes) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "?"),
        (4.25, "4.2 s"),
        (42, "42 s"),
        (125, "2 min 5 s"),
        (7260, "2 h 1 min"),
    ],
)
def test_durations_for_people(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text
