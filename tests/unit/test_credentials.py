"""Upstream credentials (issue 10, item 17): userinfo sent as Basic auth,
configured headers (from the file or the environment), and no secret shown
in a status, an error or a log line."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fakes import ScriptedUpstream, StubClient, failure_of, result_of, started
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from archiverd.config import ConfigError, SourceConfig, apply_environment, parse
from archiverd.errors import UpstreamRefused, UpstreamUnavailable
from archiverd.keys import ArchiveRequest
from archiverd.redact import has_secret, redact, redact_text
from archiverd.transfer.credentials import Credentials
from archiverd.transfer.sources import Source

NODE = "42bf8560b395a5a9e3c2bbd6c2de2f2c6bd4ec70"
TEMPLATE = (
    "http://deploy:p%40ss-S3CRET1@127.0.0.1:9/{repo}/archive/{rev}.{suffix}"
    "?private_token=S3CRET2&format=raw"
)
SECRETS = ("S3CRET1", "S3CRET2", "S3CRET3", "p%40ss", "p@ss")


def _shows_none(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


# -- redaction -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:pw@h.example/r?x=1", "https://REDACTED@h.example/r?x=1"),
        ("https://tok@h.example/r", "https://REDACTED@h.example/r"),
        (
            "https://h.example/a.tar.gz?private_token=abc&ref=main",
            "https://h.example/a.tar.gz?private_token=REDACTED&ref=main",
        ),
        (
            "https://h.example/?access_token=a#f",
            "https://h.example/?access_token=REDACTED#f",
        ),
        (
            "https://h.example/?api_key=a&password=b&client_secret=c",
            "https://h.example/?api_key=REDACTED&password=REDACTED&client_secret=REDACTED",
        ),
        (
            "https://h.example/r/archive/0123456789ab.tar.gz/a@b",
            "https://h.example/r/archive/0123456789ab.tar.gz/a@b",
        ),
        ("mail me at someone@h.example", "mail me at someone@h.example"),
    ],
)
def test_a_url_is_shown_without_userinfo_or_secret_query_values(
    url: str, shown: str
) -> None:
    assert redact_text(url) == shown
    assert redact(url.encode()) == shown.encode()
    if shown != url:
        assert has_secret(url.encode())


def test_urls_inside_a_json_line_or_a_repr_are_redacted_up_to_the_quote() -> None:
    line = '{"msg":"cannot reach h for http://a:b@h/x?token=t","n":1}'
    assert redact_text(line) == (
        '{"msg":"cannot reach h for http://REDACTED@h/x?token=REDACTED","n":1}'
    )


# -- the source's credentials ---------------------------------------------------


def test_userinfo_becomes_basic_auth_and_leaves_the_url() -> None:
    credentials = Credentials.of(SourceConfig("gl", TEMPLATE, kind="template"))
    assert "@" not in credentials.url_template
    assert credentials.url_template.startswith("http://127.0.0.1:9/{repo}/")
    assert "private_token=S3CRET2" in credentials.url_template  # still sent
    (basic,) = credentials.headers["Authorization"]
    assert base64.b64decode(basic.removeprefix("Basic ")) == b"deploy:p@ss-S3CRET1"
    assert "@" not in credentials.rev_url_template


def _source(*answers: Any, **config: Any) -> tuple[Source, ScriptedUpstream, Clock]:
    clock = Clock()
    upstream = ScriptedUpstream(*answers)
    settings: dict[str, Any] = {"kind": "template", "retries": 1, "retry_backoff": 0}
    settings.update(config)
    source_config = SourceConfig("gl", TEMPLATE, **settings)
    return Source(source_config, StubClient(upstream, clock), clock), upstream, clock


def _request() -> ArchiveRequest:
    return ArchiveRequest.parse("gl", "group/proj", NODE)


def test_every_request_upstream_carries_the_credentials() -> None:
    src, upstream, clock = _source(
        (503, {}, b""), (200, {}, b"ok"), headers={"PRIVATE-TOKEN": "S3CRET3"}
    )
    wanted = _request()
    with capturedLogs() as events:
        d = started(src.get(src.archive_url(wanted)))
        clock.advance(0)
    assert result_of(d).code == 200
    assert len(upstream.headers) == 2  # the retry too
    for seen in upstream.headers:
        assert seen["private-token"] == "S3CRET3"
        assert seen["authorization"].startswith("Basic ")
    assert all("private_token=S3CRET2" in uri for uri in upstream.requests)
    logged = " ".join(formatEvent(e) for e in events)
    assert "503" in logged and _shows_none(logged), logged


def test_a_refusal_shows_the_url_without_its_secrets() -> None:
    page = b"not found: http://deploy:S3CRET1@127.0.0.1/x?private_token=S3CRET2"
    src, _, _ = _source((404, {}, page))
    wanted = _request()
    assert _shows_none(src.shown_url(wanted))
    assert "private_token=REDACTED" in src.shown_url(wanted)

    async def fetch() -> Any:
        response = await src.get(src.archive_url(wanted))
        raise await src.refusal(response, src.archive_url(wanted))

    failure = failure_of(started(fetch()), UpstreamRefused)
    assert "404" in str(failure.value) and _shows_none(str(failure.value))


def test_an_unreachable_upstream_is_reported_without_secrets() -> None:
    src, _, clock = _source((502, {}, b""), retries=0)
    with capturedLogs():
        d = started(src.get(src.archive_url(_request())))
    failure = failure_of(d, UpstreamUnavailable)
    assert "502" in str(failure.value) and _shows_none(str(failure.value))


# -- configuration ----------------------------------------------------------------


def _with_headers(headers: dict[str, Any], template: str = TEMPLATE) -> dict[str, Any]:
    source = {"kind": "template", "url_template": template, "headers": headers}
    return {"sources": {"gl": source}}


def test_a_header_value_can_come_from_the_environment() -> None:
    raw = _with_headers({"PRIVATE-TOKEN": {"env": "GL_TOKEN"}})
    apply_environment(raw, {"GL_TOKEN": "S3CRET3"})
    assert parse(raw).sources["gl"].headers == {"PRIVATE-TOKEN": "S3CRET3"}


def test_an_unset_environment_variable_is_one_line_naming_it() -> None:
    raw = _with_headers({"PRIVATE-TOKEN": {"env": "GL_TOKEN"}})
    with pytest.raises(ConfigError) as e:
        apply_environment(raw, {})
    assert str(e.value) == (
        "sources.gl.headers.PRIVATE-TOKEN: environment variable GL_TOKEN unset"
    )


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Bad Name": "x"}, "sources.gl.headers.Bad Name: bad header name"),
        ({"Host": "x"}, "sources.gl.headers.Host: archiverd sets this header itself"),
        (
            {"Accept-Encoding": "gzip"},
            "sources.gl.headers.Accept-Encoding: archiverd sets this header itself",
        ),
        (
            {"X-Token": "S3CRET3\r\nX-Other: 1"},
            "sources.gl.headers.X-Token: expected one line of text or { env = NAME }",
        ),
        (
            {"X-Token": {"file": "/etc/token"}},
            "sources.gl.headers.X-Token: expected one line of text or { env = NAME }",
        ),
        (
            {"authorization": "Bearer S3CRET3"},
            "sources.gl.url_template: credentials in the URL and an Authorization "
            "header",
        ),
    ],
)
def test_bad_headers_are_refused_without_showing_their_values(
    headers: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse(_with_headers(headers))
    assert str(e.value) == message
    assert _shows_none(str(e.value))


def test_a_refused_template_is_quoted_without_its_credentials() -> None:
    with pytest.raises(ConfigError) as e:
        parse(_with_headers({}, template="ftp://u:S3CRET1@h/{repo}/{rev}.{suffix}"))
    assert "expected an http(s) URL" in str(e.value)
    assert _shows_none(str(e.value)) and "REDACTED@h" in str(e.value)


def test_a_rev_url_template_takes_no_credentials_of_its_own() -> None:
    raw = {"sources": {"hgmo": {"rev_url_template": "http://u:p@h/{repo}/r/{rev}"}}}
    with pytest.raises(ConfigError, match="no credentials here"):
        parse(raw)
