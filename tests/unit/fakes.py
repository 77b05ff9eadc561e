"""Small in-memory fakes and Deferred helpers for the unit tests.

Nothing here touches the network, threads or the global reactor: time is a
``Clock``, upstream is a fake response (or a ``StubTreq`` over a fake hgweb
resource), and storage is a dict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from archiverd.config import SourceConfig
from archiverd.errors import UpstreamRefused
from archiverd.keys import ArchiveRequest
from archiverd.storage.base import ObjectInfo
from archiverd.storage.service import StorageService
from archiverd.tasks.model import Task

# -- Deferred helpers (the pytest spelling of SynchronousTestCase's) ---------


def started(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """Run a coroutine as far as it goes now; its outcome as a Deferred."""
    return Deferred.fromCoroutine(coro)


def _outcome(d: Deferred[Any]) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    # Keep the result in the Deferred for later callbacks (and the GC check).
    d.addBoth(lambda _: box[0] if box else None)
    return box


def result_of(d: Deferred[Any]) -> Any:
    """The result ``d`` already has; fails the test if it has none or failed."""
    box = _outcome(d)
    assert box, "expected a result, but the Deferred has not fired"
    if isinstance(box[0], Failure):
        d.addErrback(lambda _: None)
        raise AssertionError(f"expected a result, got {box[0]!r}") from box[0].value
    return box[0]


def failure_of(d: Deferred[Any], *expected: type[BaseException]) -> Failure:
    """The Failure ``d`` already has, which must be one of ``expected``."""
    box = _outcome(d)
    assert box, "expected a failure, but the Deferred has not fired"
    failure = box[0]
    assert isinstance(failure, Failure), f"expected a failure, got {failure!r}"
    d.addErrback(lambda _: None)
    if expected:
        assert failure.check(*expected), f"unexpected {failure!r}"
    return failure


def has_no_result(d: Deferred[Any]) -> None:
    """Assert that ``d`` has no result yet (``d.called`` is also true for a
    Deferred that waits on another)."""
    box = _outcome(d)
    assert not box, f"expected no result yet, got {box[0]!r}"


# -- upstream: a body you drive by hand --------------------------------------


class FakeBodyTransport:
    """The transport a body protocol sees; records producer calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resumeProducing(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def stopProducing(self) -> None:
        self.calls.append("stop")
        self.stopped = True


class FakeResponse:
    """An unbuffered treq response whose body the test writes.

    With ``body`` given, the whole body is delivered (and ended) as soon as a
    protocol asks for it.
    """

    def __init__(self, code: int = 200, body: bytes | None = None) -> None:
        self.code = code
        self.body = body
        self.transport = FakeBodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 (Twisted API)
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self.body is not None:
            if self.body and not self.transport.stopped:
                protocol.dataReceived(self.body)
            self.finish()

    def write(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def finish(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))

    def break_off(self) -> None:
        """End the body the way a dropped connection does."""
        self.protocol.connectionLost(
            Failure(ResponseFailed([Failure(ConnectionLost("peer reset"))]))
        )


class FakeSource:
    """The parts of :class:`archiverd.transfer.sources.Source` a Transfer uses."""

    host = "hg.example"

    def __init__(
        self,
        response: FakeResponse | Deferred[FakeResponse],
        config: SourceConfig | None = None,
    ) -> None:
        self.response = response
        self.config = config or SourceConfig(
            "hgmo", "https://hg.example/{repo}/archive/{rev}.{suffix}"
        )
        self.requested: list[str] = []
        #: What confirm() does: None passes; a Deferred is awaited; an
        #: exception is raised. Each request confirmed is noted.
        self.confirmation: Any = None
        self.confirmed: list[ArchiveRequest] = []
        #: Statuses told to get()'s on_retry before its answer.
        self.retries: list[str] = []

    async def confirm(self, request: ArchiveRequest) -> None:
        self.confirmed.append(request)
        if isinstance(self.confirmation, Deferred):
            await self.confirmation
        elif isinstance(self.confirmation, Exception):
            raise self.confirmation

    def archive_url(self, request: ArchiveRequest) -> str:
        return (
            f"https://hg.example/{request.repo}/archive/{request.rev}.{request.suffix}"
        )

    shown_url = archive_url

    async def get(
        self, url: str, on_retry: Callable[[str], None] | None = None
    ) -> FakeResponse:
        self.requested.append(url)
        for status in self.retries:
            if on_retry is not None:
                on_retry(status)
        if isinstance(self.response, Deferred):
            return await self.response
        return self.response

    async def refusal(self, response: FakeResponse, url: str) -> UpstreamRefused:
        return UpstreamRefused(self.host, response.code, url, "not here")


# -- async storage (what Transfer talks to) ----------------------------------


@dataclass
class Upload:
    region: str
    key: str
    parts: dict[int, bytes] = field(default_factory=dict)
    state: str = "open"  # then "completed" or "aborted"
    #: Parts whose (threaded) call is still running, by number.
    running: set[int] = field(default_factory=set)
    #: ``running`` as it was when abort_upload was called.
    running_at_abort: set[int] | None = None


@dataclass
class HeldPart:
    """An upload_part call that waits until the test releases it."""

    region: str
    number: int
    deferred: Deferred[str]
    upload: Upload
    released: bool = False


class RecordingStorage:
    """An async StorageService look-alike that keeps objects in a dict.

    ``fail_on(method, region, number)`` makes a call fail; with ``hold_parts``
    every upload_part waits until :meth:`release` (as a call on the storage
    thread pool does: cancelling its Deferred does not stop the work).
    """

    def __init__(self, regions: tuple[str, ...] = ("east", "west")) -> None:
        self.regions = regions
        self.default_region = regions[0]
        self.calls: list[tuple[Any, ...]] = []
        self.objects: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, Upload] = {}
        self.hold_parts = False
        self.held: list[HeldPart] = []
        #: (region, part number, checksum) of each upload_part.
        self.checksums: list[tuple[str, int, str | None]] = []
        #: Parts whose checksum was computed (once each, for every region).
        self.checksummed: list[int] = []
        self._failures: dict[tuple[Any, ...], Exception] = {}

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Other work sent to the pool (hashing) runs inline."""
        return fn(*args)

    def fail_on(
        self,
        method: str,
        region: str,
        number: int | None = None,
        error: Exception | None = None,
    ) -> None:
        self._failures[(method, region, number)] = error or OSError("disk on fire")

    def _check(self, method: str, region: str, number: int | None = None) -> None:
        error = self._failures.get((method, region, number))
        if error is not None:
            raise error

    def methods(self) -> list[str]:
        return [call[0] for call in self.calls]

    async def part_checksum(self, data: bytes) -> str | None:
        self.checksummed.append(len(data))
        return f"crc-{len(self.checksummed)}"

    async def start_upload(self, region: str, key: str, info: ObjectInfo) -> str:
        self.calls.append(("start_upload", region))
        self._check("start_upload", region)
        upload_id = f"{region}-{len(self.uploads) + 1}"
        self.uploads[upload_id] = Upload(region, key)
        return upload_id

    async def upload_part(
        self,
        region: str,
        key: str,
        upload_id: str,
        number: int,
        offset: int,
        data: bytes,
        checksum: str | None = None,
    ) -> str:
        self.calls.append(("upload_part", region, number, offset, len(data)))
        self.checksums.append((region, number, checksum))
        upload = self.uploads[upload_id]
        if self.hold_parts:
            held = HeldPart(region, number, Deferred(), upload)
            upload.running.add(number)
            self.held.append(held)
            await held.deferred
        self._check("upload_part", region, number)
        upload.parts[number] = bytes(data)  # the caller reuses its buffer
        return f"etag-{number}"

    def release(self, held: HeldPart | None = None) -> None:
        """Let a held upload_part (default: the oldest) finish."""
        if held is None:
            held = next(h for h in self.held if not h.released)
        held.released = True
        held.upload.running.discard(held.number)
        if not held.deferred.called:
            held.deferred.callback(f"etag-{held.number}")

    def release_all(self) -> None:
        while any(not h.released for h in self.held):
            self.release()

    async def complete_upload(
        self,
        region: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        info: ObjectInfo,
        sha256: str,
        size: int,
    ) -> None:
        self.calls.append(("complete_upload", region, parts))
        self._check("complete_upload", region)
        upload = self.uploads[upload_id]
        assert [n for n, _ in parts] == sorted(upload.parts), "parts out of step"
        data = b"".join(upload.parts[n] for n, _ in parts)
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256
        upload.state = "completed"
        self.objects[(region, key)] = data

    async def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        self.calls.append(("abort_upload", region))
        upload = self.uploads[upload_id]
        upload.state = "aborted"
        upload.running_at_abort = set(upload.running)

    async def put(
        self, region: str, key: str, data: bytes, info: ObjectInfo, sha256: str
    ) -> None:
        self.calls.append(("put", region, len(data)))
        self._check("put", region)
        assert hashlib.sha256(data).hexdigest() == sha256
        self.objects[(region, key)] = data


# -- synchronous storage (what StorageService wraps) -------------------------


class MemoryStorage:
    """A synchronous :class:`archiverd.storage.base.Storage` in a dict.

    Signed URLs name the region's bucket and an expiry time taken from
    ``clock``, so a URL signed later is a different URL.
    """

    def __init__(self, regions: tuple[str, ...], clock: Callable[[], float]) -> None:
        self.regions = tuple(regions)
        self.clock = clock
        self.objects: dict[tuple[str, str], bytes] = {}
        #: Regions whose every call fails, as an unreachable bucket's would.
        self.broken: set[str] = set()
        self._uploads: dict[str, dict[int, bytes]] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def check(self, region: str) -> None:
        if region in self.broken:
            raise OSError(f"{region} is unreachable")

    def exists(self, region: str, key: str) -> bool:
        if region in self.broken:
            raise OSError(f"{region} is unreachable")
        return (region, key) in self.objects

    def stat(self, region: str, key: str) -> str | None:
        if not self.exists(region, key):
            return None
        return hashlib.sha256(self.objects[(region, key)]).hexdigest()

    def part_checksum(self, data: bytes) -> str | None:
        return None

    def signed_url(self, region: str, key: str, expires_in: int) -> str:
        expires = int(self.clock()) + expires_in
        return f"https://{region}.s3.example/{quote(key)}?Expires={expires}"

    def put(
        self, region: str, key: str, data: bytes, info: ObjectInfo, sha256: str
    ) -> None:
        self.objects[(region, key)] = data

    def start_upload(self, region: str, key: str, info: ObjectInfo) -> str:
        upload_id = f"u{len(self._uploads)}"
        self._uploads[upload_id] = {}
        return upload_id

    def upload_part(
        self,
        region: str,
        key: str,
        upload_id: str,
        number: int,
        offset: int,
        data: bytes,
        checksum: str | None = None,
    ) -> str:
        self._uploads[upload_id][number] = bytes(data)
        return str(number)

    def complete_upload(
        self,
        region: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        info: ObjectInfo,
        sha256: str,
        size: int,
    ) -> None:
        uploaded = self._uploads.pop(upload_id)
        self.objects[(region, key)] = b"".join(uploaded[n] for n, _ in parts)

    def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)


class InlineStorageService(StorageService):
    """A StorageService that runs storage calls inline, with no thread pool."""

    def __init__(self, storage: Any, clock: Clock | None = None, **caches: Any) -> None:
        # Caches are off unless a test asks for them, so that every storage
        # call a route makes is seen in ``calls``.
        caches.setdefault("exists_cache_size", 0)
        caches.setdefault("signed_url_reuse", 0)
        super().__init__(storage, reactor=clock or Clock(), threads=1, **caches)
        self.mark_open()
        self.calls: list[str] = []

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls.append(fn.__name__)
        return fn(*args)


# -- tasks -------------------------------------------------------------------


@dataclass
class RunnerCall:
    task: Task
    progress: Callable[[int], None]
    deferred: Deferred[Any] = field(init=False)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.deferred = Deferred(self._cancel)

    def _cancel(self, _: Deferred[Any]) -> None:
        self.cancelled = True


class FakeRunner:
    """A TaskService runner whose every run waits for the test to finish it."""

    def __init__(self) -> None:
        self.calls: list[RunnerCall] = []

    async def __call__(self, task: Task, progress: Callable[[int], None]) -> Any:
        call = RunnerCall(task, progress)
        self.calls.append(call)
        return await call.deferred


# -- upstream over HTTP: a fake hgweb behind StubTreq ------------------------


HGWEB_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head><title>{repo}: error</title></head>\n"
    '<body>\n<div class="main">\n<h2 class="breadcrumb">{repo}</h2>\n'
    "<h3>error</h3>\n<p>\nAn error occurred while processing your request:\n"
    "</p>\n<p>\n{message}\n</p>\n</div>\n</body>\n</html>\n"
)


class FakeHgweb(Resource):
    """Answers hgweb's ``/<repo>/json-rev/<rev>`` from a dict; records paths."""

    isLeaf = True

    def __init__(self, nodes: dict[tuple[str, str], str] | None = None) -> None:
        super().__init__()
        self.nodes = dict(nodes or {})
        self.requests: list[str] = []

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 (Twisted API)
        path = request.path.decode()
        self.requests.append(path)
        repo, _, rev = path.lstrip("/").partition("/json-rev/")
        node = self.nodes.get((repo, rev))
        if node is None:
            request.setResponseCode(404)
            request.setHeader("Content-Type", "text/html; charset=ascii")
            message = f"unknown revision &#39;{rev}&#39;"
            return HGWEB_ERROR_PAGE.format(repo=repo, message=message).encode()
        request.setHeader("Content-Type", "application/json")
        return json.dumps({"node": node, "date": [0, 0], "user": "x"}).encode()


