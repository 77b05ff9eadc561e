"""What the page for people shows, gathered as plain values (no HTML).

:class:`Dashboard` reads this daemon's state (its task table, its metrics, its
storage folders) and answers with dataclasses that :mod:`archiverd.api.page`
renders: :class:`Overview` for ``GET /``, :class:`TaskView` for a status or
archive URL opened in a browser. Reading it costs the reactor thread a walk
over the unfinished tasks and the last :data:`~archiverd.tasks.service.RECENT`
finished ones; the bytes stored under a file root are counted on the storage
thread pool, at most once every ``measure_every`` seconds, never on the
reactor thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from archiverd import wire
from archiverd.archives import Accepted, Archives, Status
from archiverd.keys import ArchiveRequest, key_for_task_id, parse_key
from archiverd.ops.health import version_info
from archiverd.ops.metrics import Metrics
from archiverd.storage.limits import limit_bytes
from archiverd.tasks.model import State, Task
from archiverd.util.deferreds import SingleFlight, shielded

#: Queued tasks listed by name (the rest are counted).
QUEUE_SHOWN = 20
#: Seconds a page waits for a first count of the bytes stored.
MEASURE_WAIT = 2.0


@dataclass(frozen=True)
class Progress:
    """How far a task's download is: bytes, and what follows from them."""

    received: int
    #: The length upstream announced; None when it sent none.
    expected: int | None = None
    #: Bytes per second since the download started.
    rate: float | None = None
    #: Seconds left at that rate (only with an announced length).
    eta: float | None = None

    @property
    def fraction(self) -> float | None:
        if not self.expected:
            return None
        return min(1.0, self.received / self.expected)


@dataclass(frozen=True)
class TaskView:
    """One task, as a person sees it."""

    task_id: str
    #: ``source repo@rev`` and its subdir and suffix; "" when not known.
    archive: str
    state: str
    status: str
    src_url: str = ""
    progress: Progress = field(default_factory=lambda: Progress(0))
    #: Seconds from creation to now (or to its end).
    elapsed: float | None = None
    #: When it finished (the clock's seconds).
    finished: float | None = None
    size: int | None = None
    sha256: str | None = None
    regions: tuple[str, ...] = ()
    #: Download URL per region (maybe relative to archiverd), once stored.
    urls: dict[str, str] = field(default_factory=dict)
    #: Tasks ahead of it, while queued.
    ahead: int | None = None

    @property
    def done(self) -> bool:
        return self.state in (wire.SUCCESS, wire.FAILURE)

    @property
    def failed(self) -> bool:
        return self.state == wire.FAILURE

    @property
    def running(self) -> bool:
        return self.state in (wire.STARTED, wire.PROGRESS)


@dataclass(frozen=True)
class RegionUse:
    """A region, and what its storage holds when that can be counted."""

    name: str
    #: Bytes stored; None when not counted (S3) or not yet counted.
    used: int | None = None


@dataclass(frozen=True)
class StorageUse:
    """Storage, region by region, against the configured limit."""

    backend: str
    regions: tuple[RegionUse, ...]
    #: ``[storage.file] max_bytes`` in bytes, when set.
    limit: int | None = None
    #: The limit as configured (``"200GiB"``, ``"80%"``), for people.
    limit_text: str = ""
    #: Why use is not shown ("not counted for S3", "counting…").
    note: str = ""

    @property
    def used(self) -> int | None:
        counted = [r.used for r in self.regions]
        return None if None in counted else sum(u or 0 for u in counted)


@dataclass(frozen=True)
class Overview:
    """Everything ``GET /`` shows."""

    version: str
    commit: str
    #: (name, kind, host) of each configured source.
    sources: tuple[tuple[str, str, str], ...]
    storage: StorageUse
    running: tuple[TaskView, ...]
    queued: tuple[TaskView, ...]
    queued_total: int
    recent: tuple[TaskView, ...]
    hits: int
    misses: int
    max_concurrent: int
    #: The clock's seconds when gathered (task times are on the same clock).
    now: float


