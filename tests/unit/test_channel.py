"""archiverd.api.channel on a Clock: each request has a deadline from its
first byte, bodies are capped, and every refusal is a JSON answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_web import World
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from archiverd.api.channel import MAX_BODY
from archiverd.api.site import ArchiverSite
from archiverd.config import ConfigError, parse

HEARTBEAT = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Connection:
    """One client connection to a Site whose time is the World's Clock."""

    def __init__(self, world: World, **site: Any) -> None:
        self.world = world
        self.site = ArchiverSite(world.api, reactor=world.clock, **site)
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        self.channel = self.site.buildProtocol(peer)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8010), peerAddress=peer
        )
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def answers(self) -> list[int]:
        return [
            int(line.split(b" ")[1])
            for line in self.transport.value().split(b"\r\n")
            if line.startswith(b"HTTP/1.1 ")
        ]

    @property
    def error(self) -> str:
        body = self.transport.value().rpartition(b"\r\n\r\n")[2]
        return str(json.loads(body)["error"])

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


@pytest.fixture
def world() -> World:
    return World()


def test_a_request_dribbled_past_the_header_deadline_gets_a_408(world: World) -> None:
    client = Connection(world, header_timeout=10)
    client.send(b"GET /__lbheartbeat__ HTTP/1.1\r\n")
    for _ in range(9):
        world.clock.advance(1)
        client.send(b"X")  # every byte restarts Twisted's idle timeout
    assert not client.closing
    world.clock.advance(1)
    assert client.answers == [408]
    assert "10" in client.error
    assert client.closing


def test_the_deadline_starts_at_a_requests_first_byte_not_at_idle(
    world: World,
) -> None:
    """An idle keep-alive connection is the idle timeout's business; each
    request then has the whole header_timeout."""
    client = Connection(world, header_timeout=10)
    client.send(HEARTBEAT)
    world.clock.advance(30)  # idle, under Twisted's 60 s
    client.send(b"GET /__lbheartbeat__ HTTP/1.1\r\n")
    world.clock.advance(9)
    client.send(b"Host: 127.0.0.1\r\n\r\n")
    world.clock.advance(60)
    assert client.answers[:2] == [200, 200]


def test_pipelined_requests_each_get_the_deadline(world: World) -> None:
    client = Connection(world, header_timeout=10)
    client.send(HEARTBEAT + b"GET /__lbheartbeat__ HTTP/1.1\r\n")
    world.clock.advance(10)
    assert client.answers == [200, 408]


@pytest.mark.parametrize(
    "request_",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"4000\r\n" + b"x" * 0x4000 + b"\r\n") * 5,
    ],
)
def test_a_request_body_over_the_cap_is_a_413_before_it_is_stored(
    world: World, request_: bytes
) -> None:
    client = Connection(world)
    client.send(request_)
    assert client.answers == [413]
    assert client.closing


def test_a_small_body_on_a_get_is_read_and_ignored(world: World) -> None:
    client = Connection(world)
    client.send(HEARTBEAT.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello"))
    assert client.answers == [200]


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (b"GET /__lbheartbeat__ HTTP/1.1\r\nBad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 600 + b"\r\n", 400),
    ],
)
def test_what_twisted_refuses_gets_a_json_error_and_is_counted(
    world: World, request_: bytes, code: int
) -> None:
    client = Connection(world)
    client.send(request_)
    assert client.answers == [code]
    assert client.error
    assert client.closing
    samples = world.get("/metrics").body.decode()
    assert f'archiverd_http_requests_total{{code="{code}",route="other"}} 1.0' in (
        samples
    )


def test_a_refused_client_that_never_reads_is_aborted(world: World) -> None:
    client = Connection(world, header_timeout=1)
    client.send(b"GET / HTTP/1.1\r\n")
    world.clock.advance(1)
    assert client.closing and not client.transport.disconnected
    world.clock.advance(client.channel.abortTimeout)
    assert client.transport.disconnected or client.transport.disconnecting


def test_the_limits_are_config_keys_checked_at_start() -> None:
    config = parse(
        {
            "header_timeout": 5,
            "max_connections": 10,
            "max_connections_per_client": 2,
            "hosts": ["archiver.internal", "10.0.0.1", "[fd00::1]"],
        }
    )
    assert (config.header_timeout, config.max_connections) == (5.0, 10)
    assert config.max_connections_per_client == 2
    assert config.hosts == ("archiver.internal", "10.0.0.1", "[fd00::1]")
    defaults = parse({})
    assert (defaults.header_timeout, defaults.max_connections) == (30.0, 10_000)
    assert (defaults.max_connections_per_client, defaults.hosts) == (0, ())
    with pytest.raises(ConfigError, match="header_timeout: must be between"):
        parse({"header_timeout": 0})
    with pytest.raises(ConfigError, match="max_connections: must be between"):
        parse({"max_connections": -1})
    with pytest.raises(ConfigError, match="hosts: bad host 'evil.example/x'"):
        parse({"hosts": ["evil.example/x"]})
