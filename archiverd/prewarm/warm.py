"""Pre-warm tasks: for a new head, a task per shape whose archive is not
stored; and what clients ask for, seen on every request (learned shapes, and
pre-warm hits).

A pre-warm task is an ordinary task claimed with ``prewarm=True`` (see
:mod:`archiverd.tasks.standby`): a client asking for the same archive joins
it, a restart or failure behaves as for any task, and in a fleet the claim is
the archive's lock, so every daemon's clients find it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from archiverd.archives import Archives
from archiverd.errors import BadRequest, Busy, Forbidden
from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics
from archiverd.prewarm.shapes import Shape, Shapes
from archiverd.tasks.model import State
from archiverd.transfer.sources import Source

#: Pre-warmed archives remembered until a client first asks (for the hits).
REMEMBERED = 10_000


class Prewarmer:
    """Starts pre-warm tasks and watches what clients ask for."""

    log = Logger()

    def __init__(
        self,
        archives: Archives,
        shapes: Shapes,
        watched: Mapping[str, Callable[[str], bool]],
        metrics: Metrics,
    ) -> None:
        self.archives = archives
        self.shapes = shapes
        #: Each pre-warming source's test for the repos it watches.
        self._watched = dict(watched)
        self.metrics = metrics
        #: Key -> task id of pre-warmed archives no client has asked for yet.
        self._warmed: OrderedDict[str, str] = OrderedDict()

    # -- a new head ---------------------------------------------------------

    async def warm(self, source: str, repo: str, node: str) -> list[str]:
        """Claim a pre-warm task for each shape of ``node`` not yet stored;
        their task ids. Returns once claimed, never waits for an archive."""
        upstream = self.archives.sources[source]
        template = upstream.config.kind == "template"
        started = []
        for shape in self.shapes.for_repo(source, repo):
            rev = node if template else node[: shape.rev_length]
            try:
                request = upstream.request(
                    repo, rev, suffix=shape.suffix, subdir=shape.subdir
                )
                src_url = upstream.shown_url(request)
            except (BadRequest, Forbidden) as e:
                self.log.warn(
                    "pre-warm: {source}/{repo}: not made: {error}",
                    source=source,
                    repo=repo,
                    error=str(e),
                )
                continue
            try:
                task_id = await self._claim(upstream, request, src_url)
            except Busy as e:
                self.metrics.watcher_errors.labels(source).inc()
                self.log.warn(
                    "pre-warm: {key}: cannot start: {error}",
                    key=request.key,
                    error=str(e),
                )
                continue
            if task_id is not None:
                started.append(task_id)
        return started

    async def _claim(
        self, upstream: Source, request: ArchiveRequest, src_url: str
    ) -> str | None:
        archives = self.archives
        since = archives.clock.seconds()
        key = request.key
        stored = await self._stored_in(key)
        missing = [r for r in archives.regions if r not in stored]
        if not missing:
            return None
        task_id = await archives.tasks.claim(
            request,
            src_url,
            missing,
            upstream.host,
            since,
            stored_in=lambda: self._stored_in(key),
            prewarm=True,
        )
        self._warmed[key] = task_id
        self._warmed.move_to_end(key)
        while len(self._warmed) > REMEMBERED:
            self._warmed.popitem(last=False)
        return task_id

    async def _stored_in(self, key: str) -> list[str]:
        storage = self.archives.storage
        regions = self.archives.regions

        async def exists(region: str) -> bool:
            try:
                return await storage.exists(region, key)
            except Exception:
                return False  # the task finds out, and says why

        found = await gatherResults(
            [Deferred.fromCoroutine(exists(r)) for r in regions]
        )
        return [r for r, yes in zip(regions, found) if yes]

    # -- every client request -------------------------------------------------

    def asked(self, request: ArchiveRequest, region: str) -> None:
        """A client asked for ``request`` (before it is answered): count a
        pre-warm hit if pre-warm stored it and this is its first request, and
        learn its shape. O(1): it runs on the hit path."""
        if self._warmed:
            task_id = self._warmed.pop(request.key, None)
            if task_id is not None and self._stored(task_id, region, request.key):
                self.metrics.prewarm_hits.inc()
        watched = self._watched.get(request.source)
        if watched is None or not self.shapes.learns(request.source):
            return
        if watched(request.repo):
            shape = Shape.of(request)
            if shape is not None:
                self.shapes.asked(request.source, request.repo, shape)

    def _stored(self, task_id: str, region: str, key: str) -> bool:
        task = self.archives.tasks.get(task_id)
        if task is not None:
            return task.state is State.SUCCESS
        return self.archives.storage.known(region, key)
