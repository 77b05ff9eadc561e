"""HTTP to upstream: the client, and reading short bodies within deadlines.

treq's ``HTTPClient`` always wraps its agent in a ``ContentDecoderAgent``: it
asks for ``Accept-Encoding: gzip`` and gunzips any body labelled
``Content-Encoding: gzip``. An archive cache must store the bytes upstream
serves for the archive's URL, and a ``.tar.gz`` labelled so by a static host
would be stored as a plain tar with another sha256. So upstream is asked
through a bare :class:`~twisted.web.iweb.IAgent`, for no content coding
(``identity``), and nothing is decoded; what a body that arrives coded anyway
means is decided by the transfer (:mod:`archiverd.transfer.body`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hyperlink import EncodedURL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

_DONE = Failure(ResponseDone())


class UpstreamClient:
    """GETs for a :class:`~archiverd.transfer.sources.Source`: unbuffered,
    redirects not followed (the source follows them itself, to the same host
    only), no content coding asked for or undone.

    Its ``get`` takes treq's arguments for those, so a treq client (such as
    ``treq.testing.StubTreq``) can stand in for it in tests.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, Sequence[str]] | None = None,
        unbuffered: bool = True,
        allow_redirects: bool = False,
    ) -> Deferred[IResponse]:
        if not unbuffered or allow_redirects:
            raise ValueError("UpstreamClient streams bodies and follows nothing")
        sent = Headers({name: list(values) for name, values in (headers or {}).items()})
        sent.setRawHeaders("accept-encoding", ["identity"])
        # As treq does: a URL with characters outside ASCII is sent encoded.
        uri = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
        d: Deferred[IResponse] = self._agent.request(b"GET", uri, sent, None)
        return d


class BodyTimeout(Exception):
    """A short body stalled (``idle``) or took too long (``total``)."""

    def __init__(self, why: str, seconds: float, partial: bytes) -> None:
        super().__init__(f"{why} after {len(partial)} bytes")
        self.why = why
        self.seconds = seconds
        #: What came before it stopped.
        self.partial = partial


class BodyBroken(Exception):
    """A short body ended otherwise than cleanly (a reset, a cut)."""

    def __init__(self, reason: Failure, partial: bytes) -> None:
        super().__init__(describe_reason(reason))
        self.reason = reason
        #: What came before it broke.
        self.partial = partial


def describe_reason(failure: Failure) -> str:
    """One line saying why a body ended: each of the reasons Twisted gives."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(describe_error(r.value) for r in reasons)
    return describe_error(failure.value)


def describe_error(e: BaseException) -> str:
    """``Type: message``, or the type alone when there is no message."""
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _LimitedReader(Protocol):
    """Collects at most ``limit`` bytes of a body, then drops the connection;
    gives up when a byte is ``idle`` seconds late or the body takes ``total``."""

    def __init__(
        self,
        limit: int,
        clock: IReactorTime | None,
        idle: float | None,
        total: float | None,
    ) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        # Cancelling the read (a deadline above it) drops the connection too.
        self.finished: Deferred[bytes] = Deferred(lambda _: self._give_up())
        self._clock = clock
        self._idle = idle
        self._dropped = False
        self._timers: dict[str, IDelayedCall] = {}
        if clock is not None and total is not None:
            self._timers["total"] = clock.callLater(
                total, self._expired, "total", total
            )

    def connectionMade(self) -> None:
        self._arm()
        if self.limit <= 0:
            self._drop()

    def _arm(self) -> None:
        if self._clock is None or self._idle is None or self.finished.called:
            return
        timer = self._timers.get("idle")
        if timer is not None and timer.active():
            timer.reset(self._idle)
        else:
            self._timers["idle"] = self._clock.callLater(
                self._idle, self._expired, "idle", self._idle
            )

    def _expired(self, why: str, seconds: float) -> None:
        self._timers.pop(why, None)
        self._give_up()
        if self.finished.called:
            return
        body = b"".join(self.chunks)
        if self.size >= self.limit:  # all we wanted came; the close did not
            self.finished.callback(body)
        else:
            self.finished.errback(BodyTimeout(why, seconds, body))

    def _give_up(self) -> None:
        self._disarm()
        self._drop()

    def _disarm(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _drop(self) -> None:
        if self.transport is not None and not self._dropped:
            self._dropped = True
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.size >= self.limit or self.finished.called:
            return
        self._arm()
        self.chunks.append(data[: self.limit - self.size])
        self.size += len(self.chunks[-1])
        if self.size >= self.limit:
            self._drop()

    def connectionLost(self, reason: Failure = _DONE) -> None:  # type: ignore[override]
        self._dropped = True
        self._disarm()
        if self.finished.called:
            return
        body = b"".join(self.chunks)
        # A body cut at the limit was cut by us; one ended by the connection
        # closing (no length given) is judged by its reader (JSON's syntax,
        # an error page's words).
        if self.size >= self.limit or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(body)
        else:
            self.finished.errback(BodyBroken(reason, body))


async def read_limited(
    response: Any,
    limit: int,
    *,
    clock: IReactorTime | None = None,
    idle: float | None = None,
    total: float | None = None,
) -> bytes:
    """At most ``limit`` bytes of a response body (a longer one is cut).

    With a clock, a body that sends no byte for ``idle`` seconds, or is not
    over within ``total``, raises :class:`BodyTimeout` (with what came).
    ``limit=0`` drops the body unread.
    """
    reader = _LimitedReader(limit, clock, idle, total)
    response.deliverBody(reader)
    return await reader.finished
