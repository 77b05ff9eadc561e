"""The file backend's signing key: written whole or not at all, and never
used when it is too short to be a key (issue 10, item 9)."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archiverd.config import ConfigError, parse
from archiverd.storage.files import SECRET_FILE, FileStorage, WeakSecret

ROOT = Path(__file__).resolve().parents[2]


def _open_with_no_room(root: Path) -> subprocess.CompletedProcess[str]:
    """``FileStorage(root).open()`` in a process that may write no byte to
    any file (RLIMIT_FSIZE 0): a full disk, as the first start saw it."""
    code = textwrap.dedent(
        f"""
        import resource, signal
        from archiverd.storage.files import FileStorage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        FileStorage({str(root)!r}, ("local",)).open()
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_first_start_on_a_full_disk_leaves_no_secret_behind(tmp_path: Path) -> None:
    """It once left a 0-byte .secret, and every later start signed with an
    empty key."""
    failed = _open_with_no_room(tmp_path)
    assert failed.returncode != 0
    assert "File too large" in failed.stderr or "EFBIG" in failed.stderr
    assert not (tmp_path / SECRET_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["local"]  # no temporary file
    storage = FileStorage(tmp_path, ("local",))
    storage.open()
    secret = (tmp_path / SECRET_FILE).read_bytes()
    assert len(secret) == 64
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", [b"", b"\n", b"short", b"x" * 31 + b"\n"])
def test_a_secret_file_shorter_than_32_bytes_refuses_to_open(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / SECRET_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(WeakSecret) as raised:
        FileStorage(tmp_path, ("local",)).open()
    message = str(raised.value)
    assert "\n" not in message
    assert str(path) in message and "32" in message
    assert "delete it" in message


def test_a_url_forged_with_an_empty_key_is_never_accepted(tmp_path: Path) -> None:
    """The forgery of the issue: HMAC with b"" and a 30-year expiry."""
    (tmp_path / SECRET_FILE).write_bytes(b"")
    (tmp_path / SECRET_FILE).chmod(0o600)
    storage = FileStorage(tmp_path, ("local",))
    with pytest.raises(WeakSecret):
        storage.open()
    expires = "2700000000"
    forged = hmac.new(b"", f"local\nk\n{expires}".encode(), hashlib.sha256)
    with pytest.raises(RuntimeError):
        storage.verify("local", "k", expires, forged.hexdigest())


def test_a_secret_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path.parent / f"{tmp_path.name}-key"
    target.write_bytes(b"k" * 64)
    (tmp_path / SECRET_FILE).symlink_to(target)
    with pytest.raises(WeakSecret, match="symbolic link"):
        FileStorage(tmp_path, ("local",)).open()


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / SECRET_FILE
    path.write_bytes(b"k" * 64)
    path.chmod(0o644)
    with pytest.raises(WeakSecret, match="chmod 600"):
        FileStorage(tmp_path, ("local",)).open()


def test_a_good_secret_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / SECRET_FILE
    path.write_bytes(b"k" * 40 + b"\n")
    path.chmod(0o600)
    storage = FileStorage(tmp_path, ("local",))
    storage.open()
    url = storage.signed_url("local", "k", 60)
    again = FileStorage(tmp_path, ("local",))
    again.open()
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert again.verify("local", "k", query["expires"], query["signature"])
    assert path.read_bytes() == b"k" * 40 + b"\n"


def test_a_configured_secret_needs_32_characters() -> None:
    with pytest.raises(ConfigError, match="storage.file.secret: .*32"):
        parse({"storage": {"file": {"secret": "x" * 31}}})
    assert parse({"storage": {"file": {"secret": "x" * 32}}}).storage.file.secret