#: A scripted answer that never comes.
HANG = None


class ScriptedUpstream(Resource):
    """Answers each GET with the next scripted ``(code, headers, body)``, or
    never (``HANG``); the last answer repeats. Records the URIs asked for."""

    isLeaf = True

    def __init__(self, *answers: tuple[int, dict[str, str], bytes] | None) -> None:
        super().__init__()
        self.answers = list(answers)
        self.requests: list[str] = []
        #: Each request's headers (names in lower case, first values).
        self.headers: list[dict[str, str]] = []

    def render_GET(self, request: Any) -> Any:  # noqa: N802 (Twisted API)
        self.requests.append(request.uri.decode())
        self.headers.append(
            {
                name.decode().lower(): values[0].decode()
                for name, values in request.requestHeaders.getAllRawHeaders()
            }
        )
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is HANG:
            return NOT_DONE_YET
        code, headers, body = answer
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class StubClient:
    """The HTTP client a Source uses, in memory: StubTreq over ``resource``.

    treq's ``timeout=`` schedules a call on a reactor; this hands it ``clock``
    so that the global reactor is never touched.
    """

    def __init__(self, resource: Resource, clock: Clock) -> None:
        self.stub = StubTreq(resource)
        self.clock = clock

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
        kwargs.setdefault("reactor", self.clock)
        return self.stub.get(url, **kwargs)
