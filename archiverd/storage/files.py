"""Local-files storage: the embedded default for one host with no cloud account.

Layout under the root folder, one folder per region::

    <root>/.secret                     HMAC key for signed URLs (0600, >= 32 bytes)
    <root>/<region>/.partial/<id>      uploads in progress
    <root>/<region>/<hh>/<hash>        complete objects
    <root>/<region>/<hh>/<hash>.json   their metadata (key, size, sha256, type)

``<hash>`` is the sha256 of the key, so no key can name a path outside the
region's folder, and a key that is a prefix of another (an archive and one of
its subdirs) never collides with it. An upload is written under ``.partial``
and renamed into place only when complete, so a reader never sees part of an
object; leftovers of a crash are removed by :meth:`FileStorage.open`.

Reading never follows a link below a region's folder: objects, their metadata
and the ``<hh>`` folders are opened with ``O_NOFOLLOW`` relative to the folder
above them, so whatever is put in the store, a signed URL reads only regular
files inside it (the root and the region folders themselves are the
operator's to place, and may be links).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from archiverd.storage.base import ObjectInfo
from archiverd.storage.secret import (
    MIN_SECRET,
    WeakSecret,
    create_atomically,
    read_secret,
)

PARTIAL = ".partial"
SECRET_FILE = ".secret"
#: Held (flock) while an object is put in place or evicted, by every daemon.
LOCK_FILE = ".lock"
#: The errors of a file system with no room left.
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Metadata files are a few hundred bytes; a larger one is not ours.
_MAX_META = 64 * 1024
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO put in an object's place must not wait for a writer.
_READ = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW


@dataclass(frozen=True)
class StoredFile:
    """A complete object, open for reading, and what to serve it as.

    The caller owns ``file`` and closes it.
    """

    file: BinaryIO
    size: int
    #: Seconds since the epoch of the object's last change.
    mtime: float
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
        #: Set when a write found the file system full (retention then runs).
        self.full = threading.Event()
        self._counted = threading.Lock()
        #: Bytes of the objects put in place since :meth:`take_published`.
        self._published = 0

    # -- life cycle ------------------------------------------------------

    def open(self) -> None:
        for region in self.regions:
            partial = self.root / region / PARTIAL
            partial.mkdir(parents=True, exist_ok=True)
            for leftover in partial.iterdir():
                leftover.unlink()
        secret = self._load_secret() if self._secret is None else self._secret
        if len(secret) < MIN_SECRET:
            raise WeakSecret(
                f"storage.file.secret: use at least {MIN_SECRET} characters"
            )
        self._secret = secret

    def _load_secret(self) -> bytes:
        path = self.root / SECRET_FILE
        try:
            return read_secret(path)
        except FileNotFoundError:
            pass
        secret = secrets.token_hex(32).encode()
        create_atomically(path, secret)
        return read_secret(path)  # another daemon's, if it was first

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

    def object_path(self, region: str, key: str) -> Path:
        """Where the object of ``key`` lives (its metadata: ``.json`` beside)."""
        return self._object_path(region, key)

    @contextmanager
    def locked(self, region: str) -> Iterator[None]:
        """The region's lock, held across processes: objects are put in place
        and evicted under it, so an eviction never removes a newer copy."""
        fd = os.open(
            self._region(region) / LOCK_FILE, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def take_published(self) -> int:
        """Bytes put in place since the last call."""
        with self._counted:
            published, self._published = self._published, 0
        return published

    def _partial_path(self, region: str, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self._region(region) / PARTIAL / upload_id

    # -- reading ---------------------------------------------------------

    def check(self, region: str) -> None:
        partial = self._region(region) / PARTIAL
        if not os.access(partial, os.W_OK | os.X_OK):
            raise PermissionError(f"{partial} is not writable")

    def _folder(self, region: str, key: str) -> tuple[int, str]:
        """An fd of the object's ``<hh>`` folder (reached without following
        a link) and the object's name in it."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        region_fd = os.open(self._region(region), _FOLDER & ~os.O_NOFOLLOW)
        try:
            return os.open(digest[:2], _FOLDER, dir_fd=region_fd), digest
        finally:
            os.close(region_fd)

    def exists(self, region: str, key: str) -> bool:
        """Whether the object is stored whole: what :meth:`open_object` would
        serve (so an object cut short at rest is fetched and stored again)."""
        stored = self.open_object(region, key)
        if stored is None:
            return False
        stored.file.close()
        return True

    def stat(self, region: str, key: str) -> str | None:
        """The stored object's sha256 (from its metadata), or None."""
        stored = self.open_object(region, key)
        if stored is None:
            return None
        stored.file.close()
        return stored.sha256

    def stored_at(self, region: str, key: str) -> float | None:
        """When the object was stored or last refreshed (its mtime, which
        archiverd sets from its own clock), or None if it is not stored."""
        stored = self.open_object(region, key)
        if stored is None:
            return None
        stored.file.close()
        return stored.mtime

    def refresh(
        self, region: str, key: str, stored_before: float = float("inf")
    ) -> float | None:
        """Restart the object's expiry, if it was stored at or before
        ``stored_before``: its stored time becomes now. Its stored time;
        None if it is not stored."""
        stored = self.open_object(region, key)
        if stored is None:
            return None
        try:
            if stored.mtime > stored_before:
                return stored.mtime  # refreshed by another daemon
            now = self._clock()
            os.utime(stored.file.fileno(), (now, now))
        finally:
            stored.file.close()
        return now

    def open_object(self, region: str, key: str) -> StoredFile | None:
        """The stored object, open, with its metadata; None if there is no
        such object, or only a link, a FIFO or anything but a regular file
        where it should be, or metadata that is not its own, or a file whose
        size is not the one recorded when it was stored."""
        try:
            folder, name = self._folder(region, key)
        except OSError:
            return None
        try:
            meta = _read_meta(folder, name + ".json", key)
            if meta is None:
                return None
            fd = os.open(name, _READ, dir_fd=folder)
        except OSError:
            return None
        finally:
            os.close(folder)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or meta["size"] not in (None, info.st_size):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return StoredFile(
            os.fdopen(fd, "rb"),
            info.st_size,
            info.st_mtime,
            meta["content_type"],
            meta["content_disposition"],
            meta["sha256"],
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
        if target.parent.is_symlink():  # never write through a link either
            raise OSError(f"{target.parent} is a symbolic link")
        meta = {
            "key": key,
            "size": size,
            "sha256": sha256,
            "content_type": info.content_type,
            "content_disposition": info.content_disposition,
        }
        meta_partial = partial.with_suffix(".json")
        with _full_is_said(self, region):
            meta_partial.write_text(json.dumps(meta))
        # Stored now, on archiverd's clock: the object's mtime is when it was
        # stored (its expiry counts from it), its metadata's when it was
        # last used (retention evicts the least recently used first).
        now = self._clock()
        os.utime(meta_partial, (now, now))
        os.utime(partial, (now, now))
        with self.locked(region):
            os.replace(meta_partial, target.with_suffix(".json"))
            os.replace(partial, target)
        with self._counted:
            self._published += size

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

    def part_checksum(self, data: bytes) -> str | None:
        """None: a positioned write into a local file needs no checksum."""
        return None

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
        fd = os.open(self._partial_path(region, upload_id), os.O_WRONLY | _NOFOLLOW)
        try:
            view = memoryview(data)
            with _full_is_said(self, region):
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
        fd = os.open(partial, os.O_RDONLY | _NOFOLLOW)
        try:
            held = os.fstat(fd).st_size
            if held != size:
                raise OSError(f"upload {upload_id} holds {held} bytes, expected {size}")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._publish(region, key, partial, info, sha256, size)

    def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        partial = self._partial_path(region, upload_id)
        partial.unlink(missing_ok=True)
        partial.with_suffix(".json").unlink(missing_ok=True)

    def abort_pending(self, region: str, key: str) -> int:
        """Nothing to do here: partial files are named by upload, not key, and
        a dead daemon's are removed when storage next opens on its host."""
        return 0


@contextmanager
def _full_is_said(storage: FileStorage, region: str) -> Iterator[None]:
    """A write that finds no room left flags the storage full (retention
    then evicts at once) and fails with a message that says so."""
    try:
        yield
    except OSError as e:
        if e.errno not in _FULL:
            raise
        storage.full.set()
        raise OSError(e.errno, f"storage {region} is full: {e.strerror}") from None


# -- reading without following links ------------------------------------------


def _read_meta(folder: int, name: str, key: str) -> dict[str, Any] | None:
    """An object's metadata, if it is a regular file of ours naming ``key``."""
    fd = os.open(name, _READ, dir_fd=folder)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = f.read(_MAX_META + 1)
    try:
        meta = json.loads(raw) if len(raw) <= _MAX_META else None
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None
    meta.setdefault("sha256", "")
    meta.setdefault("size", None)
    fields = ("content_type", "content_disposition", "sha256")
    if not all(isinstance(meta.get(f), str) for f in fields):
        return None
    if meta["size"] is not None and type(meta["size"]) is not int:
        return None
    return meta
