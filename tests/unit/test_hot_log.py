"""The text access log made cheaper: the same line as Twisted's combined
format (signatures still redacted), and the same log event as Twisted's
LoggingFile makes of it."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import Logger, LoggingFile, LogLevel, LogPublisher
from twisted.web import http
from twisted.web.http_headers import Headers

from archiverd.api.site import ArchiverSite, _Redacted, access_log_formatter
from archiverd.redact import has_secret

STAMP = "[02/Dec/2026:00:45:11 +0000]"


class LoggedRequest:
    """What the access log reads of a request."""

    def __init__(
        self,
        uri: bytes,
        method: bytes = b"GET",
        agent: bytes | None = None,
        referer: bytes | None = None,
        address: Any = None,
        code: int = 302,
        length: int = 202,
    ) -> None:
        self.uri = uri
        self.path = uri.split(b"?")[0]
        self.method = method
        self.clientproto = b"HTTP/1.1"
        self.code = code
        self.sentLength = length
        self.requestHeaders = Headers()
        if agent is not None:
            self.requestHeaders.setRawHeaders(b"user-agent", [agent])
        if referer is not None:
            self.requestHeaders.setRawHeaders(b"referer", [referer])
        self._address = address or IPv4Address("TCP", "10.0.0.7", 5555)

    def getClientAddress(self) -> Any:  # noqa: N802 (Twisted API)
        return self._address

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 (Twisted API)
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None


def twisted_line(request: LoggedRequest) -> str:
    """What the access log wrote before: Twisted's formatter, redacted."""
    referer = request.getHeader(b"referer") or b""
    if has_secret(request.uri) or (referer and has_secret(referer)):
        return http.combinedLogFormatter(STAMP, _Redacted(request))
    return http.combinedLogFormatter(STAMP, request)


_bytes = st.binary(max_size=40) | st.text(max_size=40).map(str.encode)


@given(
    path=_bytes,
    agent=st.none() | _bytes,
    referer=st.none() | _bytes,
    method=st.sampled_from([b"GET", b"HEAD", b'P"OST', b"G\xffT"]),
    length=st.sampled_from([0, 1, 714]),
    address=st.sampled_from(
        [
            IPv4Address("TCP", "127.0.0.1", 1),
            IPv6Address("TCP", "::1", 1),
            UNIXAddress(b"/run/archiverd.sock"),
        ]
    ),
)
def test_the_access_line_is_twisteds_combined_format_for_any_request(
    path: bytes,
    agent: bytes | None,
    referer: bytes | None,
    method: bytes,
    length: int,
    address: Any,
) -> None:
    for uri in (b"/archiver/hgmo/" + path, b"/x?signature=abc&" + path):
        request = LoggedRequest(uri, method, agent, referer, address, length=length)
        assert access_log_formatter(STAMP, request) == twisted_line(request)


def test_the_common_line_is_built_without_twisteds_formatter(monkeypatch: Any) -> None:
    """Hits and polls (plain ASCII, no secret) never pay for Twisted's
    per-field repr escaping."""

    def refuse(*_: Any) -> str:
        raise AssertionError("Twisted's formatter used for a plain line")

    monkeypatch.setattr(http, "combinedLogFormatter", refuse)
    request = LoggedRequest(b"/archiver/hgmo/projects/ash/42bf8560b395", agent=b"x/1")
    assert access_log_formatter(STAMP, request) == (
        f'"10.0.0.7" - - {STAMP} "GET /archiver/hgmo/projects/ash/42bf8560b395 '
        'HTTP/1.1" 302 202 "-" "x/1"'
    )


def test_a_signature_is_still_redacted() -> None:
    request = LoggedRequest(
        b"/archiver/files/local/k?expires=1&signature=s3cr3t",
        referer=b"https://x/?X-Amz-Signature=abc",
    )
    line = access_log_formatter(STAMP, request)
    assert "s3cr3t" not in line and "abc" not in line
    assert "signature=REDACTED" in line and "X-Amz-Signature=REDACTED" in line


class _Site(ArchiverSite):
    def __init__(self, out: LoggingFile) -> None:  # only what log() reads
        from archiverd.ops.metrics import Metrics

        self._metrics = Metrics()
        self._request_log = None
        self._logFile = out
        self._logFormatter = access_log_formatter
        self._logDateTime = STAMP


def test_the_site_logs_the_event_twisteds_logging_file_would() -> None:
    def events_of(write: Any) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        publisher = LogPublisher(seen.append)
        logger = Logger(namespace="twisted.python.log", observer=publisher)
        write(LoggingFile(logger, LogLevel.info))
        for event in seen:
            assert 0 < event.pop("log_time")
            assert event.pop("log_logger") is logger
        return seen

    request = LoggedRequest(b"/archiver/status/x")
    line = access_log_formatter(STAMP, request)
    ours = events_of(lambda out: _Site(out).log(request))
    assert ours == events_of(lambda out: out.write(line + "\n"))
    assert ours[0]["log_io"] == line


