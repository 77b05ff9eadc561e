"""``GET /archiver/files/<region>/<key>``: the objects of the local-files
backend, behind URLs that archiverd signed.

Built in ``tap.py`` from the file backend and mounted on the API, so the web
layer names no backend: it sees only :class:`SignedFiles`, which needs an
object that can check a signature and find a file (:class:`FileBackend`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.web import static
from twisted.web.iweb import IRequest

from archiverd.api.render import arg
from archiverd.errors import Forbidden, NotFound


class StoredFile(Protocol):
    @property
    def path(self) -> Path: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content_disposition(self) -> str: ...
    @property
    def sha256(self) -> str: ...


class FileBackend(Protocol):
    def verify(self, region: str, key: str, expires: str, signature: str) -> bool:
        """True when the URL was signed by this backend and has not expired."""

    def stat(self, region: str, key: str) -> StoredFile | None:
        """The stored object (blocking: run it on the storage pool)."""


#: Runs a blocking call off the reactor thread (the storage pool's ``call``).
Offload = Callable[..., Awaitable[Any]]


class SignedFiles:
    """Serves a file whose URL is signed, with Range support."""

    def __init__(self, backend: FileBackend, offload: Offload) -> None:
        self.backend = backend
        self._offload = offload

    async def serve(self, request: IRequest, region: str, key: str) -> Any:
        """The resource that sends the file; 403 for a bad or expired
        signature, 404 for a missing file."""
        expires = arg(request, "expires")
        signature = arg(request, "signature")
        if not self.backend.verify(region, key, expires, signature):
            raise Forbidden("this link has expired or is not valid")
        stored = await self._offload(self.backend.stat, region, key)
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
        request.prepath.extend(request.postpath)  # type: ignore[attr-defined]
        request.postpath = []  # type: ignore[attr-defined]
        return resource
