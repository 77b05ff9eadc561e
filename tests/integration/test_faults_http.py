"""Hostile clients on real loopback sockets: slowloris, too many connections,
a reader that never reads (issue 10, item 8).

The Site runs in-process on the test reactor in front of a real Daemon with
file storage; clients are Twisted TCP clients, few and short-lived.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemon import tasks_config
from polling import eventually, eventually_blocking
from processes import logged, output, serve, terminate, twistd
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall

from archiverd.api.site import ArchiverSite
from archiverd.config import parse
from archiverd.storage.base import ObjectInfo
from archiverd.tap import Daemon

pytestmark = pytest.mark.integration

HEARTBEAT = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Client(Protocol):
    """Records what the server sends and when it closes."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self.dribble: LoopingCall | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.received += data

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 (Twisted API)
        if self.dribble is not None and self.dribble.running:
            self.dribble.stop()
        self.closed.callback(None)

    @property
    def status(self) -> int:
        return int(self.received.split(b" ", 2)[1]) if self.received else 0

    @property
    def json(self) -> Any:
        return json.loads(self.received.partition(b"\r\n\r\n")[2])


class Served:
    """A Daemon behind an ArchiverSite on a free loopback port."""

    def __init__(self, root: Path, **site: Any) -> None:
        config = {
            "storage": {"backend": "file", "file": {"root": str(root)}},
            "tasks": tasks_config(),
        }
        self.daemon = Daemon(parse(config), reactor)
        self.daemon.open_files()
        self.daemon.startService()
        self.site = ArchiverSite(self.daemon.api, reactor=reactor, **site)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    async def connect(self, sending: bytes = b"") -> Client:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = await connectProtocol(endpoint, Client())
        if sending:
            client.transport.write(sending)
        return client

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.daemon.stopService()


@pytest_twisted.async_yield_fixture
async def served_factory(tmp_path: Path):
    started: list[Served] = []

    def serve(**site: Any) -> Served:
        started.append(Served(tmp_path, **site))
        return started[-1]

    yield serve
    for served in started:
        await served.stop()


async def _closed(clients: list[Client], what: str) -> None:
    await eventually(
        lambda: all(c.closed.called for c in clients), what=what, timeout=30
    )


@pytest_twisted.ensureDeferred
async def test_slowloris_connections_are_closed_at_the_header_deadline(
    served_factory,
) -> None:
    """Clients that send a header byte at a time, never finishing, get a 408
    and are closed once ``header_timeout`` has passed since their first byte
    (before, 2,000 of them were all still open at 80 s)."""
    served = served_factory(header_timeout=1.0)
    clients = [
        await served.connect(b"GET /__lbheartbeat__ HTTP/1.1\r\nX-A: ")
        for _ in range(40)
    ]
    for client in clients:
        client.dribble = LoopingCall(client.transport.write, b"a")
        client.dribble.start(0.1, now=False)
    await _closed(clients, "every dribbling connection to be closed")
    assert {c.status for c in clients} == {408}
    assert "error" in clients[0].json
    assert served.site.connections == 0
    # A client that sends its request in time is served as ever.
    prompt = await served.connect(HEARTBEAT + HEARTBEAT)
    await eventually(lambda: prompt.received.count(b"200 OK") == 2)


@pytest_twisted.ensureDeferred
async def test_connections_over_the_per_client_cap_get_a_503(served_factory) -> None:
    served = served_factory(max_connections_per_client=5)
    idle = [await served.connect() for _ in range(5)]
    await eventually(lambda: served.site.connections == 5)
    over = await served.connect(HEARTBEAT)
    await _closed([over], "the connection over the cap to be closed")
    assert over.status == 503
    assert b"Retry-After: " in over.received
    assert "error" in over.json
    idle[0].transport.loseConnection()
    await eventually(lambda: served.site.connections == 4)
    again = await served.connect(HEARTBEAT)
    await eventually(lambda: again.status == 200)
    for client in idle[1:] + [again]:
        client.transport.loseConnection()
    await eventually(lambda: served.site.connections == 0)


