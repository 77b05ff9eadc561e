"""Crafted archives for the client's tests: hg-like trees, tar and zip, with
links and devices, so extraction can be tried on what a server could send."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

TOP = "ash-42bf8560b395"


def make_tar(entries: list[tuple[str, Any]], mode: str = "w:gz") -> bytes:
    """entries: (name, bytes) files, (name, None) dirs, (name, ("sym"|"lnk"|
    "dev", target)) links and devices."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, value in entries:
            info = tarfile.TarInfo(name)
            if value is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif isinstance(value, tuple):
                kind, target = value
                info.type = {
                    "sym": tarfile.SYMTYPE,
                    "lnk": tarfile.LNKTYPE,
                    "dev": tarfile.CHRTYPE,
                }[kind]
                info.linkname = target
                tar.addfile(info)
            else:
                info.size = len(value)
                info.mode = 0o755 if name.endswith(".py") else 0o644
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def make_zip(entries: list[tuple[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, value in entries:
            if value is None:
                zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            elif isinstance(value, tuple):
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, value[1].encode())
            else:
                info = zipfile.ZipInfo(name)
                mode = 0o755 if name.endswith(".py") else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
                zf.writestr(info, value)
    return buf.getvalue()


HG_LIKE = [
    (f"{TOP}/.hg_archival.txt", b"repo: x\n"),
    (f"{TOP}/README", b"readme\n"),
    (f"{TOP}/testing/mozharness/mozharness/__init__.py", b"version = 1\n"),
    (f"{TOP}/testing/mozharness/scripts/run.py", b"print('run')\n"),
    (f"{TOP}/testing/mozharness/link", ("sym", "scripts/run.py")),
    (f"{TOP}/testing/other/x.txt", b"x\n"),
]


def tree(root: Path) -> dict[str, Any]:
    """Every path under root: file bytes, 'dir', or '-> target'."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes()
    return out
