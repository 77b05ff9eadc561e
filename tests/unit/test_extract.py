"""archiverd.client.extract: what archiverd-fetch --dest extracts from crafted
archives, malicious ones included, and that it refuses them before writing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from archives import HG_LIKE, TOP, make_tar, make_zip, tree

from archiverd.client.extract import UnsafeArchive, extract


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "out" / "dest"
    path.mkdir(parents=True)
    return path


# -- extraction: what lands where ------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "maker"),
    [
        ("tar.gz", lambda e: make_tar(e, "w:gz")),
        ("tar.bz2", lambda e: make_tar(e, "w:bz2")),
        ("zip", make_zip),
    ],
)
def test_extract_keeps_the_subdir_with_top_folder_and_subdir_stripped(
    tmp_path: Path, dest: Path, suffix: str, maker: Callable[[Any], bytes]
) -> None:
    """As the old client did: members under <top>/<subdir>/, prefix gone."""
    archive = write(tmp_path, f"a.{suffix}", maker(HG_LIKE))
    assert extract(archive, dest, suffix, "testing/mozharness") == 3
    assert tree(dest) == {
        "link": "-> scripts/run.py",
        "mozharness": "dir",
        "mozharness/__init__.py": b"version = 1\n",
        "scripts": "dir",
        "scripts/run.py": b"print('run')\n",
    }
    assert os.stat(dest / "scripts/run.py").st_mode & 0o100


def test_extract_without_subdir_strips_only_the_top_folder(
    tmp_path: Path, dest: Path
) -> None:
    archive = write(tmp_path, "a.tar.gz", make_tar(HG_LIKE))
    extract(archive, dest, "tar.gz")
    assert (dest / "README").read_bytes() == b"readme\n"
    assert (dest / "testing/other/x.txt").read_bytes() == b"x\n"
    assert not (dest / TOP).exists()


def test_extract_an_inside_hard_link(tmp_path: Path, dest: Path) -> None:
    entries = [
        (f"{TOP}/sub/a.txt", b"a\n"),
        (f"{TOP}/sub/b.txt", ("lnk", f"{TOP}/sub/a.txt")),
    ]
    extract(write(tmp_path, "a.tar", make_tar(entries)), dest, "tar.gz", "sub")
    assert (dest / "b.txt").read_bytes() == b"a\n"


# -- extraction: what is refused -------------------------------------------

MALICIOUS_TARS = {
    "absolute path": [(f"{TOP}/ok", b"ok"), ("/tmp/evil", b"x")],
    "dot-dot path": [(f"{TOP}/ok", b"ok"), (f"{TOP}/../../evil", b"x")],
    "absolute symlink": [(f"{TOP}/ok", b"ok"), (f"{TOP}/l", ("sym", "/etc"))],
    "symlink leaving DIR": [(f"{TOP}/ok", b"ok"), (f"{TOP}/l", ("sym", "../x"))],
    "deep symlink leaving DIR": [
        (f"{TOP}/ok", b"ok"),
        (f"{TOP}/a/b/l", ("sym", "../../../../outside")),
    ],
    "file written through a symlink": [
        (f"{TOP}/ok", b"ok"),
        (f"{TOP}/l", ("sym", "a")),
        (f"{TOP}/l/evil", b"x"),
    ],
    "symlink chained through a symlink": [
        # d1/d2/s -> .. is d1 (inside); lexically a's target is inside,
        # really it is DIR/.. once s exists.
        (f"{TOP}/ok", b"ok"),
        (f"{TOP}/a", ("sym", "d1/d2/s/../../outside")),
        (f"{TOP}/d1/d2/s", ("sym", "..")),
    ],
    "symlink replaced by a file": [
        (f"{TOP}/ok", b"ok"),
        (f"{TOP}/l", ("sym", "ok")),
        (f"{TOP}/l", b"x"),
    ],
    "hard link to outside": [
        (f"{TOP}/ok", b"ok"),
        (f"{TOP}/h", ("lnk", "/etc/passwd")),
    ],
    "hard link to another top folder": [
        (f"{TOP}/ok", b"ok"),
        (f"{TOP}/h", ("lnk", "other/file")),
    ],
    "hard link to a later member": [
        (f"{TOP}/h", ("lnk", f"{TOP}/ok")),
        (f"{TOP}/ok", b"ok"),
    ],
    "device": [(f"{TOP}/ok", b"ok"), (f"{TOP}/dev", ("dev", ""))],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
def test_a_malicious_tar_is_refused_before_anything_is_written(
    tmp_path: Path, dest: Path, case: str
) -> None:
    archive = write(tmp_path, "evil.tar.gz", make_tar(MALICIOUS_TARS[case]))
    with pytest.raises(UnsafeArchive):
        extract(archive, dest, "tar.gz")
    assert tree(dest) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "out"]
    assert tree(tmp_path / "out") == {"dest": "dir"}


MALICIOUS_ZIPS = {
    "absolute path": [(f"{TOP}/ok", b"ok"), ("/tmp/evil", b"x")],
    "dot-dot path": [(f"{TOP}/ok", b"ok"), (f"{TOP}/../../evil", b"x")],
    "symlink leaving DIR": [(f"{TOP}/ok", b"ok"), (f"{TOP}/l", ("sym", "../x"))],
    "absolute symlink": [(f"{TOP}/ok", b"ok"), (f"{TOP}/l", ("sym", "/etc"))],
    "file written through a symlink": [
        (f"{TOP}/l", ("sym", ".")),
        (f"{TOP}/l/evil", b"x"),
    ],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_ZIPS))
def test_a_malicious_zip_is_refused_before_anything_is_written(
    tmp_path: Path, dest: Path, case: str
) -> None:
    archive = write(tmp_path, "evil.zip", make_zip(MALICIOUS_ZIPS[case]))
    with pytest.raises(UnsafeArchive):
        extract(archive, dest, "zip")
    assert tree(dest) == {}
    assert tree(tmp_path / "out") == {"dest": "dir"}


@pytest.mark.parametrize("suffix", ["tar.gz", "zip"])
def test_a_symlink_already_in_dest_cannot_redirect_a_member(
    tmp_path: Path, dest: Path, suffix: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    entries = [(f"{TOP}/sub/evil", b"x")]
    data = make_zip(entries) if suffix == "zip" else make_tar(entries)
    with pytest.raises(UnsafeArchive):
        extract(write(tmp_path, f"a.{suffix}", data), dest, suffix)
    assert list(outside.iterdir()) == []
