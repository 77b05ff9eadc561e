"""The Site that serves the API: request counting, logging, and a root that
answers URLs that are not UTF-8."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from archiverd.api.render import json_body
from archiverd.ops.logs import has_secret, redact

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
    (cheaper on the hit path than a Deferred per request).

    ``reactor`` is passed in, as everywhere in archiverd: only ``tap.py``
    touches the global one.
    """

    def __init__(
        self,
        api: ArchiverAPI,
        *,
        reactor: Any,
        request_log: Callable[[Any, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(api.resource(), reactor=reactor, **kwargs)
        self._metrics = api.metrics
        #: Given (request, route), logs the request instead of the access log.
        self._request_log = request_log

    def log(self, request: Any) -> None:
        route = route_of(request.path)
        self._metrics.count_request(route, request.code)
        if self._request_log is None:
            super().log(request)
        else:
            self._request_log(request, route)


class Root(Resource):
    """Answers a URL that is not UTF-8 with a JSON 400 (Klein's is plain text)."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: Any) -> Any:
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return json_body(request, {"error": "the URL is not valid UTF-8"}, 400)
        return self._inner.render(request)
