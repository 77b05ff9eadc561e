"""archiverd.transfer.sources: upstream URLs, error pages, and resolving symbolic revs
against a fake hgweb served through StubTreq."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from fakes import (
    HANG,
    HGWEB_ERROR_PAGE,
    FakeHgweb,
    ScriptedUpstream,
    StubClient,
    failure_of,
    has_no_result,
    result_of,
    started,
)
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from archiverd.config import DEFAULT_URL_TEMPLATE, SourceConfig
from archiverd.errors import (
    BadRequest,
    Forbidden,
    UpstreamRefused,
    UpstreamUnavailable,
)
from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics
from archiverd.transfer.sources import Source, error_message

NODE = "42bf8560b395a5a9e3c2bbd6c2de2f2c6bd4ec70"


def hgmo(template: str = DEFAULT_URL_TEMPLATE, **kwargs: object) -> SourceConfig:
    return SourceConfig("hgmo", template, **kwargs)  # type: ignore[arg-type]


def source(
    config: SourceConfig | None = None, hgweb: FakeHgweb | None = None
) -> Source:
    clock = Clock()
    client = StubClient(hgweb or FakeHgweb(), clock)
    return Source(config or hgmo(), client, clock)


def request(
    repo: str = "projects/ash", rev: str = NODE, **kwargs: str
) -> ArchiveRequest:
    return ArchiveRequest.parse("hgmo", repo, rev, **kwargs)


# -- error pages -------------------------------------------------------------


def test_error_message_quotes_hgwebs_own_words_from_its_error_page() -> None:
    page = HGWEB_ERROR_PAGE.format(
        repo="projects/ash", message="unknown revision &#39;abc&#39;"
    )
    assert error_message(page.encode()) == "unknown revision 'abc'"


def test_error_message_of_plain_text_is_one_line() -> None:
    assert error_message(b"  not\nfound \r\n here\t") == "not found here"


def test_error_message_of_other_html_drops_tags_scripts_and_styles() -> None:
    page = (
        b"<html><head><style>p {color: red}</style><script>var x = 1;</script>"
        b"</head><body><h1>Gone</h1><p>This repo &amp; its archives left.</p>"
        b"</body></html>"
    )
    assert error_message(page) == "Gone This repo & its archives left."


def test_error_message_is_cut_to_its_limit_with_an_ellipsis() -> None:
    message = error_message(b"x" * 1000, limit=300)
    assert len(message) == 300
    assert message == "x" * 299 + "\u2026"
    assert error_message(b"y" * 300, limit=300) == "y" * 300


def test_error_message_survives_bytes_that_are_not_utf8() -> None:
    assert error_message(b"bad \xff byte") == "bad \ufffd byte"


# -- URLs --------------------------------------------------------------------


def test_archive_url_fills_the_template() -> None:
    wanted = request(rev=NODE[:12], subdir="testing/mozharness", suffix="zip")
    url = source().archive_url(wanted)
    assert url == (
        "https://hg.mozilla.org/projects/ash/archive/42bf8560b395.zip/testing/mozharness"
    )
    assert source().archive_url(request(rev=NODE)).endswith(f"/{NODE}.tar.gz/")


@pytest.mark.parametrize(
    ("repo", "rev", "subdir", "path"),
    [
        ("a b", "v 1", "c d", "/a%20b/archive/v%201.tar.gz/c%20d"),
        ("a?b", "v?1", "c?d", "/a%3Fb/archive/v%3F1.tar.gz/c%3Fd"),
        ("a#b", "v#1", "c#d", "/a%23b/archive/v%231.tar.gz/c%23d"),
        ("a%2Fb", "v%1", "c%d", "/a%252Fb/archive/v%251.tar.gz/c%25d"),
        ("a@b:c", "v:1", "", "/a%40b%3Ac/archive/v%3A1.tar.gz/"),
    ],
)
def test_archive_url_percent_encodes_each_component(
    repo: str, rev: str, subdir: str, path: str
) -> None:
    url = source().archive_url(request(repo, rev, subdir=subdir))
    parts = urlsplit(url)
    assert (parts.netloc, parts.path, parts.query, parts.fragment) == (
        "hg.mozilla.org",
        path,
        "",
        "",
    )


def test_a_rev_with_a_slash_is_encoded_so_it_stays_one_segment() -> None:
    """A rev never reaches a URL with a raw '/': encoded, like '?' and '#'."""
    pinned = ArchiveRequest("hgmo", "projects/ash", "a/b")
    assert source().archive_url(pinned).endswith("/archive/a%2Fb.tar.gz/")


@pytest.mark.parametrize(
    "repo", ["@evil.example", "x:80@evil.example", "evil.example", "//evil.example"]
)
def test_a_request_that_changes_the_templates_host_is_refused(repo: str) -> None:
    """Only a template with a placeholder in its host can be steered (config
    refuses those); the URL builder refuses it too."""
    steerable = hgmo("https://{repo}/archive/{rev}.{suffix}")
    with pytest.raises(BadRequest, match="does not fit"):
        source(steerable).archive_url(ArchiveRequest("hgmo", repo, "tip"))


@given(
    repo=st.text(min_size=1, max_size=30),
    rev=st.text(min_size=1, max_size=20),
    subdir=st.text(max_size=30),
)
def test_any_accepted_request_keeps_the_templates_scheme_and_host(
    repo: str, rev: str, subdir: str
) -> None:
    try:
        wanted = ArchiveRequest.parse("hgmo", repo, rev, "tar.gz", subdir)
    except BadRequest:
        return
    for url in (source().archive_url(wanted), source().rev_url(wanted)):
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("https", "hg.mozilla.org")
        assert parts.query == parts.fragment == ""


def test_rev_url_defaults_to_json_rev_beside_the_archive() -> None:
    url = source().rev_url(request(rev="default", subdir="testing"))
    assert url == "https://hg.mozilla.org/projects/ash/json-rev/default"


def test_rev_url_uses_rev_url_template_when_given() -> None:
    config = hgmo(rev_url_template="https://hg.mozilla.org/api/{repo}/rev/{rev}")
    url = source(config).rev_url(request(rev="v1.0"))
    assert url == "https://hg.mozilla.org/api/projects/ash/rev/v1.0"


# -- resolving symbolic revs -------------------------------------------------


def test_resolve_pins_a_symbolic_rev_to_12_hex_digits() -> None:
    hgweb = FakeHgweb({("projects/ash", "default"): NODE})
    src = source(hgweb=hgweb)
    resolved = result_of(started(src.resolve(request(rev="default"))))
    assert (resolved.rev, resolved.node) == ("default", NODE[:12])
    assert hgweb.requests == ["/projects/ash/json-rev/default"]
    # Fetched by its name, so that the archive holds hgweb's folder for it.
    assert src.archive_url(resolved).endswith("/archive/default.tar.gz/")


def test_confirm_passes_while_the_name_stays_and_fails_once_it_moves() -> None:
    hgweb = FakeHgweb({("projects/ash", "default"): NODE})
    src = source(hgweb=hgweb)
    resolved = result_of(started(src.resolve(request(rev="default"))))
    assert result_of(started(src.confirm(resolved))) is None
    hgweb.nodes[("projects/ash", "default")] = "f" * 40
    failure = failure_of(started(src.confirm(resolved)), UpstreamUnavailable)
    assert str(failure.value) == (
        "default of projects/ash moved from 42bf8560b395 to ffffffffffff while "
        "its archive was fetched; ask again"
    )
    assert len(hgweb.requests) == 3  # each confirm a lookup of its own


def test_resolve_asks_upstream_every_time_so_a_moving_name_is_never_stale() -> None:
    hgweb = FakeHgweb({("projects/ash", "tip"): NODE})
    upstream = source(hgweb=hgweb)
    first = result_of(started(upstream.resolve(request(rev="tip"))))
    hgweb.nodes[("projects/ash", "tip")] = "0123456789ab" + "0" * 28
    second = result_of(started(upstream.resolve(request(rev="tip"))))
    assert (first.rev, second.rev) == (NODE[:12], "0123456789ab")
    assert len(hgweb.requests) == 2


def test_resolve_returns_changeset_ids_unchanged_without_asking_upstream() -> None:
    hgweb = FakeHgweb()
    wanted = request(rev="42bf85")
    assert result_of(started(source(hgweb=hgweb).resolve(wanted))) is wanted
    assert hgweb.requests == []


def test_resolve_of_an_unknown_rev_is_refused_with_hgwebs_words() -> None:
    hgweb = FakeHgweb()
    d = started(source(hgweb=hgweb).resolve(request(rev="nope")))
    failure = failure_of(d, UpstreamRefused)
    assert failure.value.code == 404
    assert str(failure.value) == (
        "hg.mozilla.org answered 404 for "
        "https://hg.mozilla.org/projects/ash/json-rev/nope: unknown revision 'nope'"
    )


# -- getting from upstream: retries, redirects, timeouts ---------------------

URL = "https://hg.mozilla.org/projects/ash/archive/42bf8560b395.tar.gz/"
OK = (200, {}, b"archive")


def scripted(
    *answers: tuple[int, dict[str, str], bytes] | None, **config: object
) -> tuple[Source, ScriptedUpstream, Clock]:
    """A Source over a scripted upstream; jitter is fixed, so each retry
    waits exactly retry_backoff × 2**attempt."""
    clock = Clock()
    upstream = ScriptedUpstream(*answers)
    config.setdefault("retries", 3)
    config.setdefault("retry_backoff", 1.0)
    client = StubClient(upstream, clock)
    return Source(hgmo(**config), client, clock, jitter=lambda: 0.5), upstream, clock


def test_a_5xx_is_retried_after_a_doubling_backoff() -> None:
    src, upstream, clock = scripted((503, {}, b""), (502, {}, b""), OK)
    with capturedLogs():
        d = started(src.get(URL))
        assert len(upstream.requests) == 1
        clock.advance(0.999)
        assert len(upstream.requests) == 1
        clock.advance(0.001)
        assert len(upstream.requests) == 2
        clock.advance(1.999)
        has_no_result(d)
        clock.advance(0.001)
    assert result_of(d).code == 200
    assert len(upstream.requests) == 3


def test_retries_give_up_after_retries_more_attempts() -> None:
    src, upstream, clock = scripted((502, {}, b"bad gateway"), retries=2)
    with capturedLogs():
        d = started(src.get(URL))
        clock.pump([1, 2])
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        f"hg.mozilla.org answered 502 for {URL} (after 3 attempts)"
    )
    assert len(upstream.requests) == 3
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("code", [200, 403, 404, 410, 429])
def test_answers_below_500_are_returned_at_once(code: int) -> None:
    src, upstream, _ = scripted((code, {}, b"x"))
    assert result_of(started(src.get(URL))).code == code
    assert len(upstream.requests) == 1


def test_no_headers_within_headers_timeout_is_unavailable_and_not_retried() -> None:
    src, upstream, clock = scripted(HANG, headers_timeout=30.0)
    d = started(src.get(URL))
    clock.advance(29.9)
    has_no_result(d)
    clock.advance(0.1)
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        f"no answer from hg.mozilla.org within 30s (headers_timeout) for {URL}"
    )
    assert len(upstream.requests) == 1


def test_a_redirect_on_the_same_host_is_followed() -> None:
    moved = (302, {"Location": "/projects/ash/archive/other.tar.gz"}, b"")
    src, upstream, _ = scripted(moved, OK)
    assert result_of(started(src.get(URL))).code == 200
    assert upstream.requests == [
        "/projects/ash/archive/42bf8560b395.tar.gz/",
        "/projects/ash/archive/other.tar.gz",
    ]


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.example/archive.tar.gz",
        "http://hg.mozilla.org/projects/ash/archive/x.tar.gz",
        "//evil.example/archive.tar.gz",
    ],
)
def test_a_redirect_to_another_scheme_or_host_is_not_followed(location: str) -> None:
    src, upstream, _ = scripted((301, {"Location": location}, b""))
    failure = failure_of(started(src.get(URL)), UpstreamUnavailable)
    assert "redirected" in str(failure.value)
    assert len(upstream.requests) == 1


def test_endless_redirects_are_unavailable() -> None:
    src, upstream, _ = scripted((302, {"Location": "/again"}, b""))
    failure = failure_of(started(src.get(URL)), UpstreamUnavailable)
    assert "too many redirects" in str(failure.value)
    assert len(upstream.requests) == 6


def test_cancelling_a_get_is_a_cancellation_not_an_upstream_failure() -> None:
    """A task stopped at shutdown reads 'cancelled', not 'cannot reach'."""
    src, _, clock = scripted(HANG)
    d = started(src.get(URL))
    d.cancel()
    failure_of(d, CancelledError)
    assert clock.getDelayedCalls() == []


def test_cancelling_a_get_waiting_to_retry_is_a_cancellation() -> None:
    src, upstream, clock = scripted((503, {}, b""), OK)
    with capturedLogs():
        d = started(src.get(URL))
    d.cancel()
    failure_of(d, CancelledError)
    clock.advance(10)
    assert len(upstream.requests) == 1


class _FailingClient:
    """A client whose requests fail to connect ``failures`` times, then pass."""

    def __init__(self, error: Exception, failures: int, then: object) -> None:
        self.error, self.failures, self.then, self.calls = error, failures, then, 0

    def get(self, url: str, **kwargs: object) -> Deferred[object]:
        self.calls += 1
        if self.calls <= self.failures:
            return fail(self.error)
        return succeed(self.then)


@pytest.mark.parametrize(
    "error",
    [
        DNSLookupError("no results for hostname lookup: hg.invalid"),
        ConnectionRefusedError(),
        ResponseNeverReceived([Failure(ConnectionLost())]),  # reset before headers
    ],
)
def test_unknown_hosts_refusals_and_resets_are_retried_then_reported(error) -> None:
    clock = Clock()
    client = _FailingClient(error, failures=10, then=None)
    src = Source(hgmo(retries=2, retry_backoff=1.0), client, clock, jitter=lambda: 0.5)
    with capturedLogs():
        d = started(src.get(URL))
        clock.pump([1, 2])
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value).startswith(f"cannot reach hg.mozilla.org for {URL}: ")
    assert str(failure.value).endswith("(after 3 attempts)")
    assert client.calls == 3

    ok = SimpleNamespace(code=200)
    client = _FailingClient(error, failures=1, then=ok)
    src = Source(hgmo(retries=2, retry_backoff=1.0), client, clock, jitter=lambda: 0.5)
    with capturedLogs():
        d = started(src.get(URL))
        clock.advance(1)
    assert result_of(d) is ok


@pytest.mark.parametrize(
    ("error", "cause", "words"),
    [
        (DNSLookupError("no results"), "dns", "DNS lookup failed"),
        (ConnectionRefusedError(), "refused", "connection refused"),
        (
            ResponseNeverReceived([Failure(ConnectionLost())]),
            "reset",
            "connection closed before an answer",
        ),
    ],
)
def test_each_retry_is_told_as_a_status_and_counted_by_cause(
    error: Exception, cause: str, words: str
) -> None:
    clock = Clock()
    client = _FailingClient(error, failures=2, then=SimpleNamespace(code=200))
    metrics = Metrics()
    src = Source(
        hgmo(retries=3, retry_backoff=5.0),
        client,
        clock,
        jitter=lambda: 0.5,
        metrics=metrics,
    )
    told: list[str] = []
    with capturedLogs():
        d = started(src.get(URL, on_retry=told.append))
        assert told == [
            f"Retrying: cannot reach hg.mozilla.org ({words}); attempt 2 of 4, "
            "next in 5 s"
        ]
        clock.advance(5)
        assert told[-1].endswith("attempt 3 of 4, next in 10 s")
        clock.advance(10)
    assert result_of(d).code == 200
    assert len(told) == 2
    counted = metrics.upstream_retries.labels("hgmo", cause)._value.get()
    assert counted == 2


def test_a_5xx_retry_names_the_answer() -> None:
    src, _, clock = scripted((503, {}, b""), OK)
    told: list[str] = []
    with capturedLogs():
        d = started(src.get(URL, on_retry=told.append))
        clock.advance(1)
    assert result_of(d).code == 200
    assert told == [
        "Retrying: hg.mozilla.org answered 503; attempt 2 of 4, next in 1 s"
    ]
    assert src.metrics.upstream_retries.labels("hgmo", "5xx")._value.get() == 1


# -- kinds and allow-lists ---------------------------------------------------

CODELOAD = "https://codeload.github.com/{repo}/{suffix}/{rev}"


def github(**kwargs: object) -> Source:
    config = SourceConfig("github", CODELOAD, kind="template", **kwargs)  # type: ignore[arg-type]
    return source(config)


def test_a_template_source_keeps_full_commit_ids_whole() -> None:
    wanted = github().request("mozilla/gecko-dev", NODE)
    assert wanted.rev == NODE
    assert wanted.key == f"@github/mozilla/gecko-dev-{NODE}.tar.gz"
    assert github().archive_url(wanted) == (
        f"https://codeload.github.com/mozilla/gecko-dev/tar.gz/{NODE}"
    )


@pytest.mark.parametrize("rev", ["main", NODE[:12], NODE[:39], NODE.upper()])
def test_a_template_source_refuses_what_may_move(rev: str) -> None:
    with pytest.raises(BadRequest, match="needs a full 40-digit commit id"):
        github().request("mozilla/gecko-dev", rev)


def test_allow_symbolic_takes_names_as_they_are_without_asking_upstream() -> None:
    upstream = github(allow_symbolic=True)
    wanted = upstream.request("mozilla/gecko-dev", "main")
    assert wanted.key == "@github/mozilla/gecko-dev-main.tar.gz"
    assert result_of(Deferred.fromCoroutine(upstream.resolve(wanted))) == wanted


def test_a_template_without_subdir_refuses_a_subdir() -> None:
    with pytest.raises(BadRequest, match="does not serve subdirectories"):
        github().request("mozilla/gecko-dev", NODE, subdir="testing")


def test_an_hgweb_source_keeps_ids_whole_and_resolves() -> None:
    wanted = source().request("projects/ash", NODE)
    assert wanted.rev == NODE
    assert source().request("projects/ash", "default").is_symbolic


@pytest.mark.parametrize(
    ("repo", "served"),
    [
        ("mozilla-central", True),
        ("projects/ash", True),
        ("projects/ash/deeper", False),
        ("users/a/b/c", True),
        ("users", False),
        ("try", False),
    ],
)
def test_the_allow_list_refuses_other_repos_with_403(repo: str, served: bool) -> None:
    upstream = source(hgmo(repos=("mozilla-central", "projects/*", "users/**")))
    if served:
        assert upstream.request(repo, NODE).repo == repo
    else:
        with pytest.raises(Forbidden, match="does not serve repo"):
            upstream.request(repo, NODE)
