"""The Host header: never reflected into a Location unless it names this
server (issue 10, item 18), and never a 500 however malformed (item 19)."""

from __future__ import annotations

import json
import re

import pytest
from fakes import result_of
from test_web import ASH, REV, World
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from archiverd.api.site import ArchiverSite

ARCHIVE = f"/archiver/hgmo/projects/ash/{REV}"
LOCAL = IPv4Address("TCP", "127.0.0.1", 8010)


def _errors(events: list[dict]) -> list[dict]:
    return [e for e in events if e["log_level"] in (LogLevel.error, LogLevel.critical)]


def raw(world: World, request: bytes, **site: object) -> tuple[int, dict, bytes]:
    """One request, byte for byte, through the real Site and HTTP channel;
    the status, headers and body answered."""
    factory = ArchiverSite(world.api, reactor=world.clock, **site)
    channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport(
        hostAddress=LOCAL, peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)
    )
    channel.makeConnection(transport)
    channel.dataReceived(request)
    world.http.flush()
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.decode().lower()] = value.strip().decode()
    if headers.get("transfer-encoding") == "chunked":
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    channel.connectionLost(None)
    return int(status.split()[1]), headers, body


def _samples(world: World) -> str:
    return world.get("/metrics").body.decode()


# -- item 18: a Host that names another server -----------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8010", "10.9.8.7"])
def test_without_public_url_a_host_naming_another_server_is_refused(
    host: str,
) -> None:
    """Once, ``Host: evil.example`` got ``Location: http://evil.example/...``
    with a valid signature in it."""
    world = World(hosts=())
    answer = world.get(ARCHIVE, Host=host)
    assert answer.code == 400
    assert answer.header("Location") is None
    assert "public_url" in answer.json["error"]
    assert world.nothing_happened()


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8010", "127.0.0.1", "localhost:8010", "LOCALHOST"]
)
def test_without_public_url_the_listening_addresss_own_names_are_served(
    host: str,
) -> None:
    world = World(hosts=())
    answer = world.get(ARCHIVE, Host=host)
    assert answer.code == 202
    assert answer.header("Location") == f"http://{host}/archiver/status/{ASH.task_id}"


def test_configured_hosts_are_served_too() -> None:
    world = World(hosts=("archiver.internal", "10.1.2.3", "[fd00::1]"))
    for host in ("archiver.internal:8010", "10.1.2.3", "[fd00::1]:80"):
        assert world.get(ARCHIVE, Host=host).code == 202, host
    assert world.get(ARCHIVE, Host="archiver.internal.evil.example").code == 400


def test_with_public_url_any_well_formed_host_is_served_and_never_echoed() -> None:
    world = World(public_url="https://archiver.example.com", hosts=())
    answer = world.get(ARCHIVE, Host="evil.example")
    assert answer.code == 202
    assert answer.header("Location").startswith("https://archiver.example.com/")


def test_a_slash_redirect_names_public_url_not_the_host() -> None:
    """werkzeug's redirect to a path with a trailing slash built its URL from
    the Host header, even with public_url set."""
    world = World(public_url="https://archiver.example.com", hosts=())
    answer = world.get("/archiver/files/x", Host="evil.example")
    location = answer.header("Location")
    assert location is None or location.startswith("https://archiver.example.com/")
    assert "evil" not in answer.body.decode()


def test_the_site_warns_at_start_when_public_url_is_unset() -> None:
    with capturedLogs() as events:
        ArchiverSite(World(hosts=()).api, reactor=None).startFactory()
    [warning] = [e for e in events if "public_url" in e.get("log_format", "")]
    assert warning["log_level"] == LogLevel.warn
    with capturedLogs() as events:
        world = World(public_url="https://archiver.example.com")
        ArchiverSite(world.api, reactor=None).startFactory()
    assert not [e for e in events if "public_url" in e.get("log_format", "")]


# -- item 19: a Host header that cannot be parsed ------------------------------

MALFORMED = [
    "x..y",
    "a" * 64 + ".example",
    ".example",
    "example..",
    "x" * 254,
    "[::1",
    "[zz::1]",
    "[::1]x",
    "host:99999",
    "host:-1",
    "host:1:2",
    "ünï.example",
    "a b",
    "evil.example/x",
    "user@host",
]


@pytest.mark.parametrize("public_url", [None, "https://archiver.example.com"])
@pytest.mark.parametrize("host", MALFORMED)
def test_a_malformed_host_is_a_json_400_not_a_500(
    host: str, public_url: str | None
) -> None:
    """``Host: x..y`` once escaped Klein as werkzeug's BadHost: a critical
    traceback and a 500."""
    world = World(public_url=public_url)
    with capturedLogs() as events:
        answer = world.get(ARCHIVE, Host=host)
    assert answer.code == 400
    assert "Host" in answer.json["error"]
    assert not _errors(events)
    assert world.nothing_happened()


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x..y\r\n\r\n",
        b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
        # RFC 9112 3.2: no Host in HTTP/1.1, or two of them, is a 400.
        b"GET /__lbheartbeat__ HTTP/1.1\r\n\r\n",
        b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil\r\n\r\n",
        # Absolute form: the Host would be whatever the target names.
        b"GET http://evil.example/__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
)
def test_a_request_whose_host_cannot_be_trusted_is_a_json_400_counted_as_such(
    request_: bytes,
) -> None:
    world = World()
    with capturedLogs() as events:
        code, headers, body = raw(world, request_)
    assert code == 400
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(body)
    assert not _errors(events)
    samples = _samples(world)
    assert re.search(r'_requests_total\{code="400",route="[a-z_]+"\} 1\.0', samples)
    assert 'code="500"' not in samples


def test_http_1_0_without_host_gets_the_listening_address() -> None:
    code, headers, _ = raw(World(hosts=()), f"GET {ARCHIVE} HTTP/1.0\r\n\r\n".encode())
    assert code == 202
    assert headers["location"] == f"http://127.0.0.1:8010/archiver/status/{ASH.task_id}"


def test_an_error_before_routing_is_a_json_answer_never_twisteds_html() -> None:
    """What werkzeug raises before Klein's handlers run keeps its status as
    JSON; anything else is logged and a JSON 500 without a traceback."""
    from werkzeug.exceptions import BadHost

    world = World()
    root = world.api.resource()
    for raised, code in ((BadHost(), 400), (RuntimeError("bug"), 500)):

        def fail(request: object, raised: Exception = raised) -> bytes:
            raise raised

        root._inner.render = fail
        with capturedLogs() as events:
            answer = StubTreq(root).get("http://127.0.0.1/__lbheartbeat__")
            response = result_of(answer)
            body = json.loads(result_of(response.content()))
        assert (response.code, list(body)) == (code, ["error"])
        assert "Traceback" not in body["error"]
        assert bool(_errors(events)) == (code == 500)
