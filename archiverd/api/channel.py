"""The HTTP connection: Twisted's ``HTTPChannel`` with deadlines, limits and
JSON refusals.

Twisted bounds a request's size (16 KiB of headers) but not its time: the
idle timeout (``timeOut``, 60 s) restarts with every byte, so a client that
sends one header byte a second holds its connection for ever (slowloris), and
while a response is being sent there is no timeout at all, so a client that
stops reading holds its connection, and the file it was reading, for ever.
:class:`GuardedChannel` adds:

- a deadline to receive each whole request (line, headers, body), from its
  first byte: ``header_timeout``; then a 408;
- a deadline for the client to take any of a response it is being sent:
  ``send_timeout`` (the Site's idle timeout) without the transport accepting
  a byte; then the connection is aborted;
- a cap on a request body (no route takes one): 413;
- a JSON body for every refusal Twisted itself makes (a malformed request
  line or header is a 400; a line longer than 16 KiB, once closed without a
  word, is a 431);
- admission: the Site may refuse a new connection (503, ``Retry-After``)
  when it has too many, in total or from the client's address.

The header deadline and Twisted's idle timeout are kept by one sweep a
second over the connections (:class:`Deadlines`), rather than by a reactor
timer made and cancelled per request (and moved at every read) for each.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel

from archiverd import wire
from archiverd.api.sends import Sends

#: Bytes of request body taken (no route reads one; clients send none),
#: except a push webhook's (pre-warm), which can list many commits.
MAX_BODY = 64 * 1024
MAX_HOOK_BODY = 1024 * 1024
HOOKS = b"/archiver/hooks/"
#: Reason phrases Twisted's table lacks.
_REASONS = {431: "Request Header Fields Too Large"}


def response(code: int, error: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body, closing the connection."""
    body = json.dumps({"error": error}).encode()
    reason = _REASONS.get(code) or RESPONSES[code].decode()
    head = [
        f"HTTP/1.1 {code} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Deadlines:
    """The connections with a deadline running, swept once a second: one
    receiving a request for ``header_timeout`` seconds (None: no limit) gets
    its 408, one idle for its ``timeOut`` is timed out as Twisted would. So a
    deadline is kept to within a second, and the sweep runs only while some
    connection has one.

    Measured: a reactor timer made and cancelled per request for the header
    deadline, and Twisted's idle timer cancelled, moved and made again per
    request, were ~5% of a hit (docs/performance.md); noting the time here
    is an attribute set, and a set insertion per request.
    """

    #: Seconds between two sweeps.
    EVERY = 1.0

    def __init__(self, clock: IReactorTime, header_timeout: float | None) -> None:
        self._clock = clock
        self.now = clock.seconds
        self.header_timeout = header_timeout
        self._watched: set[GuardedChannel] = set()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, channel: GuardedChannel) -> float:
        """``channel`` has a deadline running: now, on this clock."""
        self._watched.add(channel)
        if self._timer is None:
            self._timer = self._clock.callLater(self.EVERY, self._sweep)
        return self.now()

    def forget(self, channel: GuardedChannel) -> None:
        self._watched.discard(channel)

    def _sweep(self) -> None:
        self._timer = None
        now = self.now()
        header_timeout = self.header_timeout
        watched = self._watched
        try:
            for channel in list(watched):
                since = channel.receiving_since
                if (
                    since is not None
                    and header_timeout is not None
                    and now - since >= header_timeout
                ):
                    channel.too_slow()
                elif channel.idle and now - channel.idle_since >= channel.idle_after:
                    channel.idle = False
                    channel.timeoutConnection()
                if channel.receiving_since is None and not channel.idle:
                    watched.discard(channel)
        finally:  # (one connection's trouble stops no other's deadline)
            if watched:
                self._timer = self._clock.callLater(self.EVERY, self._sweep)