@given(value=_bytes)
def test_the_quick_secret_test_agrees_with_has_secret(value: bytes) -> None:
    from archiverd.api.site import _may_hide

    for text in (value, b"/x?" + value, b"https://a@" + value):
        assert _may_hide(text) == has_secret(text)


def test_every_secret_the_log_hides_follows_an_equals_sign_or_an_at() -> None:
    from archiverd.redact import _NEEDLE_BYTES

    assert all(b"=" in needle or b"@" in needle for needle in _NEEDLE_BYTES)


# -- the access log as a file of its own (the access_log setting) -----------------


def _logging(tmp_path: Any, **site: Any) -> Any:
    from test_channel import Connection
    from test_web import World

    world = World()
    client = Connection(world, logPath=str(tmp_path / "access.log"), **site)
    client.site.startFactory()
    return world, client


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: t/1\r\n\r\n".encode()


def test_the_access_log_file_holds_one_redacted_line_a_request_within_a_second(
    tmp_path: Any,
) -> None:
    from archiverd.ops.logs import AccessLogFile

    world, client = _logging(tmp_path)
    log = tmp_path / "access.log"
    assert isinstance(client.site.access_log, AccessLogFile)
    client.send(_get("/__lbheartbeat__"))
    client.send(_get("/archiver/files/r/k?expires=1&signature=s3cr3t"))
    assert log.read_text() == ""  # buffered...
    world.clock.advance(AccessLogFile.FLUSH_EVERY)  # ...for at most a second
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith('"127.0.0.1" - - [')
    assert '"GET /__lbheartbeat__ HTTP/1.1" 200 ' in lines[0]
    assert lines[0].endswith('"-" "t/1"')
    assert "s3cr3t" not in lines[1] and "signature=REDACTED" in lines[1]


def test_the_access_log_is_written_at_stop(tmp_path: Any) -> None:
    _, client = _logging(tmp_path)
    client.send(_get("/__lbheartbeat__"))
    client.site.stopFactory()
    assert len((tmp_path / "access.log").read_text().splitlines()) == 1


def test_a_full_buffer_is_written_at_once(tmp_path: Any) -> None:
    from archiverd.ops.logs import AccessLogFile

    log = AccessLogFile(str(tmp_path / "a.log"), Clock())
    line = "x" * 1000 + "\n"
    for _ in range(AccessLogFile.BUFFERED // len(line) + 1):
        log.write(line)
    assert (tmp_path / "a.log").stat().st_size >= AccessLogFile.BUFFERED


def test_a_moved_access_log_is_opened_anew(tmp_path: Any) -> None:
    """logrotate's default: rename, then the daemon writes a new file."""
    world, client = _logging(tmp_path)
    log = tmp_path / "access.log"
    client.send(_get("/__lbheartbeat__"))
    log.rename(tmp_path / "access.log.1")
    client.send(_get("/__heartbeat__"))
    world.clock.advance(1)  # the lines before the move go where they were
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 2
    assert log.read_text() == ""
    client.send(_get("/__version__"))
    world.clock.advance(1)
    assert "/__version__" in log.read_text()
    assert "/__version__" not in (tmp_path / "access.log.1").read_text()


def test_sighup_reopens_the_access_log(tmp_path: Any) -> None:
    import os
    import signal

    from archiverd.ops.logs import AccessLogFile, reopen_on_sighup

    class Now:
        def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802
            f(*args)

    before = signal.getsignal(signal.SIGHUP)
    log = AccessLogFile(str(tmp_path / "a.log"), Clock())
    try:
        reopen_on_sighup(lambda: [log], Now())
        log.write("one\n")
        os.rename(tmp_path / "a.log", tmp_path / "a.log.1")
        os.kill(os.getpid(), signal.SIGHUP)
        log.write("two\n")
        log.close()
    finally:
        signal.signal(signal.SIGHUP, before)
    assert (tmp_path / "a.log.1").read_text() == "one\n"
    assert (tmp_path / "a.log").read_text() == "two\n"


def test_access_log_is_a_config_key() -> None:
    import pytest

    from archiverd.config import ConfigError, parse

    assert parse({}).access_log is None
    assert parse({"access_log": "/var/log/a.log"}).access_log == "/var/log/a.log"
    with pytest.raises(ConfigError, match="access_log"):
        parse({"access_log": ""})
