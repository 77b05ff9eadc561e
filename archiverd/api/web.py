"""The HTTP API, compatible with the archiver service it replaces.

Routes parse, call one domain object (:class:`~archiverd.archives.Archives`,
:class:`~archiverd.api.files.SignedFiles`,
:class:`~archiverd.ops.health.Health`), and render what it returns:

- ``GET /archiver/<source>/<repo>/<rev>?subdir=&suffix=&preferred_region=``:
  302 to a signed storage URL when stored, else 202 and a task.
- ``GET /archiver/status/<task_id>``: the task's state.
- ``GET /archiver/files/<region>/<key>?expires=&signature=``: objects of the
  local-files backend, behind URLs that archiverd signed.
- ``GET /archiver/openapi.json``: this API's OpenAPI 3.1 description.
- ``GET /`` (and ``/archiver/``): the page for people
  (:mod:`archiverd.api.page`); a status or archive URL whose Accept prefers
  ``text/html`` gets its task's page instead of JSON (``Vary: Accept``).
- ``POST /archiver/hooks/<source>``: push webhooks (pre-warm), 202 at once.
- ``GET /__lbheartbeat__``, ``/__heartbeat__``, ``/__version__``: Dockerflow.
- ``GET /metrics``: Prometheus' text format.

Domain errors map to HTTP answers in one place, at the end of the class.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import BaseConverter, RequestRedirect

from archiverd import wire
from archiverd.api import page
from archiverd.api.clients import LegacyClients, preferred_wait
from archiverd.api.dashboard import Dashboard
from archiverd.api.files import SignedFiles
from archiverd.api.hosts import HostCheck
from archiverd.api.hot import HotPath
from archiverd.api.openapi import OPENAPI_PATH, openapi_document
from archiverd.api.render import arg, json_body
from archiverd.api.site import Root
from archiverd.archives import Accepted, Archives, Redirect, Status
from archiverd.errors import (
    BadRequest,
    Busy,
    Forbidden,
    NotFound,
    UpstreamRefused,
    UpstreamUnavailable,
)
from archiverd.ops.health import Health, version_info
from archiverd.ops.metrics import Metrics
from archiverd.prewarm.hooks import HookRefused, Hooks

#: Refusals of a request, by kind, and their status.
_REFUSALS: dict[type[Exception], int] = {
    BadRequest: 400,
    Forbidden: 403,
    HookRefused: 403,
    NotFound: 404,
    UpstreamRefused: 404,
}


class SourceName(BaseConverter):
    """A source's name in an archive path: any segment but the fixed routes'
    own (``hooks``), so that ``GET /archiver/hooks/x`` is a 405 (hooks are
    POSTed) rather than a redirect to an archive path."""

    regex = r"(?!hooks(?![^/]))[^/]+"


#: Redirects remembered (cleared when full).
REDIRECTS_REMEMBERED = 4096


class ArchiverAPI:
    """The Klein application; collaborators are passed in."""

    app = Klein()
    app.url_map.merge_slashes = False
    app.url_map.converters["source"] = SourceName
    log = Logger()

    def __init__(
        self,
        archives: Archives,
        *,
        public_url: str | None = None,
        hosts: Iterable[str] = (),
        files: SignedFiles | None = None,
        health: Health | None = None,
        metrics: Metrics | None = None,
        hold: float = 0.0,
        max_wait: float = 60.0,
        legacy_clients: Iterable[str] = (),
        dashboard: Dashboard | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.archives = archives
        #: Push webhooks of sources that pre-warm (None: no source takes any).
        self.hooks = hooks
        #: Seconds a request that starts or joins a task is held for it.
        self.hold = hold
        #: The longest ``Prefer: wait`` honoured.
        self.max_wait = max_wait
        #: Clients told of a FAILURE as the old service told them.
        self.legacy = LegacyClients(legacy_clients)
        self.public_url = public_url
        #: Which Host headers are served (all, with public_url; else only
        #: this server's own names and ``hosts``).
        self.hosts = HostCheck(public_url, hosts)
        self.files = files
        self.health = health
        self.metrics = metrics or Metrics()
        #: What the page for people shows.
        self.dashboard = dashboard or Dashboard(archives, self.metrics)
        #: The OpenAPI document, rendered on first request (see openapi.py).
        self._openapi: bytes | None = None
        #: Location and page of each redirect lately made, by URL.
        self._redirects: dict[str, tuple[bytes, bytes]] = {}

    def resource(self) -> Any:
        """The API's root: hits and polls answered ahead of Klein
        (:mod:`archiverd.api.hot`), everything else routed by Klein."""
        return Root(HotPath(self, self.app.resource()), self.hosts)

    # -- rendering ---------------------------------------------------------

    def _base_url(self, request: IRequest) -> str:
        """Where clients reach archiverd: public_url, else the request's Host
        (which :class:`~archiverd.api.site.Root` has checked names us)."""
        return self.hosts.base_url(request)

    def _absolute(self, request: IRequest, url: str) -> str:
        return _joined(self._base_url(request), url)

    def _located(
        self, found: Redirect | Accepted, request: IRequest, wait: float | None = None
    ) -> bytes:
        if isinstance(found, Redirect):
            if wait:
                request.setHeader("Preference-Applied", f"wait={wait:g}")
            if found.sha256:
                request.setHeader(wire.SHA256_HEADER, found.sha256)
            return self._redirect(request, found.url)
        self._applied(request, wait, found.task_id)
        self.metrics.misses.inc()
        task_id = quote(found.task_id, safe="@")
        request.setHeader(
            "Location", f"{self._base_url(request)}/archiver/status/{task_id}"
        )
        return json_body(request, {"result": {}}, 202)

    def _redirect(self, request: IRequest, url: str) -> bytes:
        self.metrics.hits.inc()
        url = self._absolute(request, url)
        # A URL is handed out many times (until signed again): its Location
        # and page are made once.
        made = self._redirects.get(url)
        if made is None:
            if len(self._redirects) >= REDIRECTS_REMEMBERED:
                self._redirects.clear()
            link = html.escape(url)
            page = f'<p>The archive is at <a href="{link}">{link}</a>.</p>\n'
            made = self._redirects[url] = (url.encode(), page.encode())
        request.redirect(made[0])
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return made[1]

    def _wait(self, request: IRequest) -> float | None:
        """The seconds ``Prefer: wait=N`` asks for, capped by ``max_wait``,
        or None when it is not asked for."""
        wanted = preferred_wait(request)
        return None if wanted is None else min(wanted, self.max_wait)

    def _applied(self, request: IRequest, wait: float | None, task_id: str) -> None:
        """Say ``Preference-Applied`` when a wait was honoured: the task is
        this daemon's (another daemon's task, in a fleet, or an unknown one
        is answered at once, and a client must not take that answer for a
        held one and ask again without a pause)."""
        if wait and self.archives.tasks.get(task_id) is not None:
            request.setHeader("Preference-Applied", f"wait={wait:g}")

    def _legacy_status(self, status: Status, request: IRequest) -> bytes | None:
        """A FAILURE as an old client that stops only on SUCCESS must see it:
        permanent, the old service's SUCCESS with no ``s3_urls`` (it stops
        at once, with the cause in ``status``); transient, a 503, on which
        it asks for the archive again after its sleep. None otherwise."""
        if request not in self.legacy:
            return None
        result = status.result
        if not result.get("permanent"):
            request.setHeader("Retry-After", "10")
            return json_body(request, {"error": result["status"]}, 503)
        shown = dict(result, state=wire.SUCCESS, s3_urls={})
        return json_body(request, {"result": shown})

    def _status(self, status: Status, request: IRequest) -> bytes:
        task = status.task
        signed = status.urls
        if task is not None and task.rendered is not None:
            # A success's answer changes only with its URLs: the same dict
            # while they stay fresh (no comparing them string by string),
            # and for URLs relative to archiverd (the file backend's) with
            # the base URL they were made absolute with.
            seen, seen_base, body = task.rendered
            if (seen is signed or seen == signed) and (
                not seen_base or seen_base == self._base_url(request)
            ):
                request.setHeader(b"Content-Type", b"application/json")
                return body
        state = task.state.value if task is not None else status.result["state"]
        if state == wire.FAILURE:
            legacy = self._legacy_status(status, request)
            if legacy is not None:
                return legacy
        relative = any(u.startswith("/") for u in signed.values())
        base = self._base_url(request) if relative else ""
        result = dict(status.result)
        result["s3_urls"] = {r: _joined(base, u) for r, u in signed.items()}
        body = json_body(request, {"result": result})
        if task is not None and state == wire.SUCCESS:
            task.rendered = (signed, base, body)
        return body

    # -- answers that need no I/O (the hot path's, archiverd/api/hot.py) -----

    def archive_now(
        self, request: IRequest, source: str, repo: str, rev: str
    ) -> bytes | None:
        """:meth:`archive`'s JSON-side answer when it is a hit answered from
        the caches; else None, with nothing set on ``request`` (the route
        answers: a miss, a task to hold for, an error)."""
        try:
            found = self.archives.stored(
                source,
                repo,
                rev,
                suffix=arg(request, "suffix", "tar.gz"),
                subdir=arg(request, "subdir"),
                preferred_region=arg(request, "preferred_region"),
            )
        except BadRequest:
            return None
        if found is None:
            return None
        request.setHeader(b"Vary", b"Accept")
        return self._located(found, request, self._wait(request))

    def status_hold(self, request: IRequest) -> float:
        """The seconds :meth:`status` holds this poll for an unfinished task
        of this daemon's: ``Prefer: wait`` (capped), else ``tasks.hold`` for
        an old client, else none."""
        return self._poll_hold(request, self._wait(request))

    def _poll_hold(self, request: IRequest, wait: float | None) -> float:
        """:meth:`status_hold` given the request's ``Prefer: wait``. An old
        client sleeps 10 s after any answer but SUCCESS: its poll is held as
        its first request was."""
        hold = self.hold if wait is None and request in self.legacy else wait
        return hold or 0.0

    def status_now(
        self, request: IRequest, task_id: str, waited: bool = False
    ) -> bytes | None:
        """:meth:`status`'s JSON-side answer when it needs no I/O and no
        waiting (or, ``waited``, once its hold is over); else None, with
        nothing set on ``request``."""
        wait = self._wait(request)
        hold = 0.0 if waited else self._poll_hold(request, wait)
        status = self.archives.status_now(task_id, hold)
        if status is None:
            return None
        request.setHeader(b"Vary", b"Accept")
        self._applied(request, wait, task_id)
        return self._status(status, request)

    # -- routes ----------------------------------------------------------

    @app.route("/archiver/<source:source>/<path:repo>/", methods=["GET", "HEAD"])
    @app.route("/archiver/<source:source>/<path:repo>/<rev>", methods=["GET", "HEAD"])
    def archive(
        self, request: IRequest, source: str, repo: str, rev: str = ""
    ) -> bytes | Deferred[bytes]:
        """Redirect to the stored archive, or start fetching it (202)."""
        request.setHeader("Vary", "Accept")
        if page.prefers_html(request.getHeader(b"accept")):
            return Deferred.fromCoroutine(
                self._archive_page(request, source, repo, rev)
            )
        wait = self._wait(request)
        found = self.archives.locate(
            source,
            repo,
            rev,
            suffix=arg(request, "suffix", "tar.gz"),
            subdir=arg(request, "subdir"),
            preferred_region=arg(request, "preferred_region"),
            hold=self.hold if wait is None else wait,
            poll_refusals=request in self.legacy,
        )
        if isinstance(found, Deferred):
            return found.addCallback(self._located, request, wait)
        return self._located(found, request, wait)

    @app.route("/archiver/status/<task_id>", methods=["GET", "HEAD"])
    def status(self, request: IRequest, task_id: str) -> bytes | Deferred[bytes]:
        """A task's state, with URLs signed at poll time."""
        request.setHeader("Vary", "Accept")
        if page.prefers_html(request.getHeader(b"accept")):
            return Deferred.fromCoroutine(self._status_page(request, task_id))
        wait = self._wait(request)
        self._applied(request, wait, task_id)
        status = self.archives.status(task_id, self._poll_hold(request, wait))
        if isinstance(status, Deferred):
            return status.addCallback(self._status, request)
        return self._status(status, request)

    # -- the page for people ---------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    @app.route("/archiver/", methods=["GET", "HEAD"])
    async def home(self, request: IRequest) -> bytes:
        """What this daemon is and does: its tasks, storage, hits and misses."""
        overview = await self.dashboard.overview()
        return page.send(
            request, page.dashboard_page(overview, self._base_url(request))
        )

    async def _archive_page(
        self, request: IRequest, source: str, repo: str, rev: str
    ) -> bytes:
        view = await self.dashboard.archive(
            source,
            repo,
            rev,
            suffix=arg(request, "suffix", "tar.gz"),
            subdir=arg(request, "subdir"),
            preferred_region=arg(request, "preferred_region"),
        )
        return page.send(request, page.task_page(view, self._base_url(request)))

    async def _status_page(self, request: IRequest, task_id: str) -> bytes:
        view = await self.dashboard.task(task_id)
        return page.send(request, page.task_page(view, self._base_url(request)))

    @app.route("/archiver/files/<region>/<path:key>", methods=["GET", "HEAD"])
    async def file(self, request: IRequest, region: str, key: str) -> Any:
        """An object of the local-files backend, with Range support."""
        if self.files is None:
            raise NotFound("no such file")
        return await self.files.serve(request, region, key)

    @app.route("/archiver/hooks/<source>", methods=["POST"])
    def hook(self, request: IRequest, source: str) -> bytes:
        """A push webhook: checked, its pre-warm started, answered at once."""
        if self.hooks is None:
            raise NotFound("no source takes webhooks")
        # The channel caps request bodies, so this read is bounded.
        body = request.content.read() if request.content is not None else b""

        def header(name: str) -> str | None:
            value = request.getHeader(name)
            return None if value is None else str(value)

        started = self.hooks.receive(source, header, body)
        return json_body(request, {"pushes": started}, 202)

    @app.route("/__lbheartbeat__", methods=["GET", "HEAD"])
    def lbheartbeat(self, request: IRequest) -> bytes:
        """200 whenever the process serves: for load balancers."""
        return json_body(request, {"status": "ok"})

    @app.route("/__heartbeat__", methods=["GET", "HEAD"])
    async def heartbeat(self, request: IRequest) -> bytes:
        """Storage in every region and every upstream, checked; 500 if any fails."""
        if self.health is None:
            raise NotFound("no health checks configured")
        healthy, body = await self.health.heartbeat()
        return json_body(request, body, 200 if healthy else 500)

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
            archives = self.archives
            document = openapi_document(
                archives.sources, archives.regions, self.public_url
            )
            self._openapi = json.dumps(document, indent=1).encode()
        request.setHeader("Content-Type", "application/json")
        return self._openapi

    @app.route("/__version__", methods=["GET", "HEAD"])
    def version(self, request: IRequest) -> bytes:
        return json_body(request, version_info())

    # -- errors ----------------------------------------------------------

    @app.handle_errors(*_REFUSALS)
    def refusal(self, request: IRequest, failure: Failure) -> bytes:
        """A request refused for what it asks: its status by the error's
        kind (a refused webhook says its own)."""
        error = failure.value
        if isinstance(error, HookRefused):
            code = error.code
        else:
            code = next(c for kind, c in _REFUSALS.items() if isinstance(error, kind))
        return json_body(request, {"error": str(error)}, code)

    @app.handle_errors(Busy)
    def busy(self, request: IRequest, failure: Failure) -> bytes:
        request.setHeader("Retry-After", str(wire.RETRY_AFTER))
        return json_body(request, {"error": str(failure.value)}, 503)

    @app.handle_errors(UpstreamUnavailable)
    def unavailable(self, request: IRequest, failure: Failure) -> bytes:
        self.log.warn("{error}", error=str(failure.value))
        return json_body(request, {"error": str(failure.value)}, 502)

    @app.handle_errors(RouteNotFound)
    def no_route(self, request: IRequest, failure: Failure) -> bytes:
        return json_body(request, {"error": "not found"}, 404)

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error: HTTPException = failure.value
        # Keep what the status needs: Allow on a 405, Location on a redirect.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                request.setHeader(name, value)
        description = error.description or error.name
        if isinstance(error, RequestRedirect):
            # werkzeug builds the URL from the Host header: keep only its path.
            target = urlsplit(error.new_url)
            location = self._base_url(request) + target.path
            location += f"?{target.query}" if target.query else ""
            request.setHeader("Location", location)
            description = f"see {location}"
        return json_body(request, {"error": description}, error.code or 500)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("answering {uri}", failure, uri=request.uri)
        return json_body(request, {"error": "internal error; see archiverd's log"}, 500)


def _joined(base: str, url: str) -> str:
    """``url`` made absolute: the file backend signs URLs relative to
    archiverd itself (``base``, where clients reach it)."""
    return base + url if url.startswith("/") else url
