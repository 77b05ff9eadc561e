"""What the API answers, decided without HTTP: where a client should go for
an archive, and what a task id's status is.

:class:`Archives` is the one domain object the routes call. Its answers are
plain values: :class:`Redirect` (the archive is stored: go to this signed
URL), :class:`Accepted` (a task is storing it) and :class:`Status`. Signed
URLs may be relative to archiverd itself (the file backend's); the web layer
makes them absolute for the request's host.

Answers that need no I/O (a stored archive whose signed URL is fresh, a task
this daemon runs) come back at once, not as a Deferred: that is the hit path,
and it stays cheaper than the framework it runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from archiverd import wire
from archiverd.errors import (
    BadRequest,
    Busy,
    FleetUnavailable,
    Forbidden,
    NotFound,
    UpstreamRefused,
)
from archiverd.fresh_urls import FreshUrls
from archiverd.keys import MAX_NAME_LENGTH, ArchiveRequest, key_for_task_id, parse_key
from archiverd.ops.metrics import Metrics
from archiverd.storage.service import StorageService
from archiverd.tasks.model import SUCCESS_STATUS, State, Task
from archiverd.tasks.service import TaskService
from archiverd.transfer.sources import Source
from archiverd.util.deferreds import SingleFlight

#: A task id longer than this names no archive (3 names, a rev, escapes).
MAX_TASK_ID = 8 * MAX_NAME_LENGTH
#: Valid requests :meth:`Archives.stored` remembers.
VALID_REMEMBERED = 4096


@dataclass(slots=True)
class Redirect:
    """The archive is stored: send the client to ``url``; ``sha256`` is the
    archive's, when known ("" otherwise), for the client to check."""

    url: str
    sha256: str = ""


@dataclass(slots=True)
class Accepted:
    """A task is storing the archive; the client polls ``task_id``."""

    task_id: str


@dataclass(slots=True)
class Status:
    """A task's status fields, and the signed URLs that go with them.

    ``task`` is this daemon's own task when it is the source, so that a
    finished task's rendered answer can be kept with it; its fields are
    described (at ``clock``'s time) only when asked for: a kept answer needs
    none. (Another daemon's success, in a fleet, is given as the task that
    stands for it here, to keep its answer the same way.)
    """

    urls: dict[str, str]
    task: Task | None = None
    clock: IReactorTime | None = None
    fields: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def result(self) -> dict[str, Any]:
        if self.fields is None:
            assert self.task is not None and self.clock is not None
            self.fields = self.task.describe(self.clock.seconds())
        return self.fields


def unknown_status() -> Status:
    """What the old service answered for a task it did not know."""
    return Status(
        {},
        fields={
            "state": State.PENDING.value,
            "status": wire.UNKNOWN_STATUS,
            "src_url": "",
        },
    )


