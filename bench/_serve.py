"""What both fixtures share: a quiet threaded HTTP/1.1 server, pacing, startup.

A fixture is started as ``python -m bench.<name> --port 0 [options]``; once it
listens it prints exactly one line, ``LISTENING <port>``, to stdout, and it
exits with status 0 on SIGTERM (or SIGINT).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024


class TokenBucket:
    """Paces one connection's bytes to ``rate`` bytes/second; 0 means no limit.

    Callers take tokens for what they are about to send (or have just read);
    a debt is paid by sleeping, never by spinning. Up to ``capacity`` bytes
    (a twentieth of a second's worth, at least 64 KiB) may go out at once.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.capacity = max(int(self.rate / 20), 64 * 1024)
        self._tokens = float(self.capacity)
        self._stamp = time.monotonic()

    def chunk(self, size: int) -> int:
        """How many bytes to move at once: ``size``, or less when paced."""
        return min(size, self.capacity) if self.rate else size

    def take(self, n: int) -> None:
        """Account for ``n`` bytes, sleeping as long as the rate demands."""
        if not self.rate:
            return
        now = time.monotonic()
        elapsed = now - self._stamp
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._stamp = now
        self._tokens -= n
        if self._tokens < 0:
            time.sleep(-self._tokens / self.rate)


class Server(ThreadingHTTPServer):
    """A thread per connection; options from the command line as attributes."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: Any, options: Any) -> None:
        self.options = options
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away; report anything else."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log, no Nagle delay, a pace per connection."""

    protocol_version = "HTTP/1.1"
    #: Idle keep-alive connections are dropped after this many seconds.
    timeout = 300
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bucket = TokenBucket(self.server.options.rate)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_bytes(self, code: int, body: bytes, content_type: str) -> None:
        """A complete response with a small body."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def parser(description: str) -> argparse.ArgumentParser:
    """The options every fixture takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default=LOOPBACK, help="address to bind (loopback)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument(
        "--rate",
        type=float,
        default=0,
        metavar="BYTES_PER_SEC",
        help="pace body bytes on each connection; 0 = unthrottled",
    )
    p.add_argument(
        "--latency",
        type=float,
        default=0,
        metavar="SECONDS",
        help="delay added to every request",
    )
    return p


def serve(handler: type[Handler], options: Any) -> None:
    """Listen, announce the port, and serve until SIGTERM or SIGINT."""
    server = Server((options.host, options.port), handler, options)

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever() to return: not from its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def main(
    handler: type[Handler],
    description: str,
    argv: Sequence[str] | None = None,
    extra: Any = None,
) -> None:
    """Parse the command line (``extra`` adds options) and serve."""
    p = parser(description)
    if extra:
        extra(p)
    serve(handler, p.parse_args(argv))
