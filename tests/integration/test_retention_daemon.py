"""Retention and expiry on a real daemon (twistd) over the file backend:
a root with max_bytes filled past its limit under load settles at the
low-water mark with no failed hit and no partial file; an object deleted out
of band is never redirected to once the daemon learns of it, and is stored
again with one upstream GET; with expire_after (the wall clock stepped by
libfaketime), no redirect to an object past its deadline, and a popular
archive is refreshed before it."""

from __future__ import annotations

import glob
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from faults import FaultyUpstream
from polling import eventually_blocking
from processes import open_url, serve, terminate, write_file_config

pytestmark = pytest.mark.integration

KIB = 1024
ARCHIVE = 100 * KIB


def _retention_config(
    path: Path, template: str, storage: str = "", file: str = ""
) -> Path:
    return write_file_config(
        path,
        template,
        storage=storage,
        file=file,
        tasks="hold = 30\nmax_concurrent_tasks = 4",
    )


def _held(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        if ".evictions" in folder:
            continue
        total += sum(
            os.stat(os.path.join(folder, n)).st_size
            for n in names
            if not n.startswith(".")
        )
    return total


def _partials(root: Path) -> list[str]:
    return [p for p in glob.glob(str(root / "*" / ".partial" / "*")) if "lock" not in p]


def _get(base: str, rev: str, region: str = "a") -> tuple[int, str]:
    code, headers, _ = open_url(
        f"{base}/archiver/hgmo/r/{rev}?preferred_region={region}", follow=False
    )
    return code, headers.get("Location", "")


def _download(location: str) -> int:
    code, _, body = open_url(location)
    assert code != 200 or len(body) == ARCHIVE, (code, len(body))
    return code


def test_a_root_filled_past_max_bytes_settles_at_the_low_water_mark(
    tmp_path: Path,
) -> None:
    limit = 40 * ARCHIVE  # 2 regions x 20 archives
    with FaultyUpstream(nbytes=ARCHIVE) as upstream:
        config = _retention_config(
            tmp_path / "archiverd.toml",
            upstream.url_template,
            # URLs valid for 2 s: what was used 12 s ago may be evicted.
            storage="signed_url_expiry = 2",
            file=f'max_bytes = "{limit}"',
        )
        proc, base = serve(config, tmp_path)
        try:
            failed: list[tuple[str, int]] = []
            lock = threading.Lock()

            def fetch_and_hit(n: int) -> None:
                rev = f"{n:012x}"
                code, location = _get(base, rev)
                if code == 302:
                    got = _download(location)
                else:
                    got = code
                # A hit right after: redirected, and the file is there.
                code, location = _get(base, rev)
                hit = _download(location) if code == 302 else code
                with lock:
                    if got != 200 or hit != 200:
                        failed.append((rev, hit))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(fetch_and_hit, range(60)))  # 150% of the limit
            assert failed == []
            root = tmp_path / "data"
            eventually_blocking(
                lambda: _held(root),
                until=lambda held: held <= 0.9 * limit,
                what="the root to settle at the low-water mark",
                timeout=60,
            )
            held = _held(root)
            assert held > 0.75 * limit  # evicted down to it, not far below
            assert _partials(root) == []
            # What was evicted is fetched again; what is kept is a hit.
            for n in (0, 59):
                code, location = _get(base, f"{n:012x}")
                assert code == 302 and _download(location) == 200
        finally:
            terminate(proc)


def test_an_object_deleted_out_of_band_is_stored_again_with_one_upstream_get(
    tmp_path: Path,
) -> None:
    with FaultyUpstream(nbytes=ARCHIVE) as upstream:
        config = _retention_config(tmp_path / "archiverd.toml", upstream.url_template)
        proc, base = serve(config, tmp_path)
        try:
            rev = "0123456789ab"
            code, location = _get(base, rev, "b")
            assert code == 302 and _download(location) == 200
            assert upstream.requests == 1
            for path in glob.glob(str(tmp_path / "data" / "b" / "??" / "*")):
                os.unlink(path)  # region b loses it
            # The daemon still thinks it stored: its redirect finds no file...
            code, location = _get(base, rev, "b")
            assert code == 302
            assert _download(location) == 404
            # ...which it learns from: no redirect to nothing again. The next
            # request stores it again in b only, with one upstream GET.
            code, location = _get(base, rev, "b")
            assert code == 302 and _download(location) == 200
            assert upstream.requests == 2
            code, location = _get(base, rev, "a")
            assert code == 302 and _download(location) == 200
            assert upstream.requests == 2
        finally:
            terminate(proc)


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.skip("libfaketime is not installed (scripts/faketime.sh install)")
    return found[0]


def test_no_redirect_past_expiry_and_a_popular_archive_is_refreshed(
    tmp_path: Path,
) -> None:
    """expire_after = 10 days; the wall clock is stepped 9.6 days on (one day
    of refresh window, 360 s of margin): the archive asked for then is
    refreshed; the other is not redirected to but fetched again."""
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    environ = {
        "LD_PRELOAD": _libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    with FaultyUpstream(nbytes=ARCHIVE) as upstream:
        config = _retention_config(
            tmp_path / "archiverd.toml",
            upstream.url_template,
            # Signed URLs are reused for a tenth of this, on the monotonic
            # clock: stepped a day on, the test waits that out.
            storage="expire_after = 864000\nsigned_url_expiry = 10",
            file="max_age = 0",
        )
        proc, base = serve(config, tmp_path, environ=environ)
        try:
            popular, cold = "00000000000a", "00000000000b"
            for rev in (popular, cold):
                code, location = _get(base, rev)
                assert code == 302 and _download(location) == 200
            assert upstream.requests == 2
            clock.write_text("+9.6d\n")  # within a day of the deadline
            time.sleep(1.1)
            code, location = _get(base, popular)
            assert code == 302 and _download(location) == 200
            eventually_blocking(
                lambda: open_url(f"{base}/metrics")[2].decode(),
                until=lambda text: 'archiverd_refreshes_total{result="ok"} 1.0' in text,
                what="the popular archive to be refreshed where it was asked for",
            )
            assert upstream.requests == 2
            clock.write_text("+10.5d\n")  # past the first deadline
            time.sleep(1.1)
            code, location = _get(base, popular)
            assert code == 302 and _download(location) == 200
            assert upstream.requests == 2  # refreshed: still a hit
            code, location = _get(base, cold)  # past expiry: fetched again
            assert code == 302 and _download(location) == 200
            assert upstream.requests == 3
        finally:
            terminate(proc)