class GuardedChannel(HTTPChannel):
    """One client connection (see the module docstring)."""

    #: Seconds to receive a whole request from its first byte (None: no limit).
    header_timeout: float | None = None
    #: The Site's sweep that keeps ``header_timeout`` and the idle timeout
    #: (None: Twisted's timers keep the idle timeout, and no header deadline).
    deadlines: Deadlines | None = None
    #: When the request being received began (None: none is).
    receiving_since: float | None = None
    #: Whether the idle timeout runs, since when, and for how long.
    idle = False
    idle_since = 0.0
    idle_after = 0.0
    #: Seconds a client may take no byte of an answer (None: no limit).
    send_timeout: float | None = None
    _stall: IDelayedCall | None = None
    _closing: IDelayedCall | None = None
    _body_bytes = 0
    #: Whether the Site took this connection (else it answers 503 and closes).
    admitted = False
    _refused = False
    _host: Any = None
    #: The Site's batcher of sends (api/sends.py; None: Twisted's own way).
    sends: Sends | None = None

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        super().connectionMade()
        if self.sends is not None and Sends.fits(self.transport):
            self.sends.take(self.transport)
        self.admitted = self.factory.admit(self)
        if not self.admitted:
            retry = f"Retry-After: {wire.RETRY_AFTER}"
            self._refuse(503, "too many connections; try again later", retry)

    def _start_deadline(self) -> None:
        deadlines = self.deadlines
        if (
            deadlines is not None
            and deadlines.header_timeout is not None
            and not self._refused
        ):
            self.receiving_since = deadlines.watch(self)

    # TimeoutMixin's two methods, on the sweep.

    def setTimeout(self, period: float | None) -> float | None:  # noqa: N802
        deadlines = self.deadlines
        if deadlines is None:
            return super().setTimeout(period)  # type: ignore[no-any-return]
        previous: float | None = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        self.idle = period is not None
        if period is not None:
            self.idle_after = period
            self.idle_since = deadlines.watch(self)
        return previous

    def resetTimeout(self) -> None:  # noqa: N802 (Twisted API)
        if self.idle:
            self.idle_since = self.deadlines.now()  # type: ignore[union-attr]
        elif self.deadlines is None:
            super().resetTimeout()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self._refused:
            return
        if self.receiving_since is None and not self._handlingRequest:
            self._start_deadline()
        super().dataReceived(data)

    def getHost(self) -> Any:  # noqa: N802 (Twisted API)
        # Every Request asks (Request.__init__): one getsockname() a
        # connection, not one a request (~6% of a poll, docs/performance.md).
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 (Twisted API)
        # Also here: a pipelined request can follow, in the same read, one
        # that was answered at once (which ended the previous deadline).
        if self.receiving_since is None and not self._handlingRequest:
            self._start_deadline()
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if not self._handlingRequest:
            self._body_bytes += len(data)
            if self._body_bytes > self._max_body():
                self._refuse(
                    413, f"a request body may hold at most {self._max_body()} bytes"
                )
                return
        super().rawDataReceived(data)

    def headerReceived(self, line: bytes) -> bool:  # noqa: N802 (Twisted API)
        ok: bool = super().headerReceived(line)
        if ok and self.length is not None and self.length > self._max_body():
            self._refuse(
                413, f"a request body may hold at most {self._max_body()} bytes"
            )
            return False
        return ok

    def _max_body(self) -> int:
        path = getattr(self, "_path", b"") or b""
        return MAX_HOOK_BODY if path.startswith(HOOKS) else MAX_BODY

    def allContentReceived(self) -> None:  # noqa: N802 (Twisted API)
        self.receiving_since = None
        self._body_bytes = 0
        super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 (Twisted API)
        self._refuse(431, f"a request line or header is over {self.MAX_LENGTH} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802
        # Twisted's own 400 (a malformed request line or header) has no body.
        self._refuse(400, "malformed HTTP request")

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        # The transport's buffer is full: the client is not reading.
        super().pauseProducing()
        if self._stall is None and self._handlingRequest and self.send_timeout:
            self._stall = self.callLater(self.send_timeout, self._stalled)

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        self._cancel("_stall")
        super().resumeProducing()

    def connectionLost(  # noqa: N802 (Twisted API)
        self, reason: Failure = connectionDone
    ) -> None:
        self.receiving_since = None
        if self.deadlines is not None:
            self.deadlines.forget(self)
        for call in ("_stall", "_closing"):
            self._cancel(call)
        if self.admitted:
            self.admitted = False
            self.factory.release(self)
        super().connectionLost(reason)

    # -- refusing --------------------------------------------------------

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        if call is not None:
            setattr(self, name, None)
            if call.active():
                call.cancel()

    def _refuse(self, code: int, error: str, *headers: str) -> None:
        """Answer ``code`` with a JSON error, read nothing more, and close
        (aborting if the client will not take even that)."""
        if self._refused:
            return
        self._refused = True
        self.receiving_since = None
        self.setTimeout(None)
        self.factory.refused(self, code)
        transport: Any = self.transport
        transport.write(response(code, error, *headers))
        self._closing = self.callLater(self.abortTimeout, transport.abortConnection)
        self.loseConnection()

    def too_slow(self) -> None:
        """The request did not arrive within ``header_timeout`` (the sweep's
        word): a 408."""
        self.receiving_since = None
        self._refuse(408, f"the request did not arrive within {self.header_timeout}s")

    def _stalled(self) -> None:
        self._stall = None
        transport: Any = self.transport
        self._log.info(
            "aborting {peer}: it took no byte of its answer in {timeout}s",
            peer=str(transport.getPeer()),
            timeout=self.send_timeout,
        )
        transport.abortConnection()
