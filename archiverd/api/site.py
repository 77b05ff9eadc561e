"""The Site that serves the API: connections (limits and deadlines, see
:mod:`archiverd.api.channel`), request counting, logging, and a root that
answers what cannot be routed: a URL that is not UTF-8, a request target that
is not a path, a Host that cannot be parsed or (without ``public_url``) names
another server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException

from archiverd.api.channel import GuardedChannel
from archiverd.api.hosts import HostCheck
from archiverd.api.render import json_body
from archiverd.redact import has_secret, redact

if TYPE_CHECKING:
    from archiverd.api.web import ArchiverAPI


def access_log_formatter(timestamp: str, request: Any) -> str:
    """Twisted's combined log format, with URL signatures redacted."""
    referer = request.getHeader(b"referer") or b""
    if not (has_secret(request.uri) or (referer and has_secret(referer))):
        return http.combinedLogFormatter(timestamp, request)
    return http.combinedLogFormatter(timestamp, _Redacted(request))


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
        super().__init__(api.resource(), reactor=reactor, **kwargs)
        self._api = api
        self._metrics = api.metrics
        #: Given (request, route), logs the request instead of the access log.
        self._request_log = request_log
        self.header_timeout = header_timeout
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

    def log(self, request: Any) -> None:
        route = route_of(request.path)
        self._metrics.count_request(route, request.code)
        if self._request_log is None:
            super().log(request)
        else:
            self._request_log(request, route)


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
        if not request.path.startswith(b"/"):
            return "the request target must be a path"
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
