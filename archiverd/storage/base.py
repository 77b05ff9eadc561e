"""The storage interface: where archives are kept, one place per region.

Implementations are synchronous and know nothing of Twisted; they run on the
storage thread pool (:mod:`archiverd.storage.service`). Every method may be
called from several threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class MissingStorage(Exception):
    """What a region is configured to use does not exist (a bucket): no
    retry will help; archiverd refuses to start. The message names it."""


@dataclass(frozen=True)
class ObjectInfo:
    """What an object carries besides its bytes."""

    content_type: str
    filename: str

    @property
    def content_disposition(self) -> str:
        return f'attachment; filename="{self.filename}"'


class Storage(Protocol):
    """Objects by key in several regions, uploaded in parts."""

    #: Configured regions; the first is the default.
    regions: tuple[str, ...]

    def open(self) -> None:
        """Prepare for use (clients, folders, secrets); may block."""

    def close(self) -> None:
        """Release what :meth:`open` took."""

    def check(self, region: str) -> None:
        """Raise if the region's storage cannot be used (for health checks):
        :class:`MissingStorage` when it does not exist at all."""

    def exists(self, region: str, key: str) -> bool:
        """True when a complete object is stored under ``key``."""

    def stat(self, region: str, key: str) -> str | None:
        """The sha256 stored with the complete object under ``key`` (``""``
        when it has none recorded), or None when there is no such object."""

    def signed_url(self, region: str, key: str, expires_in: int) -> str:
        """A URL that lets its holder GET the object for ``expires_in`` seconds.

        It may be relative to archiverd itself (it then starts with ``/``).
        It is made without asking the storage anything (no request), so it
        runs apart from the calls that do and may be stuck.
        """

    def put(
        self, region: str, key: str, data: bytes, info: ObjectInfo, sha256: str
    ) -> None:
        """Store a whole (small) object in one request."""

    def start_upload(self, region: str, key: str, info: ObjectInfo) -> str:
        """Begin a multipart upload; returns its upload id."""

    def part_checksum(self, data: bytes) -> str | None:
        """The checksum that every region's :meth:`upload_part` of ``data``
        is sent with (computed once per part, whatever the number of
        regions), or None when this storage takes none."""

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
        """Store part ``number`` (from 1) that starts at byte ``offset``,
        with its :meth:`part_checksum` when it has one.

        Returns the part's tag for :meth:`complete_upload`.
        """

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
        """Make the object visible, whole, with its sha256 recorded (what
        :meth:`stat` answers) at no cost of writing its bytes again. Returns
        once the object is visible."""

    def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and every part stored for it."""

    def abort_pending(self, region: str, key: str) -> int:
        """Abort every unfinished upload of ``key`` (left by a daemon that
        died holding its lock); how many there were."""
