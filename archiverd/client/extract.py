"""Extracting an archive safely: the subdir only, the top folder stripped.

What archiverd-fetch does with ``--dest``, the way the old service's client
did, but refusing any member that would land outside the destination: absolute
paths, ``..``, special files, links that point out or pass through another
link, members below a link. The whole archive is checked before anything is
written.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024


class UnsafeArchive(Exception):
    """A member would land outside DIR, or is not a file, folder or link."""


@dataclass
class Entry:
    """An archive member, whatever the format."""

    name: str
    kind: str  # "file", "dir", "symlink", "hardlink" or "other"
    linkname: str = ""
    member: Any = None
    #: Where it goes, as parts relative to DIR (set by :func:`plan`).
    parts: tuple[str, ...] = ()


def _split(name: str, what: str) -> tuple[str, ...]:
    """A member path as parts; refuses absolute paths and ``..``."""
    if name.startswith("/"):
        raise UnsafeArchive(f"refusing {what} with an absolute path: {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"refusing {what} with '..' in its path: {name!r}")
    if any("\0" in p for p in parts):
        raise UnsafeArchive(f"refusing {what} with a NUL in its path: {name!r}")
    return parts


def plan(entries: Iterable[Entry], subdir: str = "") -> list[Entry]:
    """What to extract and where: members under ``<top>/<subdir>/`` with that
    prefix stripped (as the old archiver_client did), after refusing the
    whole archive if any member is unsafe, before anything is written.

    Refused: absolute paths and ``..`` anywhere; devices and fifos; symlinks
    whose target is absolute, leaves DIR, or passes through another symlink;
    hard links to anything but a file extracted before them; any member
    placed below a symlink.
    """
    sub = _split(subdir, "subdir") if subdir else ()
    top: str | None = None
    chosen: list[Entry] = []
    for entry in entries:
        parts = _split(entry.name, "member")
        if entry.kind == "other":
            raise UnsafeArchive(f"refusing special file {entry.name!r}")
        if not parts:
            continue
        if top is None:
            top = parts[0]
        rel = _under(parts, top, sub)
        if not rel:
            continue  # outside the subdir (or the top folder itself)
        if entry.kind == "hardlink":
            target = _under(_split(entry.linkname, "link target"), top, sub)
            entry.linkname = "/".join(target or ())
        entry.parts = rel
        chosen.append(entry)
    symlinks = {e.parts for e in chosen if e.kind == "symlink"}
    files: set[tuple[str, ...]] = set()
    seen: set[tuple[str, ...]] = set()
    for entry in chosen:
        shown = "/".join(entry.parts)
        if any(entry.parts[:i] in symlinks for i in range(1, len(entry.parts))):
            raise UnsafeArchive(f"refusing {shown!r}: it lies below a symlink")
        if entry.parts in symlinks and entry.parts in seen:
            raise UnsafeArchive(f"refusing {shown!r}: a symlink shares its path")
        seen.add(entry.parts)
        if entry.kind == "symlink":
            _check_symlink(entry, symlinks)
        elif entry.kind == "hardlink":
            if not entry.linkname or tuple(entry.linkname.split("/")) not in files:
                raise UnsafeArchive(
                    f"refusing hard link {shown!r}: its target is not a file "
                    "extracted before it"
                )
        if entry.kind in ("file", "hardlink"):
            files.add(entry.parts)
    return chosen


def _under(
    parts: tuple[str, ...], top: str, sub: tuple[str, ...]
) -> tuple[str, ...] | None:
    """``parts`` with ``top/sub`` stripped, or None when not under it."""
    if parts[:1] != (top,) or parts[1 : 1 + len(sub)] != sub:
        return None
    return parts[1 + len(sub) :]


def _check_symlink(entry: Entry, symlinks: set[tuple[str, ...]]) -> None:
    shown = "/".join(entry.parts)
    target = entry.linkname
    if not target or target.startswith("/") or "\0" in target:
        raise UnsafeArchive(f"refusing symlink {shown!r} -> {target!r}: absolute")
    here = list(entry.parts[:-1])
    steps = [p for p in target.split("/") if p not in ("", ".")]
    for i, step in enumerate(steps):
        if step == "..":
            if not here:
                raise UnsafeArchive(
                    f"refusing symlink {shown!r} -> {target!r}: it leaves DIR"
                )
            here.pop()
            continue
        here.append(step)
        if i < len(steps) - 1 and tuple(here) in symlinks:
            raise UnsafeArchive(
                f"refusing symlink {shown!r} -> {target!r}: it goes through "
                "another symlink"
            )


def _tar_entries(tar: tarfile.TarFile) -> Iterator[Entry]:
    for member in tar.getmembers():
        if member.isdir():
            kind = "dir"
        elif member.issym():
            kind = "symlink"
        elif member.islnk():
            kind = "hardlink"
        elif member.isreg():
            kind = "file"
        else:
            kind = "other"
        yield Entry(member.name, kind, member.linkname, member)


def _zip_entries(archive: zipfile.ZipFile) -> Iterator[Entry]:
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if info.is_dir():
            yield Entry(info.filename, "dir", member=info)
        elif stat.S_ISLNK(mode):
            with archive.open(info) as link:
                target = link.read(4096).decode("utf-8", "surrogateescape")
            yield Entry(info.filename, "symlink", target, info)
        elif mode == 0 or stat.S_ISREG(mode):
            yield Entry(info.filename, "file", member=info)
        else:
            yield Entry(info.filename, "other", member=info)


def _inside(dest: Path, parts: tuple[str, ...]) -> Path:
    """The member's path, checked on disk: its folder must resolve inside
    DIR (a symlink already in DIR cannot redirect it)."""
    path = dest.joinpath(*parts)
    parent = Path(os.path.realpath(path.parent))
    if parent != dest and dest not in parent.parents:
        raise UnsafeArchive(f"refusing {'/'.join(parts)!r}: it resolves outside DIR")
    return path


def extract(archive: Path, dest: Path, suffix: str, subdir: str = "") -> int:
    """Extract ``archive`` into ``dest`` (see :func:`plan`); returns the number
    of members written."""
    dest = Path(os.path.realpath(dest))
    if suffix == "zip":
        with zipfile.ZipFile(archive) as zf:
            chosen = plan(_zip_entries(zf), subdir)
            for entry in chosen:
                _extract_zip_member(zf, entry, dest)
        return len(chosen)
    with tarfile.open(archive, "r:*") as tar:
        chosen = plan(_tar_entries(tar), subdir)
        for entry in chosen:
            member = entry.member.replace(
                name="/".join(entry.parts),
                linkname=entry.linkname,
                deep=False,
            )
            _inside(dest, entry.parts)
            _clear_for_link(dest, entry)
            if hasattr(tarfile, "data_filter"):
                # The data filter (3.11.4+) checks everything again, on disk.
                tar.extract(member, dest, filter="data")
            else:  # pragma: no cover (Python before 3.11.4)
                tar.extract(member, dest)
    return len(chosen)


def _clear_for_link(dest: Path, entry: Entry) -> None:
    """Links replace what is in their way, as tar does."""
    if entry.kind in ("symlink", "hardlink"):
        path = dest.joinpath(*entry.parts)
        if path.is_symlink() or path.is_file():
            path.unlink()


def _extract_zip_member(zf: zipfile.ZipFile, entry: Entry, dest: Path) -> None:
    path = _inside(dest, entry.parts)
    if entry.kind == "dir":
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _inside(dest, entry.parts)  # again, now that its folders exist
    if entry.kind == "symlink":
        _clear_for_link(dest, entry)
        os.symlink(entry.linkname, path)
        return
    executable = (entry.member.external_attr >> 16) & 0o111
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o755 if executable else 0o644)
    with os.fdopen(fd, "wb") as out, zf.open(entry.member) as src:
        while chunk := src.read(CHUNK):
            out.write(chunk)
