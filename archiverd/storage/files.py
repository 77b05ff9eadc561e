"""Local-files storage: the embedded default for one host with no cloud account.

Layout under the root folder, one folder per region::

    <root>/.secret                     HMAC key for signed URLs (0600)
    <root>/<region>/.partial/<id>      uploads in progress
    <root>/<region>/<hh>/<hash>        complete objects
    <root>/<region>/<hh>/<hash>.json   their metadata (key, size, sha256, type)

``<hash>`` is the sha256 of the key, so no key can name a path outside the
region's folder, and a key that is a prefix of another (an archive and one of
its subdirs) never collides with it. An upload is written under ``.partial``
and renamed into place only when complete, so a reader never sees part of an
object; leftovers of a crash are removed by :meth:`FileStorage.open`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from archiverd.storage.base import ObjectInfo

PARTIAL = ".partial"
SECRET_FILE = ".secret"


@dataclass(frozen=True)
class StoredFile:
    """A complete object on disk and what to serve it as."""

    path: Path
    size: int
    content_type: str
    content_disposition: str
    #: Hex digest of the object's bytes ("" if its metadata lacks one).
    sha256: str = ""


class FileStorage:
    """Objects as files under ``root``; signed URLs point at archiverd itself."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        regions: tuple[str, ...],
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
        url_prefix: str = "/archiver/files",
    ) -> None:
        self.root = Path(root).absolute()
        self.regions = tuple(regions)
        self._secret = secret.encode() if secret else None
        self._clock = clock
        self._url_prefix = url_prefix

    # -- life cycle ------------------------------------------------------

    def open(self) -> None:
        for region in self.regions:
            partial = self.root / region / PARTIAL
            partial.mkdir(parents=True, exist_ok=True)
            for leftover in partial.iterdir():
                leftover.unlink()
        if self._secret is None:
            self._secret = self._load_secret()

    def _load_secret(self) -> bytes:
        path = self.root / SECRET_FILE
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        secret = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        return secret

    def close(self) -> None:
        pass

    # -- paths -----------------------------------------------------------

    def _region(self, region: str) -> Path:
        if region not in self.regions:
            raise KeyError(f"unknown region {region!r}")
        return self.root / region

    def _object_path(self, region: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self._region(region) / digest[:2] / digest

    def _partial_path(self, region: str, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self._region(region) / PARTIAL / upload_id

    # -- reading ---------------------------------------------------------

    def check(self, region: str) -> None:
        partial = self._region(region) / PARTIAL
        if not os.access(partial, os.W_OK | os.X_OK):
            raise PermissionError(f"{partial} is not writable")

    def exists(self, region: str, key: str) -> bool:
        return self._object_path(region, key).is_file()

    def stat(self, region: str, key: str) -> StoredFile | None:
        """The stored object and its metadata, or None."""
        path = self._object_path(region, key)
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            size = path.stat().st_size
        except (OSError, ValueError):
            return None
        if meta.get("key") != key:
            return None
        return StoredFile(
            path,
            size,
            meta["content_type"],
            meta["content_disposition"],
            meta.get("sha256", ""),
        )

    # -- signing ---------------------------------------------------------

    def _signature(self, region: str, key: str, expires: int) -> str:
        if self._secret is None:
            raise RuntimeError("FileStorage.open() was not called")
        message = f"{region}\n{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, region: str, key: str, expires_in: int) -> str:
        self._region(region)
        expires = int(self._clock()) + expires_in
        query = urlencode(
            {"expires": expires, "signature": self._signature(region, key, expires)}
        )
        return f"{self._url_prefix}/{quote(region)}/{quote(key)}?{query}"

    def verify(self, region: str, key: str, expires: str, signature: str) -> bool:
        """True when the URL was signed here and has not expired.

        The signature is compared in constant time.
        """
        digits = expires.isascii() and expires.isdigit()
        if region not in self.regions or not digits or len(expires) > 12:
            return False
        expected = self._signature(region, key, int(expires))
        valid = hmac.compare_digest(expected.encode(), signature.encode())
        return valid and int(expires) >= self._clock()

    # -- writing ---------------------------------------------------------

    def _publish(
        self,
        region: str,
        key: str,
        partial: Path,
        info: ObjectInfo,
        sha256: str,
        size: int,
    ) -> None:
        target = self._object_path(region, key)
        target.parent.mkdir(exist_ok=True)
        meta = {
            "key": key,
            "size": size,
            "sha256": sha256,
            "content_type": info.content_type,
            "content_disposition": info.content_disposition,
        }
        meta_partial = partial.with_suffix(".json")
        meta_partial.write_text(json.dumps(meta))
        os.replace(meta_partial, target.with_suffix(".json"))
        os.replace(partial, target)

    def put(
        self, region: str, key: str, data: bytes, info: ObjectInfo, sha256: str
    ) -> None:
        upload_id = self.start_upload(region, key, info)
        try:
            self.upload_part(region, key, upload_id, 1, 0, data)
            self._publish(
                region,
                key,
                self._partial_path(region, upload_id),
                info,
                sha256,
                len(data),
            )
        except BaseException:
            self.abort_upload(region, key, upload_id)
            raise

    def start_upload(self, region: str, key: str, info: ObjectInfo) -> str:
        upload_id = uuid.uuid4().hex
        self._partial_path(region, upload_id).touch(exist_ok=False)
        return upload_id

    def upload_part(
        self,
        region: str,
        key: str,
        upload_id: str,
        number: int,
        offset: int,
        data: bytes,
    ) -> str:
        fd = os.open(self._partial_path(region, upload_id), os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        finally:
            os.close(fd)
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
        partial = self._partial_path(region, upload_id)
        if partial.stat().st_size != size:
            raise OSError(
                f"upload {upload_id} holds {partial.stat().st_size} "
                f"bytes, expected {size}"
            )
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        self._publish(region, key, partial, info, sha256, size)

    def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        partial = self._partial_path(region, upload_id)
        partial.unlink(missing_ok=True)
        partial.with_suffix(".json").unlink(missing_ok=True)

    def abort_pending(self, region: str, key: str) -> int:
        """Nothing to do here: partial files are named by upload, not key, and
        a dead daemon's are removed when storage next opens on its host."""
        return 0