def archive_name(request: ArchiveRequest | None) -> str:
    """``hgmo projects/ash@42bf8560b395 testing/mozharness (tar.gz)``."""
    if request is None:
        return ""
    name = f"{request.source} {request.repo}@{request.rev}"
    if request.subdir:
        name += f" {request.subdir}"
    return f"{name} ({request.suffix})"


def _request_of(task_id: str) -> ArchiveRequest | None:
    try:
        return parse_key(key_for_task_id(task_id))
    except ValueError:
        return None


class Dashboard:
    """This daemon's state for people; see the module's docstring."""

    log = Logger()

    def __init__(
        self,
        archives: Archives,
        metrics: Metrics,
        *,
        file_root: str | os.PathLike[str] | None = None,
        max_bytes: str = "",
        measure_every: float = 30.0,
    ) -> None:
        self.archives = archives
        self.tasks = archives.tasks
        self.metrics = metrics
        self.clock: IReactorTime = archives.clock
        #: The file backend's root (None with S3): a folder per region.
        self.file_root = file_root
        self.max_bytes = max_bytes
        self.measure_every = measure_every
        self._measured: tuple[float, dict[str, int], int | None] | None = None
        self._measuring: SingleFlight[str, None] = SingleFlight()

    # -- GET / ---------------------------------------------------------------

    async def overview(self) -> Overview:
        """The daemon's state now (bytes stored as last counted)."""
        storage = await self.storage_use()
        now = self.clock.seconds()
        running: list[Task] = []
        queued: list[Task] = []
        for task in self.tasks.unfinished():
            (queued if task.state is State.PENDING else running).append(task)
        info = version_info()
        return Overview(
            version=info["version"],
            commit=info["commit"],
            sources=tuple(
                (name, s.config.kind, s.host)
                for name, s in self.archives.sources.items()
            ),
            storage=storage,
            running=tuple(self.task_view(t, now) for t in running),
            queued=tuple(self.task_view(t, now) for t in queued[:QUEUE_SHOWN]),
            queued_total=len(queued),
            recent=tuple(self.task_view(t, now) for t in self.tasks.recent),
            hits=self._count("hit"),
            misses=self._count("miss"),
            max_concurrent=self.tasks.max_concurrent,
            now=now,
        )

    def _count(self, result: str) -> int:
        value = self.metrics.registry.get_sample_value(
            "archiverd_archive_requests_total", {"result": result}
        )
        return int(value or 0)

    def task_view(self, task: Task, now: float) -> TaskView:
        """This daemon's task as a person sees it."""
        end = task.finished if task.finished is not None else now
        rate = eta = None
        if task.started is not None and task.bytes_received:
            seconds = end - task.started
            rate = task.bytes_received / seconds if seconds > 0 else None
        expected = task.expected_size
        if rate and expected and not task.done:
            eta = max(0, expected - task.bytes_received) / rate
        return TaskView(
            task_id=task.task_id,
            archive=archive_name(task.request),
            state=task.state.value,
            status=task.status,
            src_url=task.src_url,
            progress=Progress(task.bytes_received, expected, rate, eta),
            elapsed=end - task.created,
            finished=task.finished,
            size=task.size,
            regions=task.regions,
            ahead=task.ahead if task.state is State.PENDING else None,
        )

    # -- a status or archive URL in a browser --------------------------------

    async def task(self, task_id: str) -> TaskView:
        """A task's view, with its signed URLs once it is stored (from
        :meth:`Archives.status`, as a JSON client gets them)."""
        found = self.archives.status(task_id)
        status = await found if isinstance(found, Deferred) else found
        return self.status_view(task_id, status)

    def status_view(self, task_id: str, status: Status) -> TaskView:
        """What :meth:`Archives.status` answered, as a person sees it."""
        if status.task is not None:
            view = self.task_view(status.task, self.clock.seconds())
            return replace(view, urls=dict(status.urls), sha256=status.task.sha256)
        fields = status.result
        return TaskView(
            task_id=task_id,
            archive=archive_name(_request_of(task_id)),
            state=fields["state"],
            status=fields["status"],
            src_url=fields.get("src_url", ""),
            progress=Progress(int(fields.get("bytes_received") or 0)),
            elapsed=fields.get("elapsed_seconds"),
            size=fields.get("size"),
            sha256=fields.get("sha256"),
            regions=tuple(fields.get("regions") or status.urls),
            urls=dict(status.urls),
        )

    async def archive(
        self,
        source: str,
        repo: str,
        rev: str,
        *,
        suffix: str,
        subdir: str,
        preferred_region: str,
    ) -> TaskView:
        """An archive URL opened in a browser: located as for any client
        (a task starts if it is missing, but no request is held), then
        shown as its task is."""
        found = self.archives.locate(
            source,
            repo,
            rev,
            suffix=suffix,
            subdir=subdir,
            preferred_region=preferred_region,
        )
        located = await found if isinstance(found, Deferred) else found
        if isinstance(located, Accepted):
            return await self.task(located.task_id)
        # Stored. A changeset's archive is named by its task id: show every
        # region's URL; a name's (resolved upstream), the one redirected to.
        wanted = self.archives.sources[source].request(
            repo, rev, suffix=suffix, subdir=subdir
        )
        if not wanted.is_symbolic:
            view = await self.task(wanted.task_id)
            if view.state == wire.SUCCESS and view.urls:
                return view
        storage = self.archives.storage
        region = (
            preferred_region
            if preferred_region in storage.regions
            else storage.default_region
        )
        return TaskView(
            task_id="",
            archive=archive_name(wanted),
            state=wire.SUCCESS,
            status=wire.SUCCESS_STATUS,
            urls={region: located.url},
        )

    # -- storage use ---------------------------------------------------------

    async def storage_use(self) -> StorageUse:
        """Each region's bytes as last counted (counted again when older
        than ``measure_every``; a first count is waited for briefly)."""
        regions = self.archives.regions
        limit_text = self.max_bytes
        if self.file_root is None:
            return StorageUse(
                "s3",
                tuple(RegionUse(r) for r in regions),
                note="not counted for S3 (the bucket's lifecycle rule expires objects)",
            )
        now = self.clock.seconds()
        if self._measured is None or now - self._measured[0] >= self.measure_every:
            counting = self._measuring.run("all", self._measure)
            if self._measured is None:
                waiting = shielded(counting)
                waiting.addTimeout(MEASURE_WAIT, self.clock)
                try:
                    await waiting
                except Exception:
                    pass  # not counted yet (TimeoutError), or cannot be (logged)
            else:
                counting.addErrback(lambda f: None)  # logged by _measure
        if self._measured is None:
            return StorageUse(
                "file",
                tuple(RegionUse(r) for r in regions),
                limit_text=limit_text,
                note="counting…",
            )
        _, used, limit = self._measured
        return StorageUse(
            "file",
            tuple(RegionUse(r, used.get(r)) for r in regions),
            limit=limit,
            limit_text=limit_text,
        )

    async def _measure(self) -> None:
        assert self.file_root is not None
        try:
            used, limit = await self.archives.storage.call(
                count_bytes, self.file_root, self.archives.regions, self.max_bytes
            )
        except Exception as e:
            self.log.warn("cannot count the bytes stored: {error}", error=str(e))
            raise
        self._measured = (self.clock.seconds(), used, limit)


def count_bytes(
    root: os.PathLike[str] | str, regions: tuple[str, ...], max_bytes: str = ""
) -> tuple[dict[str, int], int | None]:
    """Bytes in the files under each region's folder (uploads in progress
    included: they take disk too), and ``max_bytes`` in bytes (a share of
    the file system measured now). Blocking."""
    used = {region: _folder_bytes(os.path.join(root, region)) for region in regions}
    return used, limit_bytes(max_bytes, root)


def _folder_bytes(path: str) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue  # removed while counted
    return total
