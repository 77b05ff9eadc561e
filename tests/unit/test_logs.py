"""archiverd.ops.logs: mozlog JSON lines, the request.summary event, and secrets
kept out of both."""

from __future__ import annotations

import io
import json
import math
import os
import socket
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, Logger, LogLevel, capturedLogs
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from twisted.web.resource import Resource

from archiverd.api.hosts import HostCheck
from archiverd.api.site import ArchiverSite, access_log_formatter
from archiverd.ops import logs
from archiverd.ops.logs import (
    MozlogObserver,
    RequestLog,
    TimedRequest,
    mozlog_line,
    use_json_logs,
)
from archiverd.ops.metrics import Metrics
from archiverd.redact import has_secret, redact
from archiverd.tap import Options

SECRET_URI = (
    b"/archiver/files/a/k?expires=1&signature=deadbeef&X-Amz-Signature=cafe"
    b"&X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Security-Token=tok3n"
    b"&AWSAccessKeyId=AKIAOLD&Signature=f00d"
)
SECRETS = ("deadbeef", "cafe", "AKIA", "tok3n", "f00d")


def emitted(emit: Any) -> LogEvent:
    """The one event ``emit(logger)`` logs."""
    events: list[LogEvent] = []
    emit(Logger(namespace="archiverd.test", observer=events.append))
    [event] = events
    return event


def line_of(event: LogEvent) -> dict[str, Any]:
    line = mozlog_line(event, hostname="host-1", pid=42)
    assert line.endswith("\n") and "\n" not in line[:-1]
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_line_is_the_mozlog_envelope_around_the_events_fields():
    event = emitted(
        lambda log: log.info("stored {key} in {region}", key="k", region="r")
    )
    line = line_of(event)
    assert list(line) == [
        "Timestamp",
        "Type",
        "Logger",
        "Hostname",
        "EnvVersion",
        "Severity",
        "Pid",
        "Fields",
    ]
    assert line["Type"] == "archiverd.test"
    assert line["Logger"] == "archiverd"
    assert line["Hostname"] == "host-1" and line["Pid"] == 42
    assert line["EnvVersion"] == "2.0"
    assert isinstance(line["Timestamp"], int)
    assert abs(line["Timestamp"] - event["log_time"] * 1e9) < 1e3  # nanoseconds
    assert line["Fields"] == {"msg": "stored k in r", "key": "k", "region": "r"}


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (LogLevel.critical, 2),
        (LogLevel.error, 3),
        (LogLevel.warn, 4),
        (LogLevel.info, 6),
        (LogLevel.debug, 7),
    ],
)
def test_severity_is_the_syslog_number_of_the_level(level, severity):
    assert line_of(emitted(lambda log: log.emit(level, "x")))["Severity"] == severity


def test_a_failure_puts_its_traceback_in_error():
    def fail(log: Logger) -> None:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("dividing {n}", n=1)

    fields = line_of(emitted(fail))["Fields"]
    assert fields["msg"] == "dividing 1"
    assert fields["n"] == 1
    assert "Traceback" in fields["error"]
    assert "ZeroDivisionError" in fields["error"]
    assert line_of(emitted(fail))["Severity"] == 2  # log.failure is critical


def test_fields_json_cannot_hold_are_their_repr_and_log_keys_are_left_out():
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    loop: list[Any] = []
    loop.append(loop)
    event = emitted(
        lambda log: log.info(
            "x",
            thing=Thing(),
            data=b"\x00\xff",
            nan=math.nan,
            nested={"a": [1, 2.5, None, True]},
            bad_list=[Thing()],
            loop=loop,
            errno=Exception("boom"),
        )
    )
    fields = line_of(event)["Fields"]
    assert fields["thing"] == "<thing>"
    assert fields["data"] == repr(b"\x00\xff")
    assert fields["nan"] == "nan"
    assert fields["nested"] == {"a": [1, 2.5, None, True]}
    assert fields["bad_list"] == "[<thing>]"
    assert fields["loop"] == "[[...]]"
    assert fields["errno"] == "Exception('boom')"
    assert not any(key.startswith("log_") for key in fields)


def test_a_message_less_event_has_no_msg():
    fields = line_of(emitted(lambda log: log.info(route="status")))["Fields"]
    assert fields == {"route": "status"}


