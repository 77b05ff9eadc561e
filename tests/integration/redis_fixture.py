"""A real redis-server on loopback, started by the suite (Debian's package:
``scripts/redis.sh install``).

:class:`RedisServer` runs one server as a subprocess on a free port of
127.0.0.1, with no persistence, and can be stopped and started again on the
same port, so tests can see archiverd with Redis gone and then back. It talks
to the server over a plain blocking socket (RESP by hand), never through the
Twisted reactor, like the other fixtures here.

Fixtures: ``redis_server`` (one server for the session) and ``redis`` (that
server, running and flushed, for one test). Without redis-server installed
they skip, or fail under ``ARCHIVERD_REQUIRE_REDIS=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import eventually_blocking

LOOPBACK = "127.0.0.1"
SKIP_REASON = "redis-server: not installed (scripts/redis.sh install)"
#: Written by ``scripts/redis.sh install`` when it could not install.
_UNAVAILABLE_MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / (
    "archiverd-redis-unavailable"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _encode(*args: str | bytes | int | float) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    """Just enough of a RESP2 reply parser for tests."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def reply(self) -> Any:
        line = self._file.readline()
        if not line:
            raise ConnectionError("redis-server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self._file.read(size + 2)[:-2].decode()
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply from redis-server: {line!r}")


class RedisReplyError(Exception):
    """redis-server answered a command with an error."""


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` with no persistence.

    ``start()`` returns once the server answers PING; ``stop()`` once its
    process is gone (the port is then closed: connections are refused).
    Both may be called again, and the port stays the same.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        executable: str = "redis-server",
        start_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.port = port or _free_port()
        self.executable = executable
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log = self.directory / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        self.resume()
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self._log),
            "--daemonize",
            "no",
        ]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
        )
        process = self._process

        def answers() -> bool:
            if process.poll() is not None:
                self._process = None
                raise RuntimeError(
                    f"redis-server exited ({process.returncode}) on start:\n"
                    f"{self._log_tail()}"
                )
            try:
                return bool(self.command("PING", timeout=1.0) == "PONG")
            except (OSError, RedisReplyError):
                return False

        try:
            eventually_blocking(
                answers,
                what=f"redis-server to answer PING on port {self.port}",
                timeout=self.start_timeout,
                interval=0.02,
            )
        except AssertionError as e:
            self.stop()
            raise RuntimeError(f"{e}:\n{self._log_tail()}") from e

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open, nothing answers."""
        if self._process is not None and not self._paused:
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self._process is not None and self._paused:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        self.resume()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # without persistence, SIGTERM exits at once
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def command(self, *args: str | bytes | int | float, timeout: float = 5.0) -> Any:
        """Send one command on a new connection; its reply, decoded."""
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as s:
            s.sendall(_encode(*args))
            return _Reader(s).reply()

    def flush(self) -> None:
        """Remove every key (and loaded script) from the server."""
        self.command("FLUSHALL")
        self.command("SCRIPT", "FLUSH")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def require_redis_server() -> None:
    """Skip the test without redis-server, or fail under
    ARCHIVERD_REQUIRE_REDIS=1 (CI, where scripts/redis.sh install ran)."""
    if shutil.which("redis-server"):
        return
    reason = SKIP_REASON
    try:
        why = _UNAVAILABLE_MARKER.read_text().strip()
    except OSError:
        why = ""
    if why:
        reason = f"{reason}: {why}"
    if os.environ.get("ARCHIVERD_REQUIRE_REDIS") == "1":
        pytest.fail(f"{reason}; ARCHIVERD_REQUIRE_REDIS=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server on loopback for the whole session; use ``redis``."""
    require_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, running and empty; a test may ``stop()``,
    ``start()``, ``pause()`` and ``resume()`` it (it is left running)."""
    redis_server.start()
    redis_server.flush()
    yield redis_server
    redis_server.start()
