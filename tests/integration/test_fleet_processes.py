"""Three `twistd -n archiverd` processes, one Redis, one moto S3: one service.

The rules themselves are covered quickly in test_fleet_in_process.py; here
they hold between real processes, one of which is killed with SIGKILL.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from faults import MIB, FaultyUpstream, body_bytes
from polling import TIMEOUT, eventually_blocking
from processes import open_url, serve, task_status, wait_for_task, write_config

pytestmark = pytest.mark.integration

REV = "0123456789ab"
KEY = f"r-{REV}.tar.gz"
STATUS = f"/archiver/status/{KEY}"
#: A lock's holder and remaining milliseconds, read in one step.
HOLDER_AND_PTTL = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"


@contextmanager
def fleet(
    tmp_path: Path, upstream: Any, buckets: Any, redis: Any, n: int = 3
) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """n daemons sharing one Redis; yields (process, base URL) pairs."""
    coordination = (
        f'[coordination]\nbackend = "redis"\nurl = "{redis.url}"\n'
        "lock_ttl = 2\ntimeout = 1\n"
    )
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(n):
            home = tmp_path / f"daemon{i}"
            home.mkdir()
            config = write_config(
                home / "archiverd.toml",
                upstream.url_template,
                buckets,
                extra=coordination,
            )
            started.append(serve(config, home))
        yield started
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def archive_gets(upstream: Any) -> list[str]:
    return [p for p in upstream.paths if "/archive/" in p]


def test_300_requests_over_three_daemons_make_one_fetch(tmp_path, s3_buckets, redis):
    with FaultyUpstream(nbytes=12 * MIB) as upstream:
        with fleet(tmp_path, upstream, s3_buckets, redis) as daemons:
            bases = [base for _, base in daemons]

            def ask(i: int) -> tuple[int, str]:
                code, headers, _ = open_url(
                    f"{bases[i % 3]}/archiver/hgmo/r/{REV}", follow=False
                )
                return code, headers.get("Location", "")

            with ThreadPoolExecutor(max_workers=60) as pool:
                answers = list(pool.map(ask, range(300)))
            codes = {code for code, _ in answers}
            assert codes <= {202, 302}, codes  # 302 once stored: a late asker
            assert {loc.split("/", 3)[3] for code, loc in answers if code == 202} == {
                STATUS[1:]
            }
            for base in bases:  # every daemon answers for the task
                result = wait_for_task(base + STATUS)
                assert result["state"] == "SUCCESS", result
                assert set(result["s3_urls"]) == set(s3_buckets.buckets)
                assert result["size"] == 12 * MIB
            for base in bases:
                assert open_url(f"{base}/archiver/hgmo/r/{REV}", follow=False)[0] == 302

            redis.stop()  # hits need no Redis: still 302 everywhere
            for base in bases:
                code, headers, _ = open_url(
                    f"{base}/archiver/hgmo/r/{REV}?preferred_region=us-west-2",
                    follow=False,
                )
                assert code == 302 and "us-west-2" in headers["Location"]
                code, headers, _ = open_url(f"{base}/archiver/hgmo/r/000000000bad")
                assert (code, headers.get("Retry-After")) == (503, "5")
        assert archive_gets(upstream) == [f"/r/archive/{REV}.tar.gz/"]
    for region in s3_buckets.buckets:
        assert s3_buckets.keys(region) == [KEY]
        assert s3_buckets.pending_uploads(region) == []


def test_kill_9_mid_transfer_and_another_daemon_takes_over(tmp_path, s3_buckets, redis):
    # The first fetch sends a part and a half, then stalls: parts are up in
    # both regions when its daemon is killed. The next fetch is whole.
    with FaultyUpstream([f"stall_body:{6 * MIB}"], nbytes=12 * MIB) as upstream:
        with fleet(tmp_path, upstream, s3_buckets, redis) as daemons:
            (first, first_base), (_, second), (_, third) = daemons
            code, _, _ = open_url(f"{first_base}/archiver/hgmo/r/{REV}", follow=False)
            assert code == 202
            eventually_blocking(
                lambda: all(s3_buckets.pending_uploads(r) for r in s3_buckets.buckets),
                what="a multipart upload in every region",
            )
            assert task_status(second + STATUS)["state"] in ("STARTED", "PROGRESS")
            [lock] = redis.command("KEYS", "archiverd:lock:*")
            dead = f"{socket.gethostname()}:{first.pid}:"
            holder, left_ms = redis.command("EVAL", HOLDER_AND_PTTL, 1, lock)
            assert holder.startswith(dead) and 0 < left_ms <= 2000, (holder, left_ms)

            first.send_signal(signal.SIGKILL)
            first.wait(timeout=TIMEOUT)
            killed = time.monotonic()
            # How long the dead daemon's lock outlives it (0 if already gone),
            # read after the kill: nothing renews it any more.
            holder, left_ms = redis.command("EVAL", HOLDER_AND_PTTL, 1, lock)
            left = left_ms / 1000 if holder and holder.startswith(dead) else 0.0

            def ask_both() -> dict[str, Any]:
                for base in (second, third):
                    code, _, _ = open_url(f"{base}/archiver/hgmo/r/{REV}", follow=False)
                    assert code in (202, 302), code
                result = task_status(third + STATUS)
                assert result["state"] != "FAILURE", result
                return result

            # Clients keep asking; once the dead daemon's lock has expired
            # (lock_ttl = 2 s), one of these requests takes the work over.
            eventually_blocking(
                ask_both,
                until=lambda result: result["state"] == "SUCCESS",
                what="another daemon to take the archive over and store it",
                interval=0.25,
            )
            # Not before the dead daemon's lock expired.
            assert time.monotonic() - killed >= left, left
            assert wait_for_task(second + STATUS)["state"] == "SUCCESS"
        upstream.release.set()
        assert len(archive_gets(upstream)) == 2
    for region in s3_buckets.buckets:
        assert s3_buckets.keys(region) == [KEY]
        assert s3_buckets.pending_uploads(region) == []  # the dead one's: aborted
        assert s3_buckets.get(region, KEY) == body_bytes(12 * MIB)
