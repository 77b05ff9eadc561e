"""When an upstream body may be stored: whole, within its limits, as sent.

:class:`BodyRules` is asked twice by a transfer: when the headers come (is
the body coded in a way that would make its bytes something other than the
archive? will HTTP prove it whole, or must its format?) and when the body has
ended (did it end whole?). The checks of the format itself are in
:mod:`archiverd.transfer.complete`.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from archiverd.config import SourceConfig
from archiverd.errors import TooLarge, UpstreamError, UpstreamUnavailable
from archiverd.transfer.client import describe_reason
from archiverd.transfer.complete import FormatCheck, format_check
from archiverd.transfer.cutter import PartCutter

#: Content codings whose bytes are the archive itself: a static host serving
#: ``x.tar.gz`` as ``Content-Type: application/x-tar`` with ``Content-Encoding:
#: gzip`` (Apache's ``AddEncoding`` does) sends the file as it is on disk.
OWN_CODINGS = {
    "tar.gz": {"gzip", "x-gzip"},
    "tar.bz2": {"bzip2", "x-bzip2"},
    "zip": set(),
}


class BodyRules:
    """The rules for one archive's body from ``host`` at ``url``."""

    def __init__(self, host: str, url: str, suffix: str, config: SourceConfig):
        self.host = host
        self.url = url
        self.suffix = suffix
        self.config = config

    def accept(self, response: Any) -> FormatCheck | None:
        """Refuse a body whose bytes would not be the archive, or whose
        Content-Length is over the limit; the check of its format it needs,
        when HTTP will not prove its length.

        archiverd asks for no content coding and undoes none, so a body
        coded anyway is stored as sent only when the coding is the archive's
        own compression.
        """
        values = response.headers.getRawHeaders("content-encoding") or []
        codings = [c.strip().lower() for v in values for c in v.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if codings and (len(codings) > 1 or codings[0] not in OWN_CODINGS[self.suffix]):
            raise UpstreamUnavailable(
                f"{self.host} sent {self.url} with Content-Encoding: "
                f"{', '.join(values)}, which archiverd neither asks for nor "
                f"undoes: those bytes are not the {self.suffix}"
            )
        length = getattr(getattr(response, "original", response), "length", None)
        if isinstance(length, int) and length > self.config.max_archive_bytes:
            raise self._too_long()
        return None if length_proven(response) else format_check(self.suffix)

    def _too_long(self) -> UpstreamError:
        return TooLarge(
            f"archive exceeds {self.config.max_archive_bytes} bytes "
            f"(max_archive_bytes): {self.url}"
        )

    def check_ended(self, cutter: PartCutter) -> None:
        """Raise unless the body ended by itself, within its limits, not empty."""
        if cutter.stopped_for == "limit":
            raise self._too_long()
        if cutter.stopped_for == "idle":
            raise UpstreamUnavailable(
                f"no bytes from {self.host} for "
                f"{self.config.idle_timeout:g}s (idle_timeout) after "
                f"{cutter.received} bytes of {self.url}"
            )
        reason = cutter.reason
        assert reason is not None
        if not reason.check(ResponseDone, PotentialDataLoss):
            raise UpstreamUnavailable(
                f"{self.host} broke off after {cutter.received} bytes "
                f"of {self.url}: {describe_reason(reason)}"
            )
        if cutter.received == 0:
            raise UpstreamUnavailable(
                f"{self.host} answered 200 with an empty body for {self.url}: "
                "no archive"
            )

    def check_whole(self, cutter: PartCutter, check: FormatCheck | None) -> None:
        """Raise unless the body is proven whole: by HTTP's framing, or else
        by ``check``, which has been fed every byte."""
        reason = cutter.reason
        assert reason is not None
        if not reason.check(PotentialDataLoss):
            return  # a Content-Length honoured, or the last chunk came
        why = check.verdict() if check is not None else "nothing can tell"
        if why is not None:
            raise UpstreamUnavailable(
                f"{self.host} closed the connection after {cutter.received} bytes "
                f"of {self.url} with no Content-Length or last chunk, and the "
                f"body is not a whole {self.suffix}: {why}"
            )


def length_proven(response: Any) -> bool:
    """Whether HTTP's framing proves this body whole if it ends cleanly.

    True for a Content-Length (Twisted fails a body that stops short of it)
    and for ``Transfer-Encoding: chunked`` (Twisted fails one that ends
    without its last chunk); False for a body that ends when the connection
    closes, which a dropped connection ends too.

    :class:`~twisted.web.iweb.IResponse` does not tell chunked from
    close-delimited (both are ``UNKNOWN_LENGTH``, and Twisted keeps
    Transfer-Encoding out of ``headers``), but the parser's connection
    headers do. They are reached through Twisted's private attributes, so
    anything unexpected answers False: the body is then checked by its
    format, which costs CPU and is never wrong.
    ``tests/integration/test_faults_bytes.py`` pins this on the Twisted in use.
    """
    original = getattr(response, "original", response)  # treq wraps responses
    if isinstance(getattr(original, "length", UNKNOWN_LENGTH), int):
        return True
    parser = _parser_of(original)
    if parser is None:
        return False
    codings = parser.connHeaders.getRawHeaders(b"transfer-encoding") or []
    # Twisted decodes the first coding named, and only knows "chunked".
    return bool(codings) and codings[0].strip().lower() == b"chunked"


def _parser_of(response: Any) -> Any:
    """The HTTPClientParser reading ``response``, if it can be found.

    The response's transport proxies the connection's: a TCP transport (its
    protocol wraps the HTTP protocol) or a TLS protocol (which wraps it).
    """
    proxy = getattr(response, "_transport", None)
    node = getattr(proxy, "_producer", None)
    for _ in range(5):
        if node is None:
            return None
        parser = getattr(node, "_parser", None)
        if parser is not None and hasattr(parser, "connHeaders"):
            return parser
        node = next(
            (
                getattr(node, name)
                for name in ("wrappedProtocol", "_wrappedProtocol", "protocol")
                if getattr(node, name, None) is not None
            ),
            None,
        )
    return None
