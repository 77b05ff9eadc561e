"""The HTTP API, compatible with the archiver service it replaces.

- ``GET /archiver/<source>/<repo>/<rev>?subdir=&suffix=&preferred_region=``:
  302 to a signed storage URL when stored, else 202 and a task.
- ``GET /archiver/status/<task_id>``: the task's state.
- ``GET /archiver/files/<region>/<key>?expires=&signature=``: objects of the
  local-files backend, behind URLs that archiverd signed.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, static
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import RequestRedirect

from archiverd.api.openapi import OPENAPI_PATH, openapi_document
from archiverd.errors import (
    BadRequest,
    Busy,
    Forbidden,
    NotFound,
    UpstreamRefused,
    UpstreamUnavailable,
)
from archiverd.keys import (
    MAX_NAME_LENGTH,
    ArchiveRequest,
    key_for_task_id,
    parse_key,
)
from archiverd.ops.health import Health, version_info
from archiverd.ops.logs import has_secret, redact
from archiverd.ops.metrics import Metrics
from archiverd.storage.files import FileStorage
from archiverd.storage.service import StorageService
from archiverd.tasks.redis_store import FleetUnavailable
from archiverd.tasks.service import SUCCESS_STATUS, State, TaskService
from archiverd.transfer.sources import Source
from archiverd.util.deferreds import Shared

UNKNOWN_STATUS = "no status available at this point."
#: Seconds a client is asked to wait when the task table is full.
RETRY_AFTER = 5
_HOST = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?\Z")
#: A task id longer than this names no archive (3 names, a rev, escapes).
MAX_TASK_ID = 8 * MAX_NAME_LENGTH


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


def _json(request: IRequest, body: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader("Content-Type", "application/json")
    return json.dumps(body).encode()


def _arg(request: IRequest, name: str, default: str = "") -> str:
    values = request.args.get(name.encode())
    if not values:
        return default
    try:
        value: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{name} is not valid UTF-8") from None
    if not value.isprintable():
        raise BadRequest(f"{name} contains control characters")
    return value


_ROUTES = {b"status": "status", b"files": "files", b"openapi.json": "openapi"}
_TOP = {b"__lbheartbeat__", b"__heartbeat__", b"__version__", b"metrics"}


def _route(path: bytes) -> str:
    """The route a request path belongs to, as a bounded metric label."""
    parts = path.split(b"/", 3)
    if len(parts) > 2 and parts[1] == b"archiver":
        return _ROUTES.get(parts[2], "archive")
    if len(parts) == 2 and parts[1] in _TOP:
        return parts[1].decode()
    return "other"


class ArchiverSite(Site):
    """The Site: counts every answer by route and status as it is logged
    (cheaper on the hit path than a Deferred per request)."""

    def __init__(
        self,
        api: ArchiverAPI,
        request_log: Callable[[Any, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(api.resource(), **kwargs)
        self._metrics = api.metrics
        #: Given (request, route), logs the request instead of the access log.
        self._request_log = request_log

    def log(self, request: Any) -> None:
        route = _route(request.path)
        self._metrics.count_request(route, request.code)
        if self._request_log is None:
            super().log(request)
        else:
            self._request_log(request, route)


class _Root(Resource):
    """Answers a URL that is not UTF-8 with a JSON 400 (Klein's is plain text)."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: Any) -> Any:
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return _json(request, {"error": "the URL is not valid UTF-8"}, 400)
        return self._inner.render(request)


class ArchiverAPI:
    """The Klein application; collaborators are passed in."""

    app = Klein()
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(
        self,
        sources: Mapping[str, Source],
        storage: StorageService,
        tasks: TaskService,
        clock: IReactorTime,
        *,
        signed_url_expiry: int = 300,
        public_url: str | None = None,
        files: FileStorage | None = None,
        health: Health | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics or Metrics()
        self.sources = sources
        self.storage = storage
        self.tasks = tasks
        self.clock = clock
        self.signed_url_expiry = signed_url_expiry
        self.public_url = public_url
        self.files = files
        #: Storage looks in progress, by key (see _look).
        self._looking: dict[str, Shared[tuple[float, list[str]]]] = {}
        #: The OpenAPI document, rendered on first request (see openapi.py).
        self._openapi: bytes | None = None

    def resource(self) -> Any:
        return _Root(self.app.resource())

    # -- helpers ---------------------------------------------------------

    def _base_url(self, request: IRequest) -> str:
        """Where clients reach archiverd: public_url, else the request's Host."""
        if self.public_url:
            return self.public_url
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader("host") or "").strip()
        if not _HOST.match(host):
            address = request.getHost()
            name = getattr(address, "host", "127.0.0.1")
            host = f"{name}:{getattr(address, 'port', 80)}"
        return f"{scheme}://{host}"

    async def _signed_url(self, request: IRequest, region: str, key: str) -> str:
        url = await self.storage.signed_url(region, key, self.signed_url_expiry)
        return self._absolute(request, url)

    def _absolute(self, request: IRequest, url: str) -> str:
        # The file backend signs URLs relative to archiverd itself.
        return self._base_url(request) + url if url.startswith("/") else url

    def _cached_urls(self, request: IRequest, key: str) -> dict[str, str] | None:
        """Every region's signed URL if all are cached, else None."""
        urls = {}
        for region in self.storage.regions:
            url = self.storage.cached_signed_url(region, key, self.signed_url_expiry)
            if url is None:
                return None
            urls[region] = self._absolute(request, url)
        return urls

    async def _signed_urls(self, request: IRequest, key: str) -> dict[str, str]:
        regions = self.storage.regions
        urls = await gatherResults(
            [
                Deferred.fromCoroutine(self._signed_url(request, region, key))
                for region in regions
            ],
            consumeErrors=True,
        )
        return dict(zip(regions, urls))

    async def _exists(self, region: str, key: str) -> bool:
        """Whether storage has the key; trouble counts as no (work starts,
        and fails with the cause, rather than the request failing)."""
        try:
            return await self.storage.exists(region, key)
        except Exception as e:
            self.log.warn(
                "cannot tell whether {region} has {key}: {error}",
                region=region,
                key=key,
                error=str(e),
            )
            return False

    def _look(self, key: str) -> Deferred[tuple[float, list[str]]]:
        """When storage was asked, and which regions hold the key.

        Concurrent requests for one key share one look (a thousand clients
        asking at once make one round of storage calls, not a thousand).
        """
        look = self._looking.get(key)
        if look is None:
            since = self.clock.seconds()

            async def looking() -> tuple[float, list[str]]:
                return since, await self._stored_in(key)

            look = Shared(Deferred.fromCoroutine(looking()))
            if not look.done:
                self._looking[key] = look
                look.wait().addBoth(lambda _: self._looking.pop(key, None))
        return look.wait()

    async def _stored_in(self, key: str) -> list[str]:
        regions = self.storage.regions
        found = await gatherResults(
            [Deferred.fromCoroutine(self._exists(r, key)) for r in regions]
        )
        return [region for region, yes in zip(regions, found) if yes]

    # -- routes ----------------------------------------------------------

    @app.route("/archiver/<source>/<path:repo>/", methods=["GET", "HEAD"])
    @app.route("/archiver/<source>/<path:repo>/<rev>", methods=["GET", "HEAD"])
    def archive(
        self, request: IRequest, source: str, repo: str, rev: str = ""
    ) -> bytes | Deferred[bytes]:
        """Redirect to the stored archive, or start fetching it (202).

        A hit whose answer is cached (the key known stored, a fresh signed
        URL) is answered here and now; anything else goes the async way.
        """
        upstream = self.sources.get(source)
        if upstream is None:
            raise NotFound(f"unknown source {source!r}")
        wanted = upstream.request(
            repo,
            rev,
            suffix=_arg(request, "suffix", "tar.gz"),
            subdir=_arg(request, "subdir"),
        )
        src_url = upstream.archive_url(wanted)  # refuses what escapes the template
        preferred = _arg(request, "preferred_region")
        regions = self.storage.regions
        region = preferred if preferred in regions else self.storage.default_region
        if not wanted.is_symbolic and self.storage.known(region, wanted.key):
            url = self.storage.cached_signed_url(
                region, wanted.key, self.signed_url_expiry
            )
            if url is not None:
                return self._redirect_to(request, self._absolute(request, url))
        return Deferred.fromCoroutine(
            self._archive(request, upstream, wanted, src_url, region)
        )

    async def _archive(
        self,
        request: IRequest,
        upstream: Source,
        wanted: ArchiveRequest,
        src_url: str,
        region: str,
    ) -> bytes:
        if wanted.is_symbolic:
            wanted = await upstream.resolve(wanted)
            src_url = upstream.archive_url(wanted)
        key = wanted.key

        running = self.tasks.active(wanted.task_id)
        if running is not None and region in running.regions:
            # Being fetched into this region right now: no storage call needed.
            return self._accepted(request, wanted.task_id)

        since, stored = await self._look(key)
        missing = [r for r in self.storage.regions if r not in stored]
        if region not in missing:
            return await self._redirect(request, region, key)
        task_id = await self.tasks.claim(
            wanted,
            src_url,
            missing,
            upstream.host,
            since,
            stored_in=lambda: self._stored_in(key),
        )
        return self._accepted(request, task_id)

    async def _redirect(self, request: IRequest, region: str, key: str) -> bytes:
        return self._redirect_to(request, await self._signed_url(request, region, key))

    def _redirect_to(self, request: IRequest, url: str) -> bytes:
        self.metrics.hits.inc()
        request.redirect(url.encode())
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        link = html.escape(url)
        return f'<p>The archive is at <a href="{link}">{link}</a>.</p>\n'.encode()

    def _accepted(self, request: IRequest, task_id: str) -> bytes:
        self.metrics.misses.inc()
        location = (
            f"{self._base_url(request)}/archiver/status/{quote(task_id, safe='@')}"
        )
        request.setHeader("Location", location)
        return _json(request, {"result": {}}, 202)

    @app.route("/archiver/status/<task_id>", methods=["GET", "HEAD"])
    def status(self, request: IRequest, task_id: str) -> bytes | Deferred[bytes]:
        """A task's state; s3_urls are signed at poll time (or reused while
        most of their validity remains), so they are never stale."""
        task = self.tasks.get(task_id)
        urls: dict[str, str] | None = {}
        if task is None:
            known = self._status_known_here(request, task_id)
            if known is not None:
                return known
        elif task.state is State.SUCCESS:
            urls = self._cached_urls(request, task.key)
        if task is None or urls is None:
            return Deferred.fromCoroutine(self._status(request, task_id))
        if task.done and task.rendered is not None and task.rendered[0] == urls:
            # A finished task's answer changes only with its URLs: render once.
            request.setHeader("Content-Type", "application/json")
            return task.rendered[1]
        result = task.describe(self.clock.seconds())
        result["s3_urls"] = urls
        body = _json(request, {"result": result})
        if task.done:
            task.rendered = (urls, body)
        return body

    def _status_known_here(self, request: IRequest, task_id: str) -> bytes | None:
        """Another daemon's task, answered now from what this one last read
        of it (and URLs it signed lately); None when that is not enough."""
        found = self.tasks.peek(task_id)
        if found is None:
            return None
        urls: dict[str, str] | None = {}
        if found["state"] == State.SUCCESS.value:
            urls = self._cached_urls(request, key_for_task_id(task_id))
            if urls is None:
                return None
        found["s3_urls"] = urls
        return _json(request, {"result": found})

    async def _status(self, request: IRequest, task_id: str) -> bytes:
        task = self.tasks.get(task_id)
        if task is None:
            result = await self._status_elsewhere(request, task_id)
        else:
            result = task.describe(self.clock.seconds())
            result["s3_urls"] = (
                await self._signed_urls(request, task.key)
                if task.state is State.SUCCESS
                else {}
            )
        return _json(request, {"result": result})

    async def _status_elsewhere(
        self, request: IRequest, task_id: str
    ) -> dict[str, Any]:
        """A task this daemon does not run: another daemon's (in a fleet), or
        one from before a restart (storage knows whether it succeeded)."""
        unavailable = None
        if len(task_id) <= MAX_TASK_ID:
            try:
                found = await self.tasks.lookup(task_id)
            except FleetUnavailable as e:
                found, unavailable = None, e
            if found is not None:
                found["s3_urls"] = (
                    await self._signed_urls(request, key_for_task_id(task_id))
                    if found["state"] == State.SUCCESS.value
                    else {}
                )
                return found
        result = await self._status_from_storage(request, task_id)
        if unavailable is not None and result["state"] != State.SUCCESS.value:
            raise Busy(f"cannot reach the other daemons' task records ({unavailable})")
        return result

    async def _status_from_storage(
        self, request: IRequest, task_id: str
    ) -> dict[str, Any]:
        """For a task this process does not know: stored means SUCCESS."""
        unknown = {
            "state": State.PENDING.value,
            "status": UNKNOWN_STATUS,
            "src_url": "",
            "s3_urls": {},
        }
        if len(task_id) > MAX_TASK_ID or not task_id.isprintable():
            return unknown
        try:
            key = key_for_task_id(task_id)
        except ValueError:
            return unknown
        named = parse_key(key)
        if named is None or named.source not in self.sources:
            return unknown  # names no archive: never sign URLs for it
        if set(await self._stored_in(key)) != set(self.storage.regions):
            return unknown
        return {
            "state": State.SUCCESS.value,
            "status": SUCCESS_STATUS,
            "src_url": "",
            "s3_urls": await self._signed_urls(request, key),
        }

    @app.route("/archiver/files/<region>/<path:key>", methods=["GET", "HEAD"])
    async def file(self, request: IRequest, region: str, key: str) -> Any:
        """An object of the local-files backend, with Range support."""
        if self.files is None:
            raise NotFound("no such file")
        expires = _arg(request, "expires")
        signature = _arg(request, "signature")
        if not self.files.verify(region, key, expires, signature):
            raise Forbidden("this link has expired or is not valid")
        stored = await self.storage.call(self.files.stat, region, key)
        if stored is None:
            raise NotFound("no such file")
        request.setHeader("Content-Disposition", stored.content_disposition)
        request.setHeader("Cache-Control", "private, max-age=3600, immutable")
        if stored.sha256:  # as S3 serves its object metadata
            request.setHeader("x-amz-meta-sha256", stored.sha256)
        resource = static.File(str(stored.path), defaultType=stored.content_type)
        resource.type = stored.content_type  # type: ignore[assignment]
        resource.encoding = None  # type: ignore[assignment]
        # The key spans several path segments; the file is this leaf itself.
        request.prepath.extend(request.postpath)
        request.postpath = []
        return resource

    # -- Dockerflow ------------------------------------------------------

    @app.route("/__lbheartbeat__", methods=["GET", "HEAD"])
    def lbheartbeat(self, request: IRequest) -> bytes:
        """200 whenever the process serves: for load balancers."""
        return _json(request, {"status": "ok"})

    @app.route("/__heartbeat__", methods=["GET", "HEAD"])
    async def heartbeat(self, request: IRequest) -> bytes:
        """Storage in every region and every upstream, checked; 500 if any fails."""
        if self.health is None:
            raise NotFound("no health checks configured")
        healthy, body = await self.health.heartbeat()
        return _json(request, body, 200 if healthy else 500)

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        """Prometheus' text format.

        Rendered here rather than through prometheus-client's Twisted
        resource, which is a WSGI app on the global reactor's thread pool:
        this is a few kilobytes of CPU work, and the API touches no globals.
        """
        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        return generate_latest(self.metrics.registry)

    @app.route(OPENAPI_PATH, methods=["GET", "HEAD"])
    def openapi(self, request: IRequest) -> bytes:
        """This API's OpenAPI 3.1 description, for this configuration."""
        if self._openapi is None:
            document = openapi_document(
                self.sources, self.storage.regions, self.public_url
            )
            self._openapi = json.dumps(document, indent=1).encode()
        request.setHeader("Content-Type", "application/json")
        return self._openapi

    @app.route("/__version__", methods=["GET", "HEAD"])
    def version(self, request: IRequest) -> bytes:
        return _json(request, version_info())

    # -- errors ----------------------------------------------------------

    @app.handle_errors(BadRequest)
    def bad_request(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": str(failure.value)}, 400)

    @app.handle_errors(Forbidden)
    def forbidden(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": str(failure.value)}, 403)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": str(failure.value)}, 404)

    @app.handle_errors(Busy)
    def busy(self, request: IRequest, failure: Failure) -> bytes:
        request.setHeader("Retry-After", str(RETRY_AFTER))
        return _json(request, {"error": str(failure.value)}, 503)

    @app.handle_errors(UpstreamRefused)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": str(failure.value)}, 404)

    @app.handle_errors(UpstreamUnavailable)
    def unavailable(self, request: IRequest, failure: Failure) -> bytes:
        self.log.warn("{error}", error=str(failure.value))
        return _json(request, {"error": str(failure.value)}, 502)

    @app.handle_errors(RouteNotFound)
    def no_route(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": "not found"}, 404)

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error: HTTPException = failure.value
        # Keep what the status needs: Allow on a 405, Location on a redirect.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                request.setHeader(name, value)
        if isinstance(error, RequestRedirect):
            request.setHeader("Location", error.new_url)
        return _json(
            request, {"error": error.description or error.name}, error.code or 500
        )

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("answering {uri}", failure, uri=request.uri)
        return _json(request, {"error": "internal error; see archiverd's log"}, 500)
