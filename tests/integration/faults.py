"""Small servers that misbehave on demand, for the fault tests.

Both run in plain threads (stdlib ``http.server``), never on the test reactor,
and bind only to 127.0.0.1.

- :class:`FaultyUpstream` answers each archive request with the next scripted
  behaviour (a 5xx, a reset, a stall, a short body, ...), then serves a
  deterministic body.
- :class:`FaultyS3` is a path-style proxy in front of moto that fails chosen
  S3 calls (parts, completions) of chosen buckets, as a sick region would.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
_HOP_BY_HOP = ("content-length", "transfer-encoding", "connection")
MIB = 1024 * 1024


def body_bytes(nbytes: int) -> bytes:
    """The deterministic body every 'ok' answer serves."""
    pattern = bytes(range(256)) * 4096  # 1 MiB
    return (pattern * (nbytes // len(pattern) + 1))[:nbytes]


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802
        upstream = self.server.owner
        with upstream._lock:
            upstream.seen_headers.append(
                {k.lower(): v for k, v in self.headers.items()}
            )
        behaviour = upstream.next_behaviour(self.path)
        getattr(self, "_" + behaviour.split(":")[0])(behaviour)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _ok(self, behaviour: str) -> None:
        body = body_bytes(self.server.owner.nbytes)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 256 * 1024):
            self._chunk(body[i : i + 256 * 1024])
        self.wfile.write(b"0\r\n\r\n")

    def _status(self, behaviour: str) -> None:
        code = int(behaviour.split(":")[1])
        message = f"error: scripted {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        self.wfile.write(message)

    def _reset(self, behaviour: str) -> None:
        """Reset the connection before any response."""
        _reset(self.connection)
        self.close_connection = True

    def _stall_headers(self, behaviour: str) -> None:
        """Accept, then never answer."""
        self.server.owner.release.wait(60)
        self.close_connection = True

    def _stall_body(self, behaviour: str) -> None:
        """Send `N` bytes of the body, then nothing more."""
        sent = int(behaviour.split(":")[1])
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(body_bytes(sent))
        self.wfile.flush()
        self.server.owner.release.wait(60)
        self.close_connection = True

    def _trickle(self, behaviour: str) -> None:
        """A byte every `interval` seconds, forever."""
        interval = float(behaviour.split(":")[1])
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while not self.server.owner.release.wait(interval):
            try:
                self._chunk(b"x")
                self.wfile.flush()
            except OSError:
                break
        self.close_connection = True

    def _short(self, behaviour: str) -> None:
        """Promise `nbytes` in Content-Length, send half, close."""
        nbytes = self.server.owner.nbytes
        self.send_response(200)
        self.send_header("Content-Length", str(nbytes))
        self.end_headers()
        self.wfile.write(body_bytes(nbytes // 2))
        self.wfile.flush()
        self.close_connection = True

    def _redirect(self, behaviour: str) -> None:
        """A 302 to the URL after the first colon."""
        target = behaviour.split(":", 1)[1]
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- the bytes of an archive: framing, codings, stalls (see test_faults_bytes)

    def _payload(self) -> bytes:
        """The archive this upstream serves: ``archive`` if set, else the
        deterministic body; request headers are noted for the tests."""
        owner = self.server.owner
        owner.request_headers.append({k.lower(): v for k, v in self.headers.items()})
        return owner.archive if owner.archive is not None else body_bytes(owner.nbytes)

    def _close(self, behaviour: str) -> None:
        """HTTP/1.0 200 with no Content-Length: the body ends when the
        connection does. ``close:N`` sends only the first N bytes; ``:reset``
        then resets the connection instead of closing it."""
        _, _, rest = behaviour.partition(":")
        count, _, how = rest.partition(":")
        payload = self._payload()
        body = payload[: int(count)] if count else payload
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-gzip\r\n\r\n")
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True
        if how == "reset":
            _reset(self.connection)

    def _empty(self, behaviour: str) -> None:
        """200 with ``Content-Length: 0``."""
        self._payload()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _coded(self, behaviour: str) -> None:
        """The archive labelled ``Content-Encoding: CODING`` (not re-encoded:
        as static hosts label a ``.tar.gz``)."""
        body = self._payload()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Encoding", behaviour.split(":")[1])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _headers_stall(self, behaviour: str) -> None:
        """200 and chunked headers, then nothing until released; then the
        connection closes without the last chunk."""
        self._payload()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self.server.owner.release.wait(60)
        self.close_connection = True

    def _error_stall(self, behaviour: str) -> None:
        """``error_stall:CODE``: CODE promising 1000 bytes of error page, a
        few of them, then nothing until released."""
        code = int(behaviour.split(":")[1])
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"unknown revision: ")
        self.wfile.flush()
        self.server.owner.release.wait(60)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(http.server.ThreadingHTTPServer):
    """A threaded loopback server whose handlers reach ``owner``."""

    daemon_threads = True

    def __init__(self, owner: _Background, handler: type) -> None:
        super().__init__((LOOPBACK, 0), handler)
        self.owner = owner

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on a stalled answer are expected


class _Background:
    """Serves ``handler`` from a daemon thread while in a ``with`` block."""

    def __init__(self, handler: type) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(self, handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


class FaultyUpstream(_Background):
    """An upstream whose answers follow a script, then are 'ok'.

    Behaviours: ``ok``, ``status:503``, ``reset``, ``stall_headers``,
    ``stall_body:BYTES``, ``trickle:SECONDS``, ``short``, ``redirect:URL``;
    for the archive's bytes: ``close[:BYTES[:reset]]``, ``empty``,
    ``coded:CODING``, ``headers_stall``, ``error_stall:CODE`` (these serve
    ``archive`` when set, and note each request's headers).
    """

    def __init__(self, script: list[str] | None = None, nbytes: int = MIB) -> None:
        super().__init__(_UpstreamHandler)
        self.script = list(script or [])
        self.nbytes = nbytes
        self.paths: list[str] = []
        self.times: list[float] = []
        #: What the archive behaviours serve (default: the deterministic body).
        self.archive: bytes | None = None
        self.request_headers: list[dict[str, str]] = []
        #: Every request's headers, whatever its behaviour.
        self.seen_headers: list[dict[str, str]] = []

    @property
    def url_template(self) -> str:
        return self.base_url + "/{repo}/archive/{rev}.{suffix}/{subdir}"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.paths)

    def next_behaviour(self, path: str) -> str:
        with self._lock:
            self.paths.append(path)
            self.times.append(time.monotonic())
            return self.script.pop(0) if self.script else "ok"


@dataclass
class S3Fault:
    """Fail matching S3 calls to one bucket: `times` of them (None: all)."""

    bucket: str
    call: str  # "part", "complete", "create", "put", "abort", "any"
    status: int = 503
    code: str = "SlowDown"
    times: int | None = None
    #: Instead of answering, hold the request until the proxy is released.
    hang: bool = False
    seen: int = field(default=0)

    def matches(self, method: str, bucket: str, query: dict[str, list[str]]) -> bool:
        if bucket != self.bucket or (self.times is not None and self.times <= 0):
            return False
        kind = {
            ("PUT", True, True): "part",
            ("POST", False, True): "complete",
            ("POST", False, False): "create",
            ("PUT", False, False): "put",
            ("DELETE", False, True): "abort",
        }.get((method, "partNumber" in query, "uploadId" in query), "other")
        return self.call in (kind, "any")


class _S3Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _forward(self) -> None:
        proxy = self.server.owner
        if proxy.down:  # as unreachable as a server can be while listening
            _reset(self.connection)
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        bucket = parts.path.lstrip("/").split("/", 1)[0]
        query = parse_qs(parts.query, keep_blank_values=True)
        fault = proxy.fault_for(self.command, bucket, query)
        if fault is not None and fault.hang:
            proxy.release.wait(120)
            _reset(self.connection)
            self.close_connection = True
            return
        if fault is not None:
            error = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}"
                f"</Code><Message>injected</Message></Error>"
            ).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        upstream = http.client.HTTPConnection(LOOPBACK, proxy.target_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = f"{LOOPBACK}:{proxy.target_port}"
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class FaultyS3(_Background):
    """A path-style S3 proxy in front of moto that injects :class:`S3Fault`s.

    Signatures stay valid: botocore signs for the proxy's host, and moto does
    not check them.
    """

    def __init__(self, target_endpoint: str) -> None:
        super().__init__(_S3Handler)
        self.target_port = urlsplit(target_endpoint).port
        self.faults: list[S3Fault] = []
        self.down = False

    @property
    def endpoint_url(self) -> str:
        return self.base_url

    def fault_for(
        self, method: str, bucket: str, query: dict[str, list[str]]
    ) -> S3Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, bucket, query):
                    fault.seen += 1
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None