class Archives:
    """Archives in storage and the tasks that put them there."""

    log = Logger()

    def __init__(
        self,
        sources: Mapping[str, Source],
        storage: StorageService,
        tasks: TaskService,
        clock: IReactorTime,
        *,
        signed_url_expiry: int = 300,
        signed_url_reuse: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.sources = sources
        self.storage = storage
        self.tasks = tasks
        self.clock = clock
        self.signed_url_expiry = signed_url_expiry
        self.regions = storage.regions
        #: Polled tasks' URLs, signed again before ``signed_url_reuse`` (the
        #: storage's reuse window) ends (None: 0, never kept).
        self.fresh_urls = (
            FreshUrls(
                self.regions,
                clock,
                signed_url_reuse,
                self._sign_afresh,
                storage.uses.record,
            )
            if signed_url_reuse > 0
            else None
        )
        #: Storage looks in progress, by key.
        self._looks: SingleFlight[str, tuple[float, list[str]]] = SingleFlight()
        #: Requests :meth:`stored` found valid (validation depends only on
        #: the request and the config): a hit is validated once, not on
        #: every request. Bounded: cleared when full.
        self._valid: dict[tuple[str, ...], ArchiveRequest] = {}
        #: Told of every valid request once, before it is answered (pre-warm
        #: learns shapes and counts its hits); must be O(1).
        self.observer: Callable[[ArchiveRequest, str], None] | None = None

    # -- where is this archive --------------------------------------------------

    def locate(
        self,
        source: str,
        repo: str,
        rev: str,
        *,
        suffix: str = "tar.gz",
        subdir: str = "",
        preferred_region: str = "",
        hold: float = 0.0,
        poll_refusals: bool = False,
    ) -> Redirect | Deferred[Redirect | Accepted]:
        """Where the client should go for this archive.

        A hit whose answer is cached (the key known stored, a fresh signed
        URL) is answered now; anything else asks storage, and starts or joins
        a task when the archive is missing in the region asked for. Then the
        answer waits up to ``hold`` seconds for that task (when this daemon
        runs it): stored by then, it is the redirect a stored archive gets.
        With ``poll_refusals``, a name upstream does not know becomes a
        failed task to poll (for clients that learn of failures only so).
        Raises
        :class:`NotFound` for an unknown source, and what the source raises
        for a request it refuses.
        """
        upstream = self.sources.get(source)
        if upstream is None:
            raise NotFound(f"unknown source {source!r}")
        wanted = upstream.request(repo, rev, suffix=suffix, subdir=subdir)
        src_url = upstream.shown_url(wanted)  # refuses what escapes the template
        region = self._region(preferred_region)
        if self.observer is not None:
            self.observer(wanted, region)
        hit = self._cached_redirect(wanted, region)
        if hit is not None:
            return hit
        return Deferred.fromCoroutine(
            self._locate(upstream, wanted, src_url, region, hold, poll_refusals)
        )

    def stored(
        self,
        source: str,
        repo: str,
        rev: str,
        *,
        suffix: str = "tar.gz",
        subdir: str = "",
        preferred_region: str = "",
    ) -> Redirect | None:
        """:meth:`locate`'s answer when it is a hit answered from the caches,
        else None: for the hot path (:mod:`archiverd.api.hot`), which must
        start nothing and ask nothing. A request :meth:`locate` would refuse
        is None too (locate then says why)."""
        asked = (source, repo, rev, suffix, subdir)
        wanted = self._valid.get(asked)
        if wanted is None:
            upstream = self.sources.get(source)
            if upstream is None:
                return None
            try:
                wanted = upstream.request(repo, rev, suffix=suffix, subdir=subdir)
                upstream.shown_url(wanted)
            except (BadRequest, Forbidden):
                return None
            if len(self._valid) >= VALID_REMEMBERED:
                self._valid.clear()
            self._valid[asked] = wanted
        region = self._region(preferred_region)
        hit = self._cached_redirect(wanted, region)
        if hit is not None and self.observer is not None:
            self.observer(wanted, region)  # (a miss goes on to locate)
        return hit

    def _region(self, preferred: str) -> str:
        """The region a client is sent to: its preferred one, if configured."""
        return preferred if preferred in self.regions else self.storage.default_region

    def _cached_redirect(self, wanted: ArchiveRequest, region: str) -> Redirect | None:
        if wanted.is_symbolic:
            return None
        storage = self.storage
        key = wanted.key  # (a property that formats the key: once)
        if storage.known(region, key):
            url = storage.cached_signed_url(region, key, self.signed_url_expiry)
            if url is not None:
                return Redirect(url, storage.cached_sha256(region, key) or "")
        return None

    async def _locate(
        self,
        upstream: Source,
        wanted: ArchiveRequest,
        src_url: str,
        region: str,
        hold: float = 0.0,
        poll_refusals: bool = False,
    ) -> Redirect | Accepted:
        if wanted.is_symbolic:
            try:
                wanted = await upstream.resolve(wanted)
            except UpstreamRefused as e:
                if not poll_refusals:
                    raise
                task = self.tasks.refused(wanted, src_url, upstream.host, e)
                return Accepted(task.task_id)
            src_url = upstream.shown_url(wanted)
        key = wanted.key
        running = self.tasks.active(wanted.task_id)
        if running is not None and region in running.regions:
            # Being fetched into this region right now: no storage call needed.
            return await self._held(wanted.task_id, region, hold)
        since, stored = await self._look(key)
        missing = [r for r in self.regions if r not in stored]
        if region not in missing:
            url = await self._signed_url(region, key)
            return Redirect(url, await self._sha256(region, key))
        task_id = await self.tasks.claim(
            wanted,
            src_url,
            missing,
            upstream.host,
            since,
            stored_in=lambda: self._stored_in(key),
        )
        return await self._held(task_id, region, hold)

    async def _held(
        self, task_id: str, region: str, seconds: float
    ) -> Redirect | Accepted:
        """Wait up to ``seconds`` for this daemon's task to finish: the
        redirect if it stored the archive, else the task to poll."""
        task = self.tasks.get(task_id) if seconds > 0 else None
        if task is None:
            return Accepted(task_id)
        held = self.metrics.held
        try:
            await self.tasks.settled(task, seconds)
        except CancelledError:
            held.labels("gone").inc()
            raise
        if task.state is State.SUCCESS:
            held.labels("stored").inc()
            url = await self._signed_url(region, task.key)
            return Redirect(url, task.sha256 or "")
        held.labels("failed" if task.done else "waiting").inc()
        return Accepted(task_id)

    def _look(self, key: str) -> Deferred[tuple[float, list[str]]]:
        """When storage was asked, and which regions hold the key (concurrent
        requests for one key share one look)."""
        since = self.clock.seconds()

        async def look() -> tuple[float, list[str]]:
            return since, await self._stored_in(key)

        return self._looks.run(key, look)

    async def _stored_in(self, key: str) -> list[str]:
        regions = self.regions
        found = await gatherResults(
            [Deferred.fromCoroutine(self._exists(r, key)) for r in regions]
        )
        return [region for region, yes in zip(regions, found) if yes]

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

    async def _sha256(self, region: str, key: str) -> str:
        """The archive's sha256 for its redirect; "" when storage cannot
        say (the client then checks what storage sends, if anything)."""
        try:
            return await self.storage.sha256(region, key)
        except Exception as e:
            self.log.warn(
                "cannot read the sha256 of {key} in {region}: {error}",
                region=region,
                key=key,
                error=str(e),
            )
            return ""

    async def _signed_url(self, region: str, key: str) -> str:
        return await self.storage.signed_url(region, key, self.signed_url_expiry)

    def _sign_afresh(self, keys: list[str]) -> Deferred[list[dict[str, str]]]:
        """Every region's URL of each key, signed now (none reused), in one
        call on a storage thread."""
        backend, regions = self.storage.storage, self.regions
        expiry = self.signed_url_expiry

        def sign() -> list[dict[str, str]]:
            return [
                {r: backend.signed_url(r, k, expiry) for r in regions} for k in keys
            ]

        return Deferred.fromCoroutine(self.storage.call(sign))

    def _cached_urls(self, key: str) -> dict[str, str] | None:
        """Every region's signed URL if all are cached, else None."""
        if self.fresh_urls is not None:
            fresh = self.fresh_urls.get(key)
            if fresh is not None:
                return fresh
        urls = {}
        for region in self.regions:
            url = self.storage.cached_signed_url(region, key, self.signed_url_expiry)
            if url is None:
                return None
            urls[region] = url
        return urls

    async def _signed_urls(self, key: str) -> dict[str, str]:
        regions = self.regions
        # None reused: all signed now, and kept to be signed again in time.
        fresh = self.fresh_urls is not None and not any(
            self.storage.cached_signed_url(r, key, self.signed_url_expiry)
            for r in regions
        )
        urls = await gatherResults(
            [Deferred.fromCoroutine(self._signed_url(r, key)) for r in regions],
            consumeErrors=True,
        )
        signed = dict(zip(regions, urls))
        if fresh and self.fresh_urls is not None:
            self.fresh_urls.put(key, signed)
        return signed

    # -- what is this task's status ---------------------------------------------

    def status(self, task_id: str, wait: float = 0.0) -> Status | Deferred[Status]:
        """The status of ``task_id``: this daemon's task, another daemon's
        (in a fleet), one from before a restart (storage knows whether it
        succeeded), or unknown. Answered now when no I/O is needed; URLs are
        signed at poll time (or reused while most of their validity
        remains), so they are never stale. With ``wait``, an unfinished task
        of this daemon's is answered when it finishes, or after ``wait``
        seconds (a long poll)."""
        now = self.status_now(task_id, wait)
        if now is not None:
            return now
        task = self.tasks.get(task_id)
        if task is not None and wait > 0 and not task.done:
            return self.tasks.settled(task, wait).addCallback(
                lambda _: self.status(task_id)
            )
        return Deferred.fromCoroutine(self._status(task_id))

    def status_now(self, task_id: str, wait: float = 0.0) -> Status | None:
        """:meth:`status`'s answer when it needs no I/O and no waiting, else
        None (nothing is started or asked): this daemon's task (a success
        whose URLs are all cached), or another daemon's read lately."""
        task = self.tasks.get(task_id)
        if task is None:
            return self._status_known_here(task_id)
        if wait > 0 and not task.done:
            return None
        if task.state is not State.SUCCESS:
            return Status({}, task, self.clock)
        urls = self._cached_urls(task.key)
        return None if urls is None else Status(urls, task, self.clock)

    def _status_known_here(self, task_id: str) -> Status | None:
        """Another daemon's task, from what this one last read of it (and
        URLs it signed lately); None when that is not enough."""
        coordinator = self.tasks.coordinator
        seen = coordinator.seen(task_id)
        if seen is not None:
            # A success elsewhere, standing here as a task that describes
            # itself as its record says and keeps its rendered answer: a
            # poll here costs what one at the owner does.
            urls = self._cached_urls(seen.key)
            return None if urls is None else Status(urls, seen, self.clock)
        found = coordinator.peek(task_id)
        if found is None:
            return None
        if found["state"] != State.SUCCESS.value:
            return Status({}, fields=found)
        urls = self._cached_urls(key_for_task_id(task_id))
        return None if urls is None else Status(urls, fields=found)

    async def _status(self, task_id: str) -> Status:
        task = self.tasks.get(task_id)
        if task is None:
            return await self._status_elsewhere(task_id)
        urls = {}
        if task.state is State.SUCCESS:
            urls = await self._signed_urls(task.key)
        return Status(urls, task, self.clock)

    async def _status_elsewhere(self, task_id: str) -> Status:
        unavailable = None
        if len(task_id) <= MAX_TASK_ID:
            try:
                found = await self.tasks.coordinator.lookup(task_id)
            except FleetUnavailable as e:
                found, unavailable = None, e
            if found is not None:
                urls = {}
                if found["state"] == State.SUCCESS.value:
                    urls = await self._signed_urls(key_for_task_id(task_id))
                return Status(urls, fields=found)
        status = await self._status_from_storage(task_id)
        if unavailable is not None and status.result["state"] != State.SUCCESS.value:
            raise Busy(f"cannot reach the other daemons' task records ({unavailable})")
        return status

    async def _status_from_storage(self, task_id: str) -> Status:
        """For a task this process does not know: stored means SUCCESS."""
        if len(task_id) > MAX_TASK_ID or not task_id.isprintable():
            return unknown_status()
        try:
            key = key_for_task_id(task_id)
        except ValueError:
            return unknown_status()
        named = parse_key(key)
        if named is None or named.source not in self.sources:
            return unknown_status()  # names no archive: never sign URLs for it
        if set(await self._stored_in(key)) != set(self.regions):
            return unknown_status()
        fields = {"state": State.SUCCESS.value, "status": SUCCESS_STATUS, "src_url": ""}
        return Status(await self._signed_urls(key), fields=fields)
