"""The Request every connection makes: Twisted's, with its Date header made
once a second rather than once a request.

Twisted's ``Request.process`` formats the Date header for every request
(``gmtime`` and a format: ~3% of a hit on the hot path, docs/performance.md).
:class:`ArchiverRequest` does what that method does, with the header taken
from :func:`http_date`, which formats it again only when the second changes.
"""

from __future__ import annotations

import time

from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.http import datetimeToString, unquote
from twisted.web.server import Request, version

_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """Now, as an HTTP Date header (``datetimeToString()``, a second at a time)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, datetimeToString(now))
    return _date[1]


class ArchiverRequest(Request):
    """Twisted's Request, its Date header made once a second."""

    def process(self) -> None:
        # Twisted's Request.process (twisted.web.server), but for the Date.
        self.site = self.channel.site  # type: ignore[attr-defined]
        self.setHeader(b"Server", version)
        self.setHeader(b"Date", http_date())
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            found = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(found):
                encoder = found.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(found)
        except BaseException:
            self.processingFailed(Failure())