def test_twisted_python_log_events_keep_only_their_text_and_traceback():
    with capturedLogs() as events:
        legacy_log.msg("plain words")
        legacy_log.err(Failure(ValueError("bad")), "while testing")
    plain, error = (line_of(e) for e in events)
    assert plain["Type"] == "log_legacy"
    assert plain["Fields"] == {"msg": "plain words"}
    assert error["Severity"] == 2
    assert error["Fields"]["msg"] == "while testing"
    assert "ValueError: bad" in error["Fields"]["error"]
    assert set(error["Fields"]) == {"msg", "error"}


def test_secrets_in_urls_are_redacted_from_every_line():
    event = emitted(
        lambda log: log.warn("answering {uri}", uri=SECRET_URI, url=SECRET_URI.decode())
    )
    line = mozlog_line(event)
    for secret in SECRETS:
        assert secret not in line
    fields = json.loads(line)["Fields"]  # still JSON
    assert fields["url"] == (
        "/archiver/files/a/k?expires=1&signature=REDACTED&X-Amz-Signature=REDACTED"
        "&X-Amz-Credential=REDACTED&X-Amz-Security-Token=REDACTED"
        "&AWSAccessKeyId=REDACTED&Signature=REDACTED"
    )
    assert fields["msg"].startswith("answering b'/archiver/files/a/k?expires=1&")


def test_redact_hides_every_secret_parameter_and_keeps_the_rest():
    assert has_secret(SECRET_URI)
    redacted = redact(SECRET_URI).decode()
    for secret in SECRETS:
        assert secret not in redacted
    assert redacted.startswith("/archiver/files/a/k?expires=1&signature=REDACTED&")
    plain = b"/archiver/hgmo/r/0123456789ab?subdir=a&preferred_region=x"
    assert not has_secret(plain) and redact(plain) == plain
    assert has_secret(b"/x?SIGNATURE=1") and redact(b"/x?SIGNATURE=1") == (
        b"/x?SIGNATURE=REDACTED"
    )


class _LoggedRequest:
    """A finished request, as the combined access log format reads it."""

    method = b"GET"
    clientproto = b"HTTP/1.1"
    code = 200
    sentLength = 10  # noqa: N815 (Twisted's name)

    def __init__(self, uri: bytes, referer: bytes | None = None) -> None:
        self.uri = uri
        self._referer = referer

    def getClientAddress(self) -> None:  # noqa: N802 (Twisted API)
        return None

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 (Twisted API)
        return self._referer if name == b"referer" else None


def test_the_text_access_log_redacts_the_same_secrets():
    line = access_log_formatter("now", _LoggedRequest(SECRET_URI))
    for secret in SECRETS:
        assert secret not in line


def test_the_access_log_never_shows_url_signatures():
    uri = (
        b"/archiver/files/a/k?expires=1&signature=deadbeef"
        b"&X-Amz-Signature=cafe&X-Amz-Credential=AKIA%2Fx"
    )
    line = access_log_formatter(
        "now", _LoggedRequest(uri, referer=b"https://x/?signature=feed")
    )
    assert "deadbeef" not in line and "cafe" not in line and "feed" not in line
    assert "AKIA" not in line
    assert "signature=REDACTED" in line and "X-Amz-Signature=REDACTED" in line


def test_the_observer_writes_and_flushes_one_line_per_event():
    class Out(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    out = Out()
    observer = MozlogObserver(out)
    log = Logger(namespace="archiverd.test", observer=observer)
    log.info("one")
    log.warn("two {n}", n=2)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["Fields"]["msg"] for line in lines] == ["one", "two 2"]
    assert out.flushes == 2
    assert lines[0]["Pid"] == os.getpid()
    assert lines[0]["Hostname"] == socket.gethostname()


class FakeRequest:
    """What RequestLog reads of a twisted.web Request."""

    method = b"GET"
    uri = SECRET_URI
    code = 302
    sentLength = 123  # noqa: N815 (Twisted's name)
    received_at = 10.0

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 (Twisted API)
        return {b"user-agent": b"mozharness/1.0"}.get(name)

    def getClientAddress(self) -> Any:  # noqa: N802 (Twisted API)
        return type("Address", (), {"host": "127.0.0.1"})()


