"""Logs: mozlog JSON lines (``--log-format json``) and what a URL must not show.

With ``--log-format json`` every log event becomes one line of JSON in the
mozlog / Dockerflow format that Mozilla's log pipelines ingest::

    {"Timestamp": 1764302736123456768, "Type": "archiverd.tasks.TaskService",
     "Logger": "archiverd", "Hostname": "web-1", "EnvVersion": "2.0",
     "Severity": 6, "Pid": 4242, "Fields": {"msg": "...", "key": "..."}}

``Type`` is the event's namespace; each answered HTTP request is one event of
Type ``request.summary`` (instead of a line of the text access log), with its
method, path, code, bytes, duration_ms, agent, remote and route. Signatures,
credentials and security tokens in URLs are redacted, there and in any other
line.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import IO, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.python import usage
from twisted.python.reflect import safe_repr
from zope.interface import implementer

from archiverd.api.request import ArchiverRequest
from archiverd.redact import redact_text

# -- the JSON observer ----------------------------------------------------

#: Syslog severities, as mozlog wants them.
SEVERITY = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}
_INFO = 6
#: Keys of twisted.python.log's events (Type ``log_legacy``) that say what
#: the log_* keys already say.
_LEGACY_KEYS = frozenset(
    {"message", "isError", "system", "time", "format", "failure", "why", "printed"}
)
_PLAIN = frozenset({str, int, bool, type(None)})


def _plain(value: object) -> object:
    """``value`` if JSON can hold it as it is, else its repr."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)  # type: ignore[arg-type]
    try:
        json.dumps(value, allow_nan=False)
    except Exception:
        return safe_repr(value)
    return value


def _traceback(failure: Any) -> str:
    try:
        text: str = failure.getTraceback()
    except Exception as e:
        return f"(no traceback: {safe_repr(e)})"
    return text


def fields(event: LogEvent) -> dict[str, object]:
    """An event's ``Fields``: ``msg`` (the formatted message, when there is
    one), the event's own keys (JSON values kept, others as their repr), and
    for a failure its traceback in ``error``."""
    legacy = event.get("log_namespace") == "log_legacy"
    failure = event.get("log_failure")
    msg = formatEvent(event)
    if legacy and failure is None and event.get("isError"):
        failure = event.get("failure")
        if failure is not None and not event.get("message"):
            # Its text is why + traceback: keep the traceback to ``error``.
            msg = str(event.get("why") or "Unhandled Error")
    out: dict[str, object] = {"msg": msg} if msg else {}
    for key, value in event.items():
        if not key.startswith("log_") and not (legacy and key in _LEGACY_KEYS):
            out.setdefault(key, _plain(value))
    if failure is not None:
        out["error"] = _traceback(failure)
    return out


def mozlog_line(
    event: LogEvent, logger: str = "archiverd", hostname: str = "", pid: int = 0
) -> str:
    """One event as one line of mozlog JSON (newline included), with secrets
    in URLs redacted."""
    envelope = {
        "Timestamp": int(event.get("log_time", time.time()) * 1_000_000_000),
        "Type": event.get("log_namespace") or "log",
        "Logger": logger,
        "Hostname": hostname,
        "EnvVersion": "2.0",
        "Severity": SEVERITY.get(event.get("log_level"), _INFO),  # type: ignore[arg-type]
        "Pid": pid,
        "Fields": fields(event),
    }
    line = json.dumps(envelope, separators=(",", ":"), default=safe_repr)
    return redact_text(line) + "\n"


@implementer(ILogObserver)
class MozlogObserver:
    """Writes each event to ``out`` as one line of mozlog JSON."""

    def __init__(self, out: IO[str], logger: str = "archiverd") -> None:
        self._out = out
        self._logger = logger
        self._hostname = socket.gethostname()

    def __call__(self, event: LogEvent) -> None:
        # getpid per event: twistd forks after making its observer when it
        # daemonizes.
        self._out.write(mozlog_line(event, self._logger, self._hostname, os.getpid()))
        self._out.flush()


def stdout_observer() -> ILogObserver:
    """twistd's ``--logger`` factory for ``--log-format json``."""
    return MozlogObserver(sys.stdout)


