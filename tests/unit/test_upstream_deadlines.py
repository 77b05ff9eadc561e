"""Every wait on upstream has a deadline: the bodies a Source reads itself
(json-rev answers, error pages, bodies it drops) and the health check; and
the client asks for no content coding (issue 10, items 3, 4 and 7)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from fakes import (
    FakeResponse,
    failure_of,
    has_no_result,
    result_of,
    started,
)
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from archiverd.config import SourceConfig
from archiverd.errors import UpstreamUnavailable
from archiverd.keys import ArchiveRequest
from archiverd.transfer.client import UpstreamClient
from archiverd.transfer.sources import Source

NODE = "42bf8560b395a5a9e3c2bbd6c2de2f2c6bd4ec70"
URL = "https://hg.mozilla.org/projects/ash/archive/42bf8560b395.tar.gz/"


def hgmo(**kwargs: object) -> SourceConfig:
    return SourceConfig("hgmo", **kwargs)  # type: ignore[arg-type]


def request(rev: str) -> ArchiveRequest:
    return ArchiveRequest.parse("hgmo", "projects/ash", rev)


class _OneAnswer:
    """A client whose every GET is answered at once with ``response``
    (whose body the test then writes, ends, or leaves hanging)."""

    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.calls: list[tuple[str, dict[str, object]]] = []

    def get(self, url: str, **kwargs: object) -> Deferred[FakeResponse]:
        self.calls.append((url, kwargs))
        return succeed(self.response)


def answering(
    response: FakeResponse, **config: object
) -> tuple[Source, _OneAnswer, Clock]:
    clock = Clock()
    client = _OneAnswer(response)
    return Source(hgmo(**config), client, clock), client, clock


REV_URL = "https://hg.mozilla.org/projects/ash/json-rev/default"


def test_a_json_rev_body_that_stalls_is_unavailable_at_idle_timeout() -> None:
    """Headers, then nothing: 502 at idle_timeout (it hung for ever, and
    every request for the name shared the hang)."""
    body = FakeResponse(200)
    src, _, clock = answering(body, idle_timeout=5.0, total_timeout=30.0)
    first = started(src.resolve(request(rev="default")))
    second = started(src.resolve(request(rev="default")))
    body.write(b'{"node": "42bf')
    clock.advance(4.9)
    has_no_result(first)
    clock.advance(0.1)
    for d in (first, second):
        failure = failure_of(d, UpstreamUnavailable)
        assert str(failure.value) == (
            f"no bytes from hg.mozilla.org for 5s (idle_timeout) after 14 bytes "
            f"of {REV_URL}"
        )
    assert body.transport.stopped
    assert clock.getDelayedCalls() == []


def test_a_json_rev_that_trickles_is_unavailable_at_total_timeout() -> None:
    body = FakeResponse(200)
    src, _, clock = answering(body, idle_timeout=5.0, total_timeout=30.0)
    d = started(src.resolve(request(rev="default")))
    for _ in range(7):
        body.write(b" ")
        clock.advance(4)
    body.write(b" ")  # a byte every 4s: never idle, but 30s is all it gets
    has_no_result(d)
    clock.advance(2)
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        f"resolving default of projects/ash at {REV_URL} took longer than 30s "
        "(total_timeout)"
    )
    assert body.transport.stopped
    assert clock.getDelayedCalls() == []


def test_a_json_rev_body_that_breaks_off_is_unavailable_not_an_internal_error() -> None:
    """A 502 with upstream's reason, not whatever exception the body died of
    (which was a 500 "internal error" with a traceback)."""
    body = FakeResponse(200)
    src, _, _ = answering(body)
    d = started(src.resolve(request(rev="default")))
    body.write(b'{"node": "42bf')
    body.break_off()
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value).startswith(
        f"hg.mozilla.org broke off after 14 bytes of {REV_URL}: ConnectionLost"
    )


def test_a_json_rev_ended_by_closing_the_connection_is_read() -> None:
    """HTTP/1.0 hgweb: the JSON's own syntax says whether it is whole."""
    body = FakeResponse(200)
    src, _, _ = answering(body)
    d = started(src.resolve(request(rev="default")))
    body.write(json.dumps({"node": NODE}).encode())
    body.protocol.connectionLost(Failure(PotentialDataLoss()))
    assert result_of(d).node == NODE[:12]


def test_an_error_body_that_stalls_is_quoted_as_far_as_it_came_at_idle_timeout() -> (
    None
):
    """A 404 whose page stalls ends at idle_timeout, not total_timeout."""
    body = FakeResponse(404)
    src, _, clock = answering(body, idle_timeout=5.0, total_timeout=3600.0)
    d = started(src.refusal(body, URL))
    body.write(b"unknown revision 'abc'")
    clock.advance(5)
    failure = result_of(d)
    assert str(failure) == (
        f"hg.mozilla.org answered 404 for {URL}: unknown revision 'abc'"
    )
    assert body.transport.stopped
    assert clock.getDelayedCalls() == []


def test_the_client_asks_for_no_content_coding_and_undoes_none() -> None:
    """A .tar.gz labelled ``Content-Encoding: gzip`` comes back as sent."""
    agent = _RecordingAgent(Headers({"Content-Encoding": ["gzip"]}))
    client = UpstreamClient(agent)
    response = result_of(client.get(URL, headers={"Accept": ["*/*"]}))
    assert response is agent.response
    method, uri, headers = agent.requests[0]
    assert (method, uri) == (b"GET", URL.encode())
    assert headers.getRawHeaders("accept-encoding") == ["identity"]
    assert headers.getRawHeaders("accept") == ["*/*"]


class _RecordingAgent:
    """An IAgent that records requests and answers each with one response."""

    def __init__(self, headers: Headers) -> None:
        self.requests: list[tuple[bytes, bytes, Headers]] = []
        self.response = SimpleNamespace(code=200, headers=headers, length=3)

    def request(
        self, method: bytes, uri: bytes, headers: Headers, body: object = None
    ) -> Deferred[object]:
        self.requests.append((method, uri, headers))
        return succeed(self.response)


def test_a_body_dropped_unread_is_waited_for_no_longer_than_idle_timeout() -> None:
    """Redirects, 5xx and refused answers drop their bodies: the connection
    is asked to close, and a close that never comes is not waited for."""
    body = FakeResponse(302)
    src, _, clock = answering(body, idle_timeout=5.0)
    d = started(src.drop(body))
    assert body.transport.calls == ["stop"]
    clock.advance(4.9)
    has_no_result(d)
    clock.advance(0.1)
    assert result_of(d) is None
    assert clock.getDelayedCalls() == []


def test_a_health_check_whose_answer_never_ends_times_out() -> None:
    """The check's deadline covers the body it drops, not only the headers."""
    body = FakeResponse(200)
    src, _, clock = answering(body, idle_timeout=60.0)
    d = started(src.check(5.0))
    clock.advance(5)
    failure_of(d, defer.TimeoutError)
    assert body.transport.stopped
    assert clock.getDelayedCalls() == []
