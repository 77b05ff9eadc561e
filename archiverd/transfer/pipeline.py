"""Download → parts → uploads: one archive streamed into several regions.

::

    upstream ──chunks──▶ PartCutter ──part n──▶ region A: upload_part(n)
      ▲   (sha256, byte count)       └────────▶ region B: upload_part(n)
      └── pauseProducing() while ``window`` parts are unfinished

The body is cut into parts of ``part_size`` bytes as it arrives. Each part is
one ``bytes`` object shared by every region's upload, so memory held by a task
is at most ``window × part_size`` plus the part being filled, whatever the
archive's size and however many regions there are. While ``window`` parts are
not yet stored everywhere, the upstream transport is paused (TCP then pushes
back on upstream); it resumes as parts finish.

Parts are completed nowhere until every region has every part. Any failure
(upstream, a part, a completion, cancellation) stops the download, waits for
parts in flight, and aborts every multipart upload of the transfer, so no
partial object is ever visible and no pending upload is left behind. An
archive smaller than one part is stored with a single PUT per region.

Nothing is completed before the body is proven whole and exactly as upstream
sent it (:mod:`archiverd.transfer.body`): by HTTP's framing, or, for a body
that ends when its connection closes, by its format, checked with the sha256
as the parts arrive. Every storage call goes through :meth:`_storage_call`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from archiverd.errors import StorageError, UpstreamError, UpstreamUnavailable
from archiverd.keys import ArchiveRequest
from archiverd.ops.metrics import Metrics
from archiverd.storage.base import ObjectInfo
from archiverd.storage.service import StorageService
from archiverd.tasks.model import Outcome, Task
from archiverd.transfer.body import BodyRules
from archiverd.transfer.client import describe_error, read_limited
from archiverd.transfer.complete import FormatCheck
from archiverd.transfer.cutter import PartCutter
from archiverd.transfer.sources import REFUSALS, Source
from archiverd.util.deferreds import Shared, shielded

T = TypeVar("T")


class Transfer:
    """Streams one archive from upstream into storage in ``regions``."""

    log = Logger()

    def __init__(
        self,
        source: Source,
        storage: StorageService,
        request: ArchiveRequest,
        regions: Sequence[str],
        *,
        part_size: int,
        window: int,
        on_progress: Callable[[int], None] = lambda received: None,
        on_retry: Callable[[str], None] = lambda status: None,
        clock: IReactorTime | None = None,
        offload: Callable[..., Awaitable[Any]] | None = None,
        read_size: int | None = None,
        metrics: Metrics | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        #: Raises if this transfer may no longer make its object visible
        #: (another daemon took its work over); checked before completing.
        self._fence = fence
        self._counted = 0
        self.source = source
        self.read_size = read_size
        #: Runs CPU work (sha256 of each part) off the reactor thread; parts
        #: are hashed in order, one at a time, while they upload.
        self._offload = offload
        self._hasher = hashlib.sha256()
        self._hashed: Shared[None] = Shared(succeed(None))
        self.clock = clock
        self.storage = storage
        self.request = request
        self.key = request.key
        self.url = source.archive_url(request)
        #: The URL as errors and logs show it (no credentials).
        self.shown_url = source.shown_url(request)
        self.regions = tuple(regions)
        self.info = ObjectInfo(request.content_type, request.filename)
        self.part_size = part_size
        self.window = window
        self.on_progress = on_progress
        #: Told the status while upstream is retried; "" once it answers.
        self.on_retry = on_retry
        self._parts = 0
        self._uploads: dict[str, Shared[str]] = {}
        self._etags: dict[str, list[tuple[int, str]]] = {r: [] for r in self.regions}
        self._in_flight: set[Deferred[None]] = set()
        self._calls: set[Deferred[Any]] = set()
        self._completed: set[str] = set()
        self._error: Failure | None = None
        self._cutter: PartCutter | None = None
        self._rules = BodyRules(
            source.host, self.shown_url, request.suffix, source.config
        )
        #: Proves a body whole by its format when HTTP cannot (fed with the
        #: sha256, in order, off the reactor thread).
        self._format: FormatCheck | None = None
        #: For a rev asked for by name: the look that it did not move.
        self._confirmed: Deferred[None] | None = None
        #: The body's length as upstream announced it, if it did.
        self.expected_size: int | None = None

    async def run(self) -> Outcome:
        """Download and store; raises on any failure, leaving nothing behind."""
        response = await self._ask()
        # A name is fetched by name: once upstream has resolved it (its
        # answer came), look again that it names what it did when asked.
        if self.request.node:
            self._confirmed = Deferred.fromCoroutine(self.source.confirm(self.request))
        limits = self.source.config
        cutter = self._cutter = PartCutter(
            self.part_size,
            self.window,
            self._start_part,
            self._progress,
            limit=limits.max_archive_bytes,
            clock=self.clock,
            idle_timeout=limits.idle_timeout,
            read_size=self.read_size,
        )
        response.deliverBody(cutter)
        try:
            await cutter.finished
            self._raise_error()
            self._rules.check_ended(cutter)
            sha256 = await self._store_rest(cutter)
            return Outcome(cutter.received, sha256)
        except BaseException:
            cutter.stop()
            if self._confirmed is not None:
                self._confirmed.cancel()
                self._confirmed.addErrback(lambda _: None)
            # Shielded: a second cancel must not cut the clean-up short.
            await shielded(Deferred.fromCoroutine(self._clean_up()))
            raise

    async def _ask(self) -> Any:
        """Upstream's answer, once it is a body archiverd may store."""
        asked = self.clock.seconds() if self.clock is not None else None
        try:
            response = await self.source.get(self.url, on_retry=self.on_retry)
        finally:
            self.on_retry("")
        if asked is not None and self.clock is not None:
            self.metrics.upstream_ttfb.observe(self.clock.seconds() - asked)
        if response.code in REFUSALS:
            raise await self.source.refusal(response, self.url)
        try:
            if response.code != 200:
                raise UpstreamUnavailable(
                    f"{self.source.host} answered {response.code} for {self.shown_url}"
                )
            self._format = self._rules.accept(response)
            length = getattr(getattr(response, "original", response), "length", None)
            self.expected_size = length if isinstance(length, int) else None
        except UpstreamError:
            # Its body goes unread: dropped (within idle_timeout), so that
            # the connection is not held open.
            seconds = self.source.config.idle_timeout
            await read_limited(
                response, 0, clock=self.clock, idle=seconds, total=seconds
            )
            raise
        return response

    async def _store_rest(self, cutter: PartCutter) -> str:
        """Store what follows the last full part and make the object visible
        in every region; the archive's sha256."""
        rest = cutter.rest()
        if self._parts == 0:  # smaller than a part: one PUT per region
            self._hash(rest)
            sha256 = await self._digest()
            self._rules.check_whole(cutter, self._format)
            await self._check_fence()
            await self._for_each_region(self._put, rest, sha256)
            return sha256
        if rest:
            self._start_part(rest)
        await self._drain()
        self._raise_error()
        sha256 = await self._digest()
        self._rules.check_whole(cutter, self._format)
        await self._check_fence()
        await self._for_each_region(self._complete, cutter.received, sha256)
        return sha256

    async def _check_fence(self) -> None:
        if self._confirmed is not None:
            await self._confirmed
        if self._fence is not None:
            await self._fence()

    async def _clean_up(self) -> None:
        """After a failure: let storage calls finish, then abort the uploads.

        Aborting while a part is still being stored could leave that part
        behind, so the calls in progress are waited for first.
        """
        await self._drain()
        while self._calls:
            await DeferredList(list(self._calls), consumeErrors=True)
        await self._abort_uploads()

    def _progress(self, received: int) -> None:
        self.metrics.upstream_bytes.inc(received - self._counted)
        self._counted = received
        self.on_progress(received)

    def _raise_error(self) -> None:
        if self._error is not None:
            self._error.raiseException()

    async def _for_each_region(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(region, *args)`` in every region at once; raise the first error."""
        ds = [Deferred.fromCoroutine(fn(region, *args)) for region in self.regions]
        try:
            await gatherResults(ds, consumeErrors=True)
        except Exception as e:
            sub = getattr(e, "subFailure", None)
            if sub is not None:
                sub.raiseException()
            raise

    # -- parts ---------------------------------------------------------

    def _hash(self, data: bytes | bytearray) -> Shared[None]:
        """Add ``data`` to the archive's sha256 (and its format check), after
        the data before it."""
        previous = self._hashed
        self._hashed = Shared(Deferred.fromCoroutine(self._hash_after(previous, data)))
        return self._hashed

    async def _hash_after(self, previous: Shared[None], data: Any) -> None:
        await previous.wait()
        if self._offload is None:
            self._consume(data)
        else:
            await self._offload(self._consume, data)

    def _consume(self, data: Any) -> None:
        # On a pool thread: one call per part for both (zlib and hashlib let
        # go of the GIL while they work on it).
        self._hasher.update(data)
        if self._format is not None:
            self._format.feed(data)

    async def _digest(self) -> str:
        """The sha256 of every byte received, once all of them are hashed
        (and fed to the format check)."""
        await self._hashed.wait()
        return self._hasher.hexdigest()

    def _start_part(self, data: bytes | bytearray) -> Deferred[None]:
        self._parts += 1
        number = self._parts
        offset = (number - 1) * self.part_size
        hashing = self._hash(data)
        d = Deferred.fromCoroutine(self._store_and_hash(number, offset, data, hashing))
        d.addErrback(self._part_failed)
        self._in_flight.add(d)
        d.addBoth(self._part_settled, d)
        return d

    async def _store_and_hash(
        self, number: int, offset: int, data: Any, hashing: Shared[None]
    ) -> None:
        """A part is done when stored everywhere and hashed: only then may
        its memory go. Its checksum is computed once for every region."""
        checksum = await self.storage.part_checksum(data)
        await self._for_each_region(self._store_part, number, offset, data, checksum)
        await hashing.wait()

    def _part_settled(self, result: object, d: Deferred[None]) -> object:
        self._in_flight.discard(d)
        return result

    def _call_settled(self, result: object, call: Deferred[Any]) -> object:
        self._calls.discard(call)
        return result

    def _part_failed(self, failure: Failure) -> None:
        if self._error is None:
            self._error = failure
            self.log.warn(
                "storing {key} failed: {error}", key=self.key, error=failure.value
            )
        if self._cutter is not None:
            self._cutter.stop()

    async def _drain(self) -> None:
        while self._in_flight:
            await gatherResults(list(self._in_flight))

    async def _upload_id(self, region: str) -> str:
        if region not in self._uploads:
            start = self._storage_call(
                region, self.storage.start_upload, region, self.key, self.info
            )
            self._uploads[region] = Shared(Deferred.fromCoroutine(start))
        return await self._uploads[region].wait()

    async def _store_part(
        self,
        region: str,
        number: int,
        offset: int,
        data: bytes,
        checksum: str | None = None,
    ) -> None:
        upload_id = await self._upload_id(region)
        etag = await self._storage_call(
            region,
            self.storage.upload_part,
            region,
            self.key,
            upload_id,
            number,
            offset,
            data,
            checksum,
        )
        self._etags[region].append((number, etag))
        self.metrics.uploaded_bytes.labels(region).inc(len(data))

    async def _put(self, region: str, data: bytes, sha256: str) -> None:
        await self._storage_call(
            region, self.storage.put, region, self.key, data, self.info, sha256
        )
        self.metrics.uploaded_bytes.labels(region).inc(len(data))
        self._completed.add(region)

    async def _complete(self, region: str, size: int, sha256: str) -> None:
        upload_id = await self._upload_id(region)
        parts = sorted(self._etags[region])
        await self._storage_call(
            region,
            self.storage.complete_upload,
            region,
            self.key,
            upload_id,
            parts,
            self.info,
            sha256,
            size,
        )
        self._completed.add(region)

    async def _storage_call(
        self, region: str, fn: Callable[..., Any], *args: Any
    ) -> Any:
        """Run a storage call that cancellation cannot cut loose.

        The call runs on a thread and cannot be stopped, so a cancel only
        stops the waiting; the call stays in ``_calls`` until it ends.
        """
        call = Deferred.fromCoroutine(fn(*args))
        self._calls.add(call)
        call.addBoth(self._call_settled, call)
        try:
            return await shielded(call)
        except CancelledError:
            raise
        except StorageError:
            self.metrics.storage_errors.labels(region).inc()
            raise
        except Exception as e:
            self.metrics.storage_errors.labels(region).inc()
            raise StorageError(
                f"storage in {region} failed: {describe_error(e)}"
            ) from e

    async def _abort_uploads(self) -> None:
        """Abort every started, uncompleted upload, in all regions at once."""
        await gatherResults(
            [
                Deferred.fromCoroutine(self._abort(region, upload))
                for region, upload in self._uploads.items()
                if region not in self._completed
            ]
        )

    async def _abort(self, region: str, upload: Shared[str]) -> None:
        try:
            upload_id = await upload.wait()
        except Exception:
            return  # never started: nothing to abort
        try:
            await self._storage_call(
                region, self.storage.abort_upload, region, self.key, upload_id
            )
        except StorageError as e:
            # Expected while storage is down; S3's lifecycle rule (or the
            # next start of the file backend) clears what is left.
            self.log.warn(
                "could not abort the upload of {key} in {region}: {error}",
                key=self.key,
                region=region,
                error=str(e),
            )


class Fetcher:
    """Runs a task's transfer, within its source's total time limit.

    This is the task service's runner.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        storage: StorageService,
        part_size: int,
        window: int,
        clock: IReactorTime,
        read_size: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.read_size = read_size
        self.sources = sources
        self.storage = storage
        self.part_size = part_size
        self.window = window

    async def __call__(self, task: Task, on_progress: Callable[[int], None]) -> Outcome:
        source = self.sources[task.request.source]
        transfer = Transfer(
            source,
            self.storage,
            task.request,
            task.regions,
            part_size=self.part_size,
            window=self.window,
            on_progress=on_progress,
            on_retry=lambda status: setattr(task, "retrying", status),
            clock=self.clock,
            offload=self.storage.call,
            read_size=self.read_size,
            metrics=self.metrics,
            fence=task.fence,
        )

        def progress(received: int) -> None:
            task.expected_size = transfer.expected_size
            on_progress(received)

        transfer.on_progress = progress
        limit = source.config.total_timeout
        run = Deferred.fromCoroutine(transfer.run())
        run.addTimeout(limit, self.clock)
        try:
            return await run
        except defer.TimeoutError:
            raise UpstreamUnavailable(
                f"fetching {transfer.shown_url} took longer than {limit:g}s "
                "(total_timeout)"
            ) from None
