"""Answers sent without asking the reactor to watch for writability.

Twisted's TCP transport buffers every ``write`` and asks the reactor to
watch its socket for writability (``epoll_ctl``); on the reactor's next turn
it sends the buffer and stops watching (``epoll_ctl`` again). For an answer
that fits in the socket's buffer (a hit, a poll: ~all of archiverd's
traffic) the watching is two system calls spent to learn what is nearly
always true: measured on polls, it was ~11% of the daemon's time
(docs/performance.md).

:class:`Sends` keeps, instead, the list of connections that wrote during
this turn of the reactor, and sends their buffers right after it (one
``callLater(0)`` a turn, shared by all of them): the answers leave when they
did before, in one burst before the reactor waits again, and only what a
socket does not take at once (a full buffer, a slow client), an error, or a
connection closing goes to the reactor's watching, exactly as before. So
flow control, ``Connection: close`` and lost connections behave as
Twisted's own. Only plain TCP transports are wrapped (a TLS transport is
not a socket's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Sends:
    """Connections whose writes wait for the end of this reactor turn."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: Each waiting transport, and how to have the reactor watch it.
        self._waiting: dict[Any, Callable[[], None]] = {}
        self._call: IDelayedCall | None = None

    @staticmethod
    def fits(transport: Any) -> bool:
        """Whether ``transport`` is a plain TCP connection's."""
        return isinstance(transport, tcp.Connection) and not transport.TLS

    def take(self, transport: Any) -> None:
        """Send ``transport``'s writes at the end of each reactor turn."""
        watch = transport.startWriting

        def start_writing() -> None:
            if transport not in self._waiting:
                self._waiting[transport] = watch
                if self._call is None:
                    self._call = self._clock.callLater(0, self._send)

        transport.startWriting = start_writing

    def _send(self) -> None:
        self._call = None
        waiting, self._waiting = self._waiting, {}
        for transport, watch in waiting.items():
            if not transport.connected:
                continue
            if transport.disconnecting or transport.TLS:
                watch()  # closing: the reactor's way
                continue
            if not transport.dataBuffer and not transport._tempDataLen:
                continue
            # doWrite sends what the socket takes; all of it, usually.
            failed = transport.doWrite()
            if failed is not None or transport.dataBuffer or transport._tempDataLen:
                watch()  # the rest (or the error) on the reactor's turns
