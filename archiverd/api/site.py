"""The Site that serves the API: connections (limits and deadlines, see
:mod:`archiverd.api.channel`), request counting, logging, and a root that
answers what cannot be routed: a URL that is not UTF-8, a request target that
is not a path, a Host that cannot be parsed or (without ``public_url``) names
another server."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger, LoggingFile
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException

from archiverd.api.channel import Deadlines, GuardedChannel
from archiverd.api.hosts import HostCheck
from archiverd.api.render import json_body
from archiverd.api.request import ArchiverRequest
from archiverd.api.sends import Sends
from archiverd.ops.logs import AccessLogFile
from archiverd.redact import has_secret, redact

if TYPE_CHECKING:
    from archiverd.api.web import ArchiverAPI


#: A byte Twisted's access log escapes (``http._escape``): all but printable
#: ASCII, and the double quote and backslash.
_ESCAPED = re.compile(rb'[^\x20-\x7e]|["\\]')
_IP = (IPv4Address, IPv6Address)


def access_log_formatter(timestamp: str, request: Any) -> str:
    """Twisted's combined log format, with URL signatures redacted.

    The common line (a client IP, fields of printable ASCII with no quote or
    backslash, which Twisted's escaping leaves as they are) is built here
    in one step: the same text at half of Twisted's cost, which escapes
    each field through ``repr``. Its request-line and header fields are
    checked and decoded once for each set of them (polls and hits repeat
    them: ~4% of a poll, docs/performance.md). Anything else is Twisted's own.
    """
    fields = (
        request.method,
        request.uri,
        request.clientproto,
        request.getHeader(b"referer"),
        request.getHeader(b"user-agent"),
    )
    parts = _FIELDS.get(fields, _UNSEEN)
    if parts is _UNSEEN:
        if len(_FIELDS) >= _FIELDS_KEPT:
            _FIELDS.clear()
        parts = _FIELDS[fields] = _common_fields(*fields)
    address = request.getClientAddress()
    if parts is None or type(address) not in _IP:
        if _may_hide(fields[1]) or (fields[3] and _may_hide(fields[3])):
            return http.combinedLogFormatter(timestamp, _Redacted(request))
        return http.combinedLogFormatter(timestamp, request)
    return (
        f'"{address.host}" - - {timestamp} "{parts[0]}" {request.code:d} '
        f"{request.sentLength or '-'} {parts[1]}"
    )


#: Request-line and header fields seen lately, and their text in the common
#: line (None: not a common line).
_FIELDS: dict[tuple[Any, ...], tuple[str, str] | None] = {}
_FIELDS_KEPT = 4096
_UNSEEN = ("", "")


def _common_fields(
    method: bytes,
    uri: bytes,
    protocol: bytes,
    referer: bytes | None,
    agent: bytes | None,
) -> tuple[str, str] | None:
    """The request line and the quoted referer and agent of a common line,
    or None when Twisted must write it (a secret to hide, a byte to escape)."""
    if _may_hide(uri) or (referer and _may_hide(referer)):
        return None
    agent = agent or b"-"
    referer = referer or b"-"
    if _ESCAPED.search(b" ".join((method, uri, protocol, referer, agent))):
        return None
    return (
        f"{method.decode()} {uri.decode()} {protocol.decode()}",
        f'"{referer.decode()}" "{agent.decode()}"',
    )


def _may_hide(value: bytes) -> bool:
    """:func:`~archiverd.redact.has_secret`, after a test that answers most
    values at a tenth of its cost: every secret it finds is after a ``=``
    or an ``@``, which a hit's or a poll's path has neither of."""
    return (b"=" in value or b"@" in value) and has_secret(value)


class _Redacted:
    """A request as the access log sees it: signature query values hidden."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 (Twisted API)
        value: bytes | None = self._request.getHeader(name)
        return redact(value) if value else value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


_ROUTES = {b"status": "status", b"files": "files", b"openapi.json": "openapi"}
_TOP = {b"__lbheartbeat__", b"__heartbeat__", b"__version__", b"metrics"}


def route_of(path: bytes) -> str:
    """The route a request path belongs to, as a bounded metric label."""
    parts = path.split(b"/", 3)
    if len(parts) > 2 and parts[1] == b"archiver":
        return _ROUTES.get(parts[2], "archive")
    if len(parts) == 2 and parts[1] in _TOP:
        return parts[1].decode()
    return "other"


class ArchiverSite(Site):
    """The Site: counts every answer by route and status as it is logged
    (cheaper on the hit path than a Deferred per request), and admits
    connections up to ``max_connections`` in all and
    ``max_connections_per_client`` from one address (None: no limit).

    ``reactor`` is passed in, as everywhere in archiverd: only ``tap.py``
    touches the global one. ``timeout`` is Twisted's idle timeout (60 s),
    also the longest a client may take none of an answer.
    """

    protocol = GuardedChannel  # type: ignore[assignment]
    log_events = Logger()
    #: Seconds between two warnings about refused connections.
    REFUSALS_LOGGED_EVERY = 60.0

    def __init__(
        self,
        api: ArchiverAPI,
        *,
        reactor: Any,
        request_log: Callable[[Any, str], None] | None = None,
        header_timeout: float | None = None,
        max_connections: int | None = None,
        max_connections_per_client: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("requestFactory", ArchiverRequest)
        kwargs.setdefault("logFormatter", access_log_formatter)  # redacted
        super().__init__(api.resource(), reactor=reactor, **kwargs)
        self._api = api
        self._metrics = api.metrics
        #: Given (request, route), logs the request instead of the access log.
        self._request_log = request_log
        self.header_timeout = header_timeout
        #: The sweep that keeps connections' deadlines, on ``reactor``'s clock
        #: (monotonic in the daemon; ``self.reactor`` may become a wall-clock
        #: view of it).
        self.deadlines = Deadlines(self.reactor, header_timeout or None)
        #: Answers sent at the end of the reactor's turn (api/sends.py).
        self.sends = Sends(self.reactor)
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        #: Open connections admitted, in all and by client address.
        self.connections = 0
        self._by_client: Counter[str] = Counter()
        self._refusals = 0
        self._refusals_logged_at: float | None = None

    def startFactory(self) -> None:  # noqa: N802 (Twisted API)
        super().startFactory()
        hosts = self._api.hosts
        if hosts.public_url is None:
            self.log_events.warn(
                "public_url is not set: Location headers name the Host each "
                "request gives, served only if it is one of: {names}; set "
                "public_url for production",
                names=hosts.served_names(),
            )

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted API)
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        channel.deadlines = self.deadlines
        channel.sends = self.sends
        channel.send_timeout = self.timeOut
        return channel

    def admit(self, channel: Any) -> bool:
        """Take a new connection, unless there are too many already."""
        client = getattr(channel.transport.getPeer(), "host", "")
        per_client = self.max_connections_per_client
        if (self.max_connections and self.connections >= self.max_connections) or (
            per_client and self._by_client[client] >= per_client
        ):
            return False
        self.connections += 1
        self._by_client[client] += 1
        return True

    def release(self, channel: Any) -> None:
        """A connection :meth:`admit` took has closed."""
        client = getattr(channel.transport.getPeer(), "host", "")
        self.connections -= 1
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def refused(self, channel: Any, code: int) -> None:
        """The channel answered ``code`` itself (no request was routed)."""
        self._metrics.count_request("other", code)
        if code != 503:
            return
        self._refusals += 1
        now = self.reactor.seconds()
        last = self._refusals_logged_at
        if last is None or now - last >= self.REFUSALS_LOGGED_EVERY:
            self._refusals_logged_at = now
            self.log_events.warn(
                "refused {count} connections over max_connections ({total}) or "
                "max_connections_per_client ({per_client}) since the last warning",
                count=self._refusals,
                total=self.max_connections,
                per_client=self.max_connections_per_client,
            )
            self._refusals = 0

    def _openLogFile(self, path: str | bytes) -> AccessLogFile:  # noqa: N802
        """``logPath`` (the ``access_log`` setting): a file archiverd writes
        itself, a second at a time (:class:`~archiverd.ops.logs.AccessLogFile`)."""
        return AccessLogFile(os.fsdecode(path), self.reactor)

    @property
    def access_log(self) -> AccessLogFile | None:
        """The access log file while the Site serves, if it has one."""
        out = self._logFile
        return out if isinstance(out, AccessLogFile) else None

    def log(self, request: Any) -> None:
        route = route_of(request.path)
        self._metrics.count_request(route, request.code)
        if self._request_log is not None:
            self._request_log(request, route)
            return
        out = self._logFile
        if type(out) is AccessLogFile:
            out.write(self._logFormatter(self._logDateTime, request) + "\n")
            return
        if type(out) is not LoggingFile:  # no access log
            super().log(request)
            return
        # twistd's log: the event Twisted's LoggingFile (and its Logger) make
        # of the line, made here in one step.
        line = self._logFormatter(self._logDateTime, request)
        if "\n" in line:
            out.write(line + "\n")
            return
        logger = out.log
        logger.observer(
            {
                "log_io": line,
                "log_logger": logger,
                "log_level": out.level,
                "log_namespace": logger.namespace,
                "log_source": logger.source,
                "log_format": "{log_io}",
                "log_time": time.time(),
            }
        )


class Root(Resource):
    """Answers, with a JSON 400, what cannot be routed (Klein's answers are
    plain text or, for a Host werkzeug cannot encode, a 500); then routes."""

    isLeaf = True
    log = Logger()

    def __init__(self, inner: Resource, hosts: HostCheck) -> None:
        super().__init__()
        self._inner = inner
        self._hosts = hosts

    def _problem(self, request: Any) -> str | None:
        path = request.path
        if not path.startswith(b"/"):
            return "the request target must be a path"
        if not path.isascii() or b"%" in path:  # (else: ASCII once unquoted)
            try:
                b"/".join(request.postpath).decode("utf-8")
            except UnicodeDecodeError:
                return "the URL is not valid UTF-8"
        return self._hosts.problem(request)

    def render(self, request: Any) -> Any:
        problem = self._problem(request)
        if problem is not None:
            return json_body(request, {"error": problem}, 400)
        try:
            return self._inner.render(request)
        except HTTPException as e:  # raised by werkzeug before Klein's handlers
            self.log.warn("{uri}: {error}", uri=request.uri, error=e)
            return json_body(request, {"error": e.description}, e.code or 400)
        except Exception:  # as Klein's last handler: logged, a JSON 500
            self.log.failure("answering {uri}", uri=request.uri)
            error = "internal error; see archiverd's log"
            return json_body(request, {"error": error}, 500)
