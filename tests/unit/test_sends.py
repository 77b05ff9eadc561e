"""Answers sent at the end of the reactor's turn (archiverd/api/sends.py), on
real loopback sockets: small answers never make the reactor watch for
writability, and everything else (big answers to slow readers, closing,
writes from timers, lost connections) arrives exactly as without it."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from archiverd.api.sends import Sends

BIG = 8 * 1024 * 1024


class Answering(protocol.Protocol):
    """Answers each line it reads: ``small`` (one write, then another),
    ``big`` (8 MiB in one write), ``close`` (a write, then closing), ``later``
    (a write from a timer, outside the read)."""

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        factory: Any = self.factory
        if factory.sends is not None:
            factory.sends.take(self.transport)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        transport: Any = self.transport
        for line in data.split(b"\n"):
            if line == b"small":
                transport.write(b"head;")
                transport.write(b"body\n")
            elif line == b"big":
                transport.write(b"x" * BIG)
            elif line == b"close":
                transport.write(b"bye\n")
                transport.loseConnection()
            elif line == b"later":
                reactor.callLater(0.01, transport.write, b"later\n")


class Watches:
    """Counts the reactor's ``addWriter`` calls while in use."""

    def __enter__(self) -> Watches:
        self.count = 0
        self._original = reactor.addWriter

        def counting(writer: Any) -> None:
            self.count += 1
            self._original(writer)

        reactor.addWriter = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        reactor.addWriter = self._original  # type: ignore[method-assign]


async def _serving(factory: Any) -> AsyncIterator[int]:
    """``factory`` listening on loopback while the test runs: its port."""
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        yield port.getHost().port
    finally:
        await defer.maybeDeferred(port.stopListening)


def _answering(batched: bool) -> protocol.Factory:
    factory = protocol.Factory.forProtocol(Answering)
    factory.sends = Sends(reactor) if batched else None  # type: ignore[attr-defined]
    return factory


@pytest_twisted.async_yield_fixture
async def batched() -> AsyncIterator[int]:
    """A server whose connections' writes go through :class:`Sends`."""
    async for port in _serving(_answering(True)):
        yield port


@pytest_twisted.async_yield_fixture
async def unbatched() -> AsyncIterator[int]:
    """The same server with Twisted's own writes."""
    async for port in _serving(_answering(False)):
        yield port


async def _ask(port: int, data: bytes, want: int) -> bytes:
    """Send ``data`` from a plain socket on a thread; read ``want`` bytes
    (or to EOF, ``want`` < 0)."""

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            s.sendall(data)
            got = b""
            while want < 0 or len(got) < want:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            return got

    return await deferToThread(talk)


@pytest_twisted.ensureDeferred
async def test_small_answers_never_make_the_reactor_watch_for_writability(
    batched: int,
) -> None:
    with Watches() as watches:
        got = await _ask(batched, b"small\n", 10)
    assert got == b"head;body\n"
    assert watches.count == 0


@pytest_twisted.ensureDeferred
async def test_without_it_the_reactor_watches_for_every_answer(unbatched: int) -> None:
    """The same exchange unbatched: what the test above saves (so that it
    could fail)."""
    with Watches() as watches:
        got = await _ask(unbatched, b"small\n", 10)
    assert got == b"head;body\n"
    assert watches.count >= 1


@pytest_twisted.ensureDeferred
async def test_an_answer_bigger_than_the_socket_takes_arrives_whole(
    batched: int,
) -> None:
    with Watches() as watches:
        got = await _ask(batched, b"big\n", BIG)
    assert len(got) == BIG and got == b"x" * BIG
    assert watches.count >= 1  # the rest went the reactor's way


@pytest_twisted.ensureDeferred
async def test_closing_after_a_write_sends_it_then_closes(batched: int) -> None:
    assert await _ask(batched, b"close\n", -1) == b"bye\n"


@pytest_twisted.ensureDeferred
async def test_a_write_from_a_timer_is_sent_too(batched: int) -> None:
    assert await _ask(batched, b"later\n", 6) == b"later\n"


@pytest_twisted.ensureDeferred
async def test_a_connection_lost_before_its_turn_ends_is_left_alone(
    batched: int,
) -> None:
    """A client gone before its answer is sent: the write is dropped, the
    server goes on serving."""
    s = socket.create_connection(("127.0.0.1", batched))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.sendall(b"later\n")
    s.close()  # a reset, before the timer's write
    await deferLater(reactor, 0.05, lambda: None)
    assert await _ask(batched, b"small\n", 10) == b"head;body\n"


@pytest_twisted.ensureDeferred
async def test_the_daemons_connections_answer_without_being_watched() -> None:
    """Wired in: archiverd's Site answers two requests on one TCP connection
    with no writability watch."""
    from test_web import World

    from archiverd.api.site import ArchiverSite

    site = ArchiverSite(World().api, reactor=reactor)
    request = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    async for port in _serving(site):
        with Watches() as watches:
            got = await _ask(
                port, request + b"\r\n" + request + b"Connection: close\r\n\r\n", -1
            )
        assert got.count(b"HTTP/1.1 200 ") == 2
        assert watches.count == 1  # only for closing, the reactor's way
