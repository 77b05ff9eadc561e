"""Upstream VCS hosts: archive URLs, symbolic rev resolution, error messages."""

from __future__ import annotations

import functools
import html
import json
import random
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from archiverd import wire
from archiverd.config import SourceConfig
from archiverd.errors import (
    BadRequest,
    Forbidden,
    UpstreamRefused,
    UpstreamUnavailable,
)
from archiverd.keys import FULL_REV_LENGTH, ArchiveRequest, is_changeset_id
from archiverd.ops.metrics import Metrics
from archiverd.transfer.client import (
    BodyBroken,
    BodyTimeout,
    describe_reason,
    read_limited,
)
from archiverd.transfer.credentials import Credentials
from archiverd.transfer.retries import (
    Retryable,
    connection_cause,
    retry_status,
    unreachable,
)
from archiverd.util.backoff import Backoff
from archiverd.util.deferreds import SingleFlight

#: Upstream answers that mean "this archive does not exist": never retried.
REFUSALS = (403, 404, 410)
REDIRECTS = wire.REDIRECTS
MAX_REDIRECTS = 5
ERROR_BODY_LIMIT = 64 * 1024
JSON_LIMIT = 1024 * 1024

_HGWEB_ERROR = re.compile(
    rb"An error occurred while processing your request:\s*</p>\s*<p>(.*?)</p>",
    re.DOTALL,
)
_TAGS = re.compile(rb"<(script|style)\b.*?</\1>|<[^>]*>", re.DOTALL | re.IGNORECASE)


