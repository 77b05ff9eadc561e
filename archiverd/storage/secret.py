"""The file backend's signing key: read only from a regular file its owner
alone may read, written whole or not at all."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path

#: Bytes of HMAC key below which signed URLs could be forged.
MIN_SECRET = 32
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW


class WeakSecret(ValueError):
    """The signing key cannot be trusted; the message says how to fix it."""


def read_secret(path: Path) -> bytes:
    """The key in ``path``: a regular file only its owner may read, of at
    least :data:`MIN_SECRET` bytes. FileNotFoundError if there is none."""
    fix = f"delete it and archiverd will write a new one ({path}"
    fix += ": links signed with the old one stop working), or set storage.file.secret"
    try:
        fd = os.open(path, _READ)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WeakSecret(f"{path} is a symbolic link: {fix}") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise WeakSecret(f"{path} is not a regular file: {fix}")
        if info.st_mode & 0o077:
            raise WeakSecret(
                f"{path} can be read by other users (mode "
                f"{stat.S_IMODE(info.st_mode):o}): chmod 600 {path}"
            )
        secret = f.read(4096).strip()
    if len(secret) < MIN_SECRET:
        raise WeakSecret(
            f"{path} holds {len(secret)} bytes, fewer than the {MIN_SECRET} "
            f"a signing key needs: {fix}"
        )
    return secret


def create_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file, written and
    flushed to disk, then linked into place (which never replaces a file
    another process put there first) and the folder flushed too."""
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        temporary.unlink(missing_ok=True)