@pytest_twisted.ensureDeferred
async def test_connections_over_the_total_cap_get_a_503(served_factory) -> None:
    served = served_factory(max_connections=3)
    idle = [await served.connect() for _ in range(3)]
    await eventually(lambda: served.site.connections == 3)
    over = await served.connect(HEARTBEAT)
    await _closed([over], "the connection over the cap to be closed")
    assert over.status == 503
    for client in idle:
        client.transport.loseConnection()
    await eventually(lambda: served.site.connections == 0)


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_a_download_is_dropped(
    served_factory,
) -> None:
    """A response the client never reads held its connection (and the open
    file) for ever: the idle timeout was off while a response was sent."""
    served = served_factory(timeout=1)
    data = b"x" * (32 * 1024 * 1024)
    files = served.daemon.files
    info = ObjectInfo("application/gzip", "big.tar.gz")
    files.put("local", "big.tar.gz", data, info, hashlib.sha256(data).hexdigest())
    url = files.signed_url("local", "big.tar.gz", 300)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", served.port.getHost().port)
    client = await connectProtocol(endpoint, Client())
    client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.transport.pauseProducing()  # read nothing, ever
    client.transport.write(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await eventually(lambda: served.site.connections == 1)
    await eventually(
        lambda: served.site.connections == 0,
        what="the server to drop a client that stopped reading",
        timeout=30,
    )
    client.transport.abortConnection()


# -- the same, and the signing key, against `twistd -n archiverd` ---------------


def _file_config(tmp_path: Path, **top: Any) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += ["[storage.file]", f'root = "{tmp_path / "data"}"']
    lines += ["[tasks]", "hold = 0"]
    path = tmp_path / "archiverd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _exchange(base: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh socket; everything answered until close."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_twistd_applies_the_header_deadline_the_caps_and_the_host_check(
    tmp_path: Path,
) -> None:
    config = _file_config(
        tmp_path,
        header_timeout=1,
        max_connections_per_client=3,
        hosts=["archiver.internal"],
    )
    proc, base = serve(config, tmp_path)
    try:
        # Slowloris: a request that never ends gets its 408 at the deadline.
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /__lbheartbeat__ HTTP/1.1\r\nX-A: ")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 ")
        # A Host naming another server is refused (no public_url here)...
        evil = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: evil.example\r\n"
        assert _exchange(base, evil + b"Connection: close\r\n\r\n").startswith(
            b"HTTP/1.1 400 "
        )
        internal = evil.replace(b"evil.example", b"archiver.internal:80")
        assert _exchange(base, internal + b"Connection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200 "
        )
        # ...and connections over the per-client cap get a 503.
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            eventually_blocking(
                lambda: _exchange(base, b"GET / HTTP/1.1\r\n").startswith(
                    b"HTTP/1.1 503 "
                ),
                what="a connection over the cap to be refused",
            )
        finally:
            for sock in held:
                sock.close()
        assert "public_url is not set" in logged(tmp_path)
    finally:
        terminate(proc)


def test_twistd_refuses_to_start_on_an_empty_secret_with_one_line(
    tmp_path: Path,
) -> None:
    """The 0-byte .secret a first start on a full disk left behind."""
    (tmp_path / "data").mkdir()
    secret = tmp_path / "data" / ".secret"
    secret.write_bytes(b"")
    secret.chmod(0o600)
    config = _file_config(tmp_path)
    proc = twistd("--config", str(config), "--listen", "tcp:0", cwd=tmp_path)
    out = output(proc, tmp_path)
    assert proc.returncode != 0
    [line] = [x for x in out.splitlines() if x.startswith("archiverd: ")]
    assert f"{secret} holds 0 bytes" in line and "delete it" in line