def error_message(body: bytes, limit: int = 300) -> str:
    """Upstream's own words from an error page, on one short line."""
    match = _HGWEB_ERROR.search(body)
    if match:
        text = match.group(1)
    elif b"<" in body[:512]:
        text = _TAGS.sub(b" ", body)
    else:
        text = body
    words = html.unescape(text.decode("utf-8", "replace")).split()
    line = " ".join(words)
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Source:
    """One configured upstream, e.g. hg.mozilla.org's hgweb."""

    log = Logger()

    def __init__(
        self,
        config: SourceConfig,
        client: Any,
        clock: IReactorTime,
        jitter: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.config = config
        self._clock = clock
        self._jitter = jitter
        self.name = config.name
        self.host = config.host
        self._client = client
        #: URL templates without userinfo; headers that authenticate.
        self.credentials = Credentials.of(config)
        self._resolving: SingleFlight[tuple[str, str], str] = SingleFlight()
        self._archive_urls: dict[ArchiveRequest, str] = {}
        self._shown_urls: dict[ArchiveRequest, str] = {}
        self._template_kind = config.kind == "template"
        self._serves_subdirs = "{subdir}" in config.url_template
        self._allowed = repo_matcher(config.repos)

    def request(
        self, repo: str, rev: str, suffix: str = "tar.gz", subdir: str = ""
    ) -> ArchiveRequest:
        """Validate a request for this source (400 or 403 when refused).

        hgweb sources resolve symbolic revs. Template sources take full
        40-digit commit ids only, unless
        ``allow_symbolic`` lets names through (cached under the name).
        """
        wanted = ArchiveRequest.parse(self.name, repo, rev, suffix, subdir)
        if self._allowed is not None and not self._allowed(wanted.repo):
            raise Forbidden(f"source {self.name!r} does not serve repo {repo!r}")
        if self._template_kind:
            if wanted.subdir and not self._serves_subdirs:
                raise BadRequest(f"source {self.name!r} does not serve subdirectories")
            full = len(rev) == FULL_REV_LENGTH and is_changeset_id(rev)
            if not full and not self.config.allow_symbolic:
                raise BadRequest(
                    f"source {self.name!r} needs a full 40-digit commit id, not "
                    f"{rev!r} (anything else may move, and would be served stale)"
                )
        return wanted

    @staticmethod
    @functools.cache
    def _origin_of(template: str) -> tuple[str, str]:
        return _origin(template.split("{", 1)[0] + "x")

    def _url(self, template: str, request: ArchiveRequest) -> str:
        """The template filled in; it must keep the template's scheme and host."""
        url = template.format(
            repo=quote(request.repo, safe="/"),
            rev=quote(request.rev, safe=""),
            suffix=quote(request.suffix, safe="."),
            subdir=quote(request.subdir, safe="/"),
        )
        if _origin(url) != self._origin_of(template):
            raise BadRequest("request does not fit the source's URL template")
        return url

    def archive_url(self, request: ArchiveRequest) -> str:
        """Where upstream serves this archive (remembered: hits ask often)."""
        url = self._archive_urls.get(request)
        if url is None:
            url = self._url(self.credentials.url_template, request)
            if len(self._archive_urls) >= 10_000:
                self._archive_urls.clear()
            self._archive_urls[request] = url
        return url

    def shown_url(self, request: ArchiveRequest) -> str:
        """:meth:`archive_url` as statuses and logs show it: no credentials."""
        url = self._shown_urls.get(request)
        if url is None:
            url = self.credentials.shown(self.archive_url(request))
            if len(self._shown_urls) >= 10_000:
                self._shown_urls.clear()
            self._shown_urls[request] = url
        return url

    def shown(self, url: str) -> str:
        """Any URL of this source's as it may be shown: no credentials."""
        return self.credentials.shown(url)

    def rev_url(self, request: ArchiveRequest) -> str:
        """Where upstream tells which changeset a rev names (hgweb's json-rev)."""
        return self._url(self.credentials.rev_url_template, request)

    async def get(
        self,
        url: str,
        on_retry: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """GET from upstream: the first answer that is neither a 5xx nor a redirect.

        Connection failures, resets before the headers and 5xx answers are
        retried ``retries`` times with jittered exponential backoff; each
        retry is counted by cause and told to ``on_retry`` as a status
        (``Retrying: cannot reach … ; attempt 2 of 4, next in 5 s``).
        Redirects are followed only within the same scheme and host, so
        archiverd can never be steered to fetch from elsewhere. A response
        that does not come within ``headers_timeout`` is not retried.
        """
        backoff = Backoff(self.config.retry_backoff, jitter=self._jitter)
        attempt = 0
        while True:
            try:
                return await self._get_following(url, **kwargs)
            except Retryable as e:
                if attempt >= self.config.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise UpstreamUnavailable(f"{e}{tries}") from None
                delay = backoff.next()
                self.metrics.upstream_retries.labels(self.name, e.cause).inc()
                self.log.info(
                    "{error}; retrying in {delay:.2f}s", error=str(e), delay=delay
                )
                if on_retry is not None:
                    attempts = self.config.retries + 1
                    on_retry(retry_status(e.short, attempt + 2, attempts, delay))
                await deferLater(self._clock, delay, lambda: None)
                attempt += 1

    async def _get_following(self, url: str, **kwargs: Any) -> Any:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._get_once(url, **kwargs)
            if response.code in REDIRECTS:
                location = response.headers.getRawHeaders("location", [""])[0]
                await self.drop(response)
                target = urljoin(url, location)
                if _origin(target) != _origin(url):
                    raise UpstreamUnavailable(
                        f"{self.host} redirected {self.shown(url)} to another "
                        "host: not followed"
                    )
                url = target
                continue
            if response.code >= 500:
                await self.drop(response)
                raise Retryable(
                    f"{self.host} answered {response.code} for {self.shown(url)}",
                    "5xx",
                    f"{self.host} answered {response.code}",
                )
            return response
        raise UpstreamUnavailable(
            f"{self.host}: too many redirects for {self.shown(url)}"
        )

    async def _get_once(
        self, url: str, headers: dict[str, list[str]] | None = None
    ) -> Any:
        timeout = self.config.headers_timeout
        d = self._client.get(
            url,
            headers=self.credentials.with_headers(headers),
            unbuffered=True,
            allow_redirects=False,
        )
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._clock.callLater(timeout, expire)
        try:
            return await d
        except Exception as e:
            if timed_out:
                raise UpstreamUnavailable(
                    f"no answer from {self.host} within {timeout:g}s "
                    f"(headers_timeout) for {self.shown(url)}"
                ) from None
            if _cancelled(e):
                raise CancelledError() from e  # the task is being stopped
            cause = connection_cause(e)
            raise Retryable(
                f"cannot reach {self.host} for {self.shown(url)}: "
                + self.shown(_describe(e)),
                cause,
                unreachable(self.host, cause),
            ) from e
        finally:
            if timer.active():
                timer.cancel()

    async def drop(self, response: Any) -> None:
        """Drop a body unread (it gets ``idle_timeout`` to go away)."""
        seconds = self.config.idle_timeout
        await read_limited(response, 0, clock=self._clock, idle=seconds, total=seconds)

    async def check(self, timeout: float) -> None:
        """Raise unless upstream's host answers (any HTTP answer will do)
        within ``timeout``, its body dropped included."""
        d = Deferred.fromCoroutine(self._ask_host())
        d.addTimeout(timeout, self._clock)
        await d

    async def _ask_host(self) -> None:
        scheme, netloc = self._origin_of(self.credentials.url_template)
        response = await self._client.get(
            f"{scheme}://{netloc}/",
            headers=self.credentials.with_headers(None),
            unbuffered=True,
            allow_redirects=False,
        )
        await read_limited(response, 0)

    async def refusal(self, response: Any, url: str) -> UpstreamRefused:
        """The error to report for a 403/404/410 answer, quoting upstream.

        Its page gets ``idle_timeout`` seconds in all (a page needs no
        more); one that stalls is quoted as far as it came.
        """
        seconds = self.config.idle_timeout
        try:
            body = await read_limited(
                response,
                ERROR_BODY_LIMIT,
                clock=self._clock,
                idle=seconds,
                total=seconds,
            )
        except BodyTimeout as e:
            body = e.partial
        except CancelledError:
            raise
        except Exception as e:
            body = getattr(e, "partial", b"")
        return UpstreamRefused(
            self.host, response.code, self.shown(url), self.shown(error_message(body))
        )

    async def confirm(self, request: ArchiveRequest) -> None:
        """Raise unless ``request``'s name still names the changeset it was
        pinned to (a fresh lookup, shared with no earlier one).

        An archive asked for by name is fetched by that name, so that it
        holds hgweb's folder for it; this lookup, made once upstream has
        answered the archive's URL (and so resolved the name itself), shows
        that the name did not move in between.
        """
        if not request.node:
            return
        node = await self._lookup(request)
        if node[: len(request.node)] != request.node:
            raise UpstreamUnavailable(
                f"{request.rev} of {request.repo} moved from {request.node} to "
                f"{node[: len(request.node)]} while its archive was fetched; ask again"
            )

    async def resolve(self, request: ArchiveRequest) -> ArchiveRequest:
        """Pin a symbolic rev (tag, bookmark, branch) to its changeset.

        Changeset ids are returned as they are. Anything else is asked of
        upstream every time (concurrent asks for one name share one lookup),
        so a moving name is never served stale.
        """
        if not request.is_symbolic or self._template_kind:
            return request  # (a template source's names are taken as they are)
        name = (request.repo, request.rev)
        node = await self._resolving.run(name, lambda: self._lookup(request))
        return request.with_rev(node)

    async def _lookup(self, request: ArchiveRequest) -> str:
        """The changeset upstream says ``request.rev`` names, within
        ``total_timeout`` in all (retries included) and ``idle_timeout``
        between the bytes of its answer: every request for the name waits on
        this one lookup."""
        url = self.rev_url(request)
        limit = self.config.total_timeout
        d = Deferred.fromCoroutine(self._ask_node(request, url))
        d.addTimeout(limit, self._clock)
        try:
            return await d
        except defer.TimeoutError:
            raise UpstreamUnavailable(
                f"resolving {request.rev} of {request.repo} at {self.shown(url)} "
                f"took longer than {limit:g}s (total_timeout)"
            ) from None

    async def _ask_node(self, request: ArchiveRequest, url: str) -> str:
        response = await self.get(url, headers={"Accept": ["application/json"]})
        if response.code in REFUSALS:
            raise await self.refusal(response, url)
        if response.code != 200:
            await self.drop(response)
            raise UpstreamUnavailable(
                f"{self.host} answered {response.code} for {self.shown(url)}"
            )
        body = await self._read_answer(response, url)
        try:
            node = json.loads(body)["node"]
        except (ValueError, KeyError, TypeError):
            node = None
        if not isinstance(node, str) or not is_changeset_id(node):
            raise UpstreamUnavailable(
                f"{self.host} gave no changeset for {self.shown(url)}"
            )
        self.log.debug(
            "{rev} of {repo} is {node}", rev=request.rev, repo=request.repo, node=node
        )
        return node

    async def _read_answer(self, response: Any, url: str) -> bytes:
        """A short body (JSON), or UpstreamUnavailable saying why not."""
        idle = self.config.idle_timeout
        try:
            return await read_limited(
                response, JSON_LIMIT, clock=self._clock, idle=idle
            )
        except BodyTimeout as e:
            raise UpstreamUnavailable(
                f"no bytes from {self.host} for {idle:g}s (idle_timeout) after "
                f"{len(e.partial)} bytes of {self.shown(url)}"
            ) from None
        except BodyBroken as e:
            raise UpstreamUnavailable(
                f"{self.host} broke off after {len(e.partial)} bytes of "
                f"{self.shown(url)}: {describe_reason(e.reason)}"
            ) from None


def repo_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool] | None:
    """A test for repos matching any pattern, or None when all are allowed.

    ``*`` matches within one path segment, ``**`` any number of whole
    segments: ``projects/*`` matches ``projects/ash``, not ``projects/a/b``;
    ``users/**`` matches everything under ``users/``.
    """
    if not patterns:
        return None
    alternatives = []
    for pattern in patterns:
        parts = []
        for segment in pattern.split("/"):
            if segment == "**":
                parts.append(".+")
            else:
                parts.append("[^/]*".join(re.escape(p) for p in segment.split("*")))
        alternatives.append("/".join(parts))
    regex = re.compile("(?:" + "|".join(alternatives) + r")\Z")
    return lambda repo: regex.match(repo) is not None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _cancelled(e: BaseException) -> bool:
    """True when a request failed because it was cancelled."""
    if isinstance(e, CancelledError | ConnectingCancelledError):
        return True
    return any(r.check(CancelledError) for r in getattr(e, "reasons", ()) or ())


def _describe(e: BaseException) -> str:
    """A one-line reason for a connection failure."""
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(str(r.value) for r in reasons)
    return str(e) or type(e).__name__
