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
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel

from archiverd import wire

#: Bytes of request body taken (no route reads one; clients send none).
MAX_BODY = 64 * 1024
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


class GuardedChannel(HTTPChannel):
    """One client connection (see the module docstring)."""

    #: Seconds to receive a whole request from its first byte (None: no limit).
    header_timeout: float | None = None
    #: Seconds a client may take no byte of an answer (None: no limit).
    send_timeout: float | None = None
    _deadline: IDelayedCall | None = None
    _stall: IDelayedCall | None = None
    _closing: IDelayedCall | None = None
    _body_bytes = 0
    #: Whether the Site took this connection (else it answers 503 and closes).
    admitted = False
    _refused = False

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        super().connectionMade()
        self.admitted = self.factory.admit(self)
        if not self.admitted:
            retry = f"Retry-After: {wire.RETRY_AFTER}"
            self._refuse(503, "too many connections; try again later", retry)

    def _start_deadline(self) -> None:
        if self._deadline is None and not self._handlingRequest:
            if self.header_timeout and not self._refused:
                self._deadline = self.callLater(self.header_timeout, self._too_slow)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self._refused:
            return
        self._start_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 (Twisted API)
        # Also here: a pipelined request can follow, in the same read, one
        # that was answered at once (which ended the previous deadline).
        self._start_deadline()
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if not self._handlingRequest:
            self._body_bytes += len(data)
            if self._body_bytes > MAX_BODY:
                self._refuse(413, f"a request body may hold at most {MAX_BODY} bytes")
                return
        super().rawDataReceived(data)

    def headerReceived(self, line: bytes) -> bool:  # noqa: N802 (Twisted API)
        ok: bool = super().headerReceived(line)
        if ok and self.length is not None and self.length > MAX_BODY:
            self._refuse(413, f"a request body may hold at most {MAX_BODY} bytes")
            return False
        return ok

    def allContentReceived(self) -> None:  # noqa: N802 (Twisted API)
        self._cancel("_deadline")
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
        for call in ("_deadline", "_stall", "_closing"):
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
        self._cancel("_deadline")
        self.setTimeout(None)
        self.factory.refused(self, code)
        transport: Any = self.transport
        transport.write(response(code, error, *headers))
        self._closing = self.callLater(self.abortTimeout, transport.abortConnection)
        self.loseConnection()

    def _too_slow(self) -> None:
        self._deadline = None
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
