"""``GET /archiver/files/<region>/<key>``: the objects of the local-files
backend, behind URLs that archiverd signed.

Built in ``tap.py`` from the file backend and mounted on the API, so the web
layer names no backend: it sees only :class:`SignedFiles`, which needs an
object that can check a signature and open a file (:class:`FileBackend`).

The backend opens the object itself, without following links (on the storage
pool); this module only sends the open file. It sends at most the object's
size (:mod:`archiverd.api.ranges`), and never fewer bytes than it announced:
a file that ends early (cut behind archiverd's back) aborts the connection, so
the client sees a failed download, not a short one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO, Protocol

from twisted.logger import Logger
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from archiverd.api.ranges import Span, Unsatisfiable, if_range_holds, requested_span
from archiverd.api.render import arg
from archiverd.errors import Forbidden, NotFound

#: Bytes read from the file per write to the connection.
CHUNK = 64 * 1024


class StoredFile(Protocol):
    @property
    def file(self) -> BinaryIO: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> float: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content_disposition(self) -> str: ...
    @property
    def sha256(self) -> str: ...


class FileBackend(Protocol):
    def verify(self, region: str, key: str, expires: str, signature: str) -> bool:
        """True when the URL was signed by this backend and has not expired."""

    def open_object(self, region: str, key: str) -> StoredFile | None:
        """The stored object, open (blocking: run it on the storage pool)."""


#: Runs a blocking call off the reactor thread (the storage pool's ``call``).
Offload = Callable[..., Awaitable[Any]]
#: Told of an object found missing behind a valid signature (region, key, cause).
Forget = Callable[[str, str, str], None]


class SignedFiles:
    """Serves a file whose URL is signed, with Range support."""

    def __init__(
        self, backend: FileBackend, offload: Offload, forget: Forget | None = None
    ) -> None:
        self.backend = backend
        self._offload = offload
        self._forget = forget

    async def serve(self, request: IRequest, region: str, key: str) -> Any:
        """The resource that sends the file; 403 for a bad or expired
        signature, 404 for a missing file."""
        expires = arg(request, "expires")
        signature = arg(request, "signature")
        if not self.backend.verify(region, key, expires, signature):
            raise Forbidden("this link has expired or is not valid")
        stored = await self._offload(self.backend.open_object, region, key)
        if stored is None:
            # Signed here, so archiverd thought it stored: never redirect
            # to it again; the next request for it stores it anew.
            if self._forget is not None:
                self._forget(region, key, "files")
            raise NotFound("no such file")
        # The key spans several path segments; the file is this leaf itself.
        request.prepath.extend(request.postpath)  # type: ignore[attr-defined]
        request.postpath = []  # type: ignore[attr-defined]
        return OpenFile(stored)


class OpenFile(Resource):
    """One open object, answered once: 200, 206, 304, 412 or 416."""

    isLeaf = True

    def __init__(self, stored: StoredFile) -> None:
        super().__init__()
        self.stored = stored

    def render_GET(self, request: Any) -> Any:  # noqa: N802 (Twisted API)
        stored = self.stored
        request.setHeader("Accept-Ranges", "bytes")
        request.setHeader("Content-Type", stored.content_type)
        request.setHeader("Content-Disposition", stored.content_disposition)
        request.setHeader("Cache-Control", "private, max-age=3600, immutable")
        etag = f'"{stored.sha256}"' if stored.sha256 else ""
        if stored.sha256:  # as S3 serves its object metadata
            request.setHeader("x-amz-meta-sha256", stored.sha256)
        cached = request.setLastModified(stored.mtime)
        if etag and request.setETag(etag.encode()) is http.CACHED:
            cached = http.CACHED
        if cached is http.CACHED or request.code != http.OK:  # 304 or 412
            stored.file.close()
            return b""
        try:
            span = self._span(request, etag)
        except Unsatisfiable as e:
            stored.file.close()
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader("Content-Range", str(e))
            request.setHeader("Content-Length", "0")
            return b""
        if span is None:
            span = Span(0, stored.size, stored.size)
        else:
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader("Content-Range", span.content_range)
        request.setHeader("Content-Length", str(span.length))
        if request.method == b"HEAD":
            stored.file.close()
            return b""
        FileProducer(request, stored.file, span).start()
        return NOT_DONE_YET

    def render_HEAD(self, request: Any) -> Any:  # noqa: N802 (Twisted API)
        return self.render_GET(request)

    def _span(self, request: Any, etag: str) -> Span | None:
        """The part of the object asked for; None for all of it."""
        header = request.getHeader(b"range")
        if header is None or request.method != b"GET":  # RFC 9110 14.2
            return None
        last_modified = http.datetimeToString(request.lastModified).decode()
        if_range = request.getHeader(b"if-range")
        if not if_range_holds(
            if_range and if_range.decode("latin-1"), etag, last_modified
        ):
            return None
        return requested_span(header.decode("latin-1"), self.stored.size)


class FileProducer:
    """Writes ``span`` of an open file to the request as the client reads
    (a pull producer), then closes the file."""

    log = Logger()

    def __init__(self, request: Any, file: BinaryIO, span: Span) -> None:
        self.request: Any = request
        self.file = file
        self.remaining = span.length
        self.file.seek(span.start)

    def start(self) -> None:
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        if self.request is None:
            return
        data = self.file.read(min(CHUNK, self.remaining)) if self.remaining else b""
        if self.remaining and not data:
            self.log.warn(
                "{uri}: the file ended {n} bytes early; aborting the connection",
                uri=self.request.uri,
                n=self.remaining,
            )
            self.request.channel.transport.abortConnection()
            self.stopProducing()
            return
        self.remaining -= len(data)
        request = self.request
        if data:
            request.write(data)  # may call resumeProducing again, re-entrantly
        if not self.remaining and self.request is not None:
            self.stopProducing()
            request.unregisterProducer()
            request.finish()

    def stopProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.file.close()
        self.request = None