def test_a_request_is_one_request_summary_event_with_its_duration():
    with capturedLogs() as events:
        RequestLog(now=lambda: 10.0125)(FakeRequest(), "files")
    [event] = events
    line = line_of(event)
    assert line["Type"] == "request.summary"
    assert line["Severity"] == 6
    assert line["Fields"] == {
        "method": "GET",
        "path": (
            "/archiver/files/a/k?expires=1&signature=REDACTED&X-Amz-Signature=REDACTED"
            "&X-Amz-Credential=REDACTED&X-Amz-Security-Token=REDACTED"
            "&AWSAccessKeyId=REDACTED&Signature=REDACTED"
        ),
        "code": 302,
        "bytes": 123,
        "duration_ms": 12.5,
        "agent": "mozharness/1.0",
        "remote": "127.0.0.1",
        "route": "files",
    }
    # The event itself, not just the line, holds no secret.
    assert not any(s in repr(event) for s in SECRETS)


def test_a_5xx_request_is_logged_as_an_error():
    request = FakeRequest()
    request.code = 503
    with capturedLogs() as events:
        RequestLog(now=lambda: 11.0)(request, "archive")
    assert line_of(events[0])["Severity"] == 3


def test_a_request_without_a_start_time_has_no_duration():
    """A Request that is not a TimedRequest (no received_at)."""

    class Untimed(FakeRequest):
        def __getattribute__(self, name: str) -> Any:
            if name == "received_at":
                raise AttributeError(name)
            return super().__getattribute__(name)

    with capturedLogs() as events:
        RequestLog()(Untimed(), "other")
    assert events[0]["duration_ms"] is None


class FakeAPI:
    metrics = Metrics()
    hosts = HostCheck("https://archiver.example")

    def resource(self) -> Resource:
        return Resource()


def test_the_site_logs_request_summary_instead_of_the_access_log(tmp_path):
    """Served for real (HTTP bytes in and out): one event per request, with
    the route, and no line in the text access log."""
    access_log = tmp_path / "access.log"
    site = ArchiverSite(
        FakeAPI(),  # type: ignore[arg-type]
        request_log=RequestLog(),
        requestFactory=TimedRequest,
        logPath=str(access_log),
        reactor=Clock(),
    )
    site.startFactory()
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    with capturedLogs() as events:
        channel.dataReceived(
            b"GET /archiver/status/t?signature=s3cret HTTP/1.1\r\n"
            b"Host: a\r\nUser-Agent: ua\r\n\r\n"
        )
    channel.connectionLost(Failure(ConnectionError()))
    site.stopFactory()
    assert transport.value().startswith(b"HTTP/1.1 404")
    [summary] = [e for e in events if e["log_namespace"] == "request.summary"]
    assert summary["route"] == "status"
    assert summary["path"] == "/archiver/status/t?signature=REDACTED"
    assert summary["code"] == 404 and summary["agent"] == "ua"
    assert 0 <= summary["duration_ms"] < 10_000
    assert access_log.read_text() == ""


def test_log_format_json_chooses_twistds_observer_factory():
    """twistd makes its observer before makeService, from its --logger
    option (a name it imports): the plugin option sets that name."""
    twistd: dict[str, Any] = {"nodaemon": True, "logfile": None, "logger": None}
    options = Options()
    options.parent = twistd  # type: ignore[assignment]
    options.parseOptions(["--log-format", "json"])
    assert namedAny(twistd["logger"]) is logs.stdout_observer
    assert isinstance(logs.stdout_observer(), MozlogObserver)


def test_log_format_text_leaves_twistd_alone():
    twistd: dict[str, Any] = {"nodaemon": True, "logfile": None, "logger": None}
    options = Options()
    options.parent = twistd  # type: ignore[assignment]
    options.parseOptions([])
    assert options["log-format"] == "text"
    assert twistd["logger"] is None


@pytest.mark.parametrize(
    ("twistd", "message"),
    [
        ({"nodaemon": True, "logfile": "x.log"}, "--logfile"),
        ({"nodaemon": True, "syslog": True}, "--syslog"),
        ({"nodaemon": False}, "twistd -n"),
        ({"nodaemon": True, "logger": "my.observer"}, "--logger"),
    ],
)
def test_log_format_json_refuses_twistd_options_that_would_lose_it(twistd, message):
    with pytest.raises(usage.UsageError, match=message):
        use_json_logs(twistd)


def test_an_unknown_log_format_is_refused():
    with pytest.raises(usage.UsageError, match="text or json"):
        Options().parseOptions(["--log-format", "xml"])