def use_json_logs(twistd: MutableMapping[str, Any]) -> None:
    """Have twistd log mozlog JSON to stdout (the plugin's ``--log-format
    json``, given twistd's options).

    twistd makes its log observer before it calls ``makeService``, from its
    own ``--logger`` option, so that is what this sets: then stdout carries
    nothing but JSON lines, twistd's own included.
    """
    if twistd.get("logger"):
        raise usage.UsageError("--log-format json and twistd's --logger both log")
    if twistd.get("logfile") not in (None, "-") or twistd.get("syslog"):
        raise usage.UsageError(
            "--log-format json writes to stdout: drop twistd's --logfile/--syslog"
        )
    if not twistd.get("nodaemon"):
        raise usage.UsageError("--log-format json writes to stdout: use twistd -n")
    twistd["logger"] = f"{__name__}.{stdout_observer.__name__}"


# -- one event per request ------------------------------------------------


class TimedRequest(ArchiverRequest):
    """A Request that notes when its first line arrived, for ``duration_ms``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at = time.monotonic()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


class RequestLog:
    """Logs each answered request as one ``request.summary`` event (error
    severity for a 5xx). Its duration is measured from ``received_at``
    (:class:`TimedRequest`), on ``now``'s clock."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        # An instance attribute: as a class attribute, Logger would name its
        # events after this class.
        self.log = Logger(namespace="request.summary", source=self)

    def __call__(self, request: Any, route: str) -> None:
        received_at = getattr(request, "received_at", None)
        address = request.getClientAddress()
        code = request.code
        self.log.emit(
            LogLevel.error if code >= 500 else LogLevel.info,
            None,
            method=request.method.decode("ascii", "replace"),
            path=redact_text(request.uri.decode("utf-8", "replace")),
            code=code,
            bytes=request.sentLength,
            duration_ms=(
                None
                if received_at is None
                else round((self._now() - received_at) * 1000, 3)
            ),
            agent=_text(request.getHeader(b"user-agent")),
            remote=getattr(address, "host", None),
            route=route,
        )


# -- the access log as a file of its own ----------------------------------


class AccessLogFile:
    """An access log archiverd writes itself: lines (``write``, as Twisted's
    ``Site.log`` writes them) are kept in memory and written together, every
    :attr:`FLUSH_EVERY` seconds, when :attr:`BUFFERED` characters wait, and
    at ``close``. Each flush also notices when the file was moved or removed
    (logrotate) and opens ``path`` anew; so does SIGHUP (:meth:`reopen`).

    Measured (docs/performance.md): a line through twistd's text observer
    cost ~45 us (its timestamp, its format string, a write each); here ~2.
    """

    #: Seconds a line may wait before it is written.
    FLUSH_EVERY = 1.0
    #: Characters that make a write at once.
    BUFFERED = 64 * 1024
    log = Logger()

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self._lines: list[str] = []
        self._size = 0
        self._timer: IDelayedCall | None = None
        self._file: IO[str] | None = None
        self._inode: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        out = open(self.path, "a", encoding="utf-8", errors="replace", newline="\n")
        stat = os.fstat(out.fileno())
        self._file, self._inode = out, (stat.st_dev, stat.st_ino)

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.BUFFERED:
            self.flush()
        elif self._timer is None:
            self._timer = self._reactor.callLater(self.FLUSH_EVERY, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._moved():
            self.reopen()
        else:
            self.flush()

    def _moved(self) -> bool:
        try:
            stat = os.stat(self.path)
        except OSError:
            return True
        return (stat.st_dev, stat.st_ino) != self._inode

    def flush(self) -> None:
        """Write what waits (a failed write is logged once per flush, and its
        lines dropped: the access log never stops the daemon)."""
        lines, self._lines, self._size = self._lines, [], 0
        if not lines or self._file is None:
            return
        try:
            self._file.write("".join(lines))
            self._file.flush()
        except OSError as e:
            self.log.error(
                "cannot write the access log {path}: {error}", path=self.path, error=e
            )

    def reopen(self) -> None:
        """Write what waits to the file open now, then open ``path`` again
        (after logrotate moved it, or on SIGHUP)."""
        self.flush()
        old = self._file
        try:
            self._open()
        except OSError as e:
            self.log.error(
                "cannot reopen the access log {path}: {error}", path=self.path, error=e
            )
            return
        if old is not None:
            old.close()

    def close(self) -> None:
        """Write what waits and close (the Site's ``stopFactory``)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def reopen_on_sighup(logs: Callable[[], list[AccessLogFile]], reactor: Any) -> None:
    """Have SIGHUP reopen the access logs ``logs()`` names (on the reactor
    thread), then do what was done on SIGHUP before, if anything."""
    previous = signal.getsignal(signal.SIGHUP)

    def hangup(signum: int, frame: Any) -> None:
        for log in logs():
            reactor.callFromThread(log.reopen)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGHUP, hangup)
