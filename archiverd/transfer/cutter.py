"""Cutting an upstream body into parts as it arrives, with backpressure.

The cutter is the protocol ``response.deliverBody`` feeds: it fills parts of
``part_size`` bytes and hands each to ``on_part``; while ``window`` of them are
not yet stored it pauses the transport (TCP then pushes back on upstream),
and resumes as they finish. It also enforces the body's size limit and the
idle timeout. See :mod:`archiverd.transfer.pipeline` for what uses it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

_DONE = Failure(ResponseDone())


class PartCutter(Protocol):
    """Receives an upstream body and cuts it into parts.

    ``on_part(data)`` is called for each full part and returns a Deferred that
    fires (never errs) when the part is stored; while ``window`` of those are
    unfinished the transport is paused.
    """

    def __init__(
        self,
        part_size: int,
        window: int,
        on_part: Callable[[bytearray], Deferred[None]],
        on_progress: Callable[[int], None],
        *,
        limit: int | None = None,
        clock: IReactorTime | None = None,
        idle_timeout: float | None = None,
        read_size: int | None = None,
    ) -> None:
        self.part_size = part_size
        self.read_size = read_size
        #: The body may not be longer than this.
        self.limit = limit
        #: Why the cutter stopped the body itself: "limit" or "idle".
        self.stopped_for: str | None = None
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle: IDelayedCall | None = None
        self.window = window
        self.on_part = on_part
        self.on_progress = on_progress
        self.received = 0
        #: Fires (with None) when the body ends; then ``reason`` says how.
        self.finished: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        # Each byte is copied once: into a stored part's buffer, filled again
        # in place, or (until one is free) from the chunks kept as they came,
        # joined into a new buffer once a whole part is there. So a transfer
        # holds at most window + 1 buffers however long the archive, and an
        # archive smaller than a part never allocates one.
        self._part: bytearray | None = None
        self._chunks: list[bytes] = []
        self._filled = 0
        self._spare: list[bytearray] = []
        self._unfinished = 0
        self._paused = False
        self._stopped = False
        self._lost = False

    def connectionMade(self) -> None:
        if self.read_size is not None:
            # Read the socket in larger gulps than Twisted's 64 KiB: fewer
            # system calls and callbacks per part on the reactor thread
            # (1 MiB: 338 -> ~550 MiB/s; see docs/performance.md). The body's
            # transport proxies the connection's own, which reads bufferSize.
            tcp = getattr(self.transport, "_producer", None)
            if tcp is not None and hasattr(tcp, "bufferSize"):
                tcp.bufferSize = self.read_size
        self._arm()

    def _arm(self) -> None:
        """(Re)start the idle timer: upstream owes us bytes from now on."""
        if self._clock is None or self._idle_timeout is None or self._stopped:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._clock.callLater(self._idle_timeout, self._went_idle)

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _went_idle(self) -> None:
        self._idle = None
        self.stop("idle")

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        if self.limit is not None and self.received + len(data) > self.limit:
            self.stop("limit")
            return
        if not self._paused:
            self._arm()
        self.received += len(data)
        view = memoryview(data)
        while view:
            take = view[: self.part_size - self._filled]
            if self._part is not None:
                self._part[self._filled : self._filled + len(take)] = take
            else:
                self._chunks.append(data if len(take) == len(data) else bytes(take))
            self._filled += len(take)
            view = view[len(take) :]
            if self._filled == self.part_size:
                self._emit(self._take_part())
        self.on_progress(self.received)

    def _take_part(self) -> bytearray:
        part = self._part
        if part is None:
            part = bytearray().join(self._chunks)
            self._chunks = []
        self._part = self._spare.pop() if self._spare else None
        self._filled = 0
        return part

    def _emit(self, part: bytearray) -> None:
        self._unfinished += 1
        if self._unfinished >= self.window and not self._paused:
            self._paused = True
            self._disarm()  # waiting on storage is not upstream's idleness
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.on_part(part).addBoth(self._part_done, part)

    def _part_done(self, _: object, part: bytearray) -> None:
        # on_part's Deferred fires once every use of the part has ended, or on
        # failure, after which nothing is cut again (stop() came first).
        if not self._stopped:
            if self._part is None:
                # The part being cut has no buffer yet: this one becomes it,
                # with the few chunks kept meanwhile, rather than a new buffer
                # later (which would hold one more part's worth of memory).
                offset = 0
                for chunk in self._chunks:
                    part[offset : offset + len(chunk)] = chunk
                    offset += len(chunk)
                self._chunks = []
                self._part = part
            else:
                self._spare.append(part)
        self._unfinished -= 1
        if self._paused and self._unfinished < self.window and not self._stopped:
            self._paused = False
            self._arm()
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def rest(self) -> bytes:
        """What is left after the last full part."""
        if self._part is not None:
            return bytes(self._part[: self._filled])
        return b"".join(self._chunks)

    def stop(self, why: str | None = None) -> None:
        """Drop the connection; no more parts will be cut."""
        self._disarm()
        if not self._stopped:
            self._stopped = True
            self.stopped_for = why
            self._part, self._chunks, self._spare, self._filled = None, [], [], 0
            if self.transport is not None and not self._lost:
                self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = _DONE) -> None:  # type: ignore[override]
        self._lost = True
        self._disarm()
        self.reason = reason
        if not self.finished.called:
            self.finished.callback(None)
