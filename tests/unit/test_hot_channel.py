"""The per-request costs of a connection: no reactor timer per request (the
header deadline and the idle timeout are kept by one sweep a second), and a
Date header made once a second."""

from __future__ import annotations

from typing import Any

from test_channel import HEARTBEAT, Connection
from test_web import World
from twisted.internet.task import Clock
from twisted.web.http import datetimeToString

from archiverd.api import request as request_module
from archiverd.api.request import http_date


class CountingClock(Clock):
    """A Clock that counts the timers made."""

    made = 0

    def callLater(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        self.made += 1
        return super().callLater(*args, **kwargs)


def _world() -> World:
    clock = CountingClock()
    clock.advance(1_700_000_000)
    return World(clock=clock)


def test_requests_make_no_timer_each() -> None:
    world = _world()
    client = Connection(world, header_timeout=10)
    made = world.clock.made
    for _ in range(100):
        client.send(HEARTBEAT)
    assert client.answers == [200] * 100
    # At most the sweep's next run (the Site's log date timer is not started).
    assert world.clock.made - made <= 1


def test_an_idle_connection_is_still_timed_out() -> None:
    world = _world()
    client = Connection(world, header_timeout=10)
    client.send(HEARTBEAT)
    timeout = client.site.timeOut
    world.clock.advance(timeout - 5)
    client.send(b"G")  # a byte restarts the idle timeout, as in Twisted
    world.clock.advance(5)
    assert not client.closing
    client.send(b"ET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert client.answers == [200, 200]
    for _ in range(int(timeout) - 1):
        world.clock.advance(1)
    assert not client.closing
    world.clock.advance(1)
    assert client.closing


def test_the_header_deadline_is_kept_within_a_second() -> None:
    world = _world()
    client = Connection(world, header_timeout=10)
    world.clock.advance(0.5)
    client.send(b"GET /__lbheartbeat__ HTTP/1.1\r\n")
    world.clock.advance(10)
    assert client.answers == [] or client.answers == [408]
    world.clock.advance(1)
    assert client.answers == [408]


def test_the_sweep_stops_with_the_last_connection() -> None:
    world = _world()
    client = Connection(world, header_timeout=10)
    client.send(HEARTBEAT)
    assert len(client.site.deadlines) == 1
    client.channel.connectionLost(None)  # type: ignore[arg-type]
    assert len(client.site.deadlines) == 0
    world.clock.advance(1)
    assert world.clock.getDelayedCalls() == []


def test_the_date_header_is_twisteds_made_once_a_second(monkeypatch: Any) -> None:
    now = [1_700_000_000.2]
    monkeypatch.setattr(request_module.time, "time", lambda: now[0])
    made = []
    real = request_module.datetimeToString
    monkeypatch.setattr(
        request_module, "datetimeToString", lambda t: made.append(t) or real(t)
    )
    first = http_date()
    assert first == datetimeToString(1_700_000_000)
    now[0] += 0.7
    assert http_date() is first and len(made) == 1
    now[0] += 0.2
    assert http_date() == datetimeToString(1_700_000_001) and len(made) == 2


def test_answers_carry_the_date_header() -> None:
    world = _world()
    client = Connection(world)
    client.send(HEARTBEAT)
    assert b"\r\nDate: " in client.transport.value()


def test_a_connections_local_address_is_asked_of_its_socket_once() -> None:
    """Every Request asks its channel for the local address: a
    ``getsockname()`` each, unless the channel keeps it."""
    world = _world()
    client = Connection(world)
    asked = []
    real = client.transport.getHost
    client.transport.getHost = lambda: asked.append(1) or real()  # type: ignore[method-assign]
    for _ in range(3):
        client.send(HEARTBEAT)
    assert client.answers == [200] * 3
    assert len(asked) <= 1
    assert client.channel.getHost() == real()
