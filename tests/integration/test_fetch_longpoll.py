"""archiverd-fetch's long polls end to end: the CLI as a subprocess against
`twistd -n archiverd` (file storage, ``[tasks] hold = 0``) in front of an
upstream that takes a while to send the archive.

The client asks with ``Prefer: wait=N``, so archiverd holds each request
until the task finishes (or its wait is up): the archive comes in a couple of
requests, with no sleep between them, where polling with backoff took a 202,
three or more status polls and sleeps of 0.5, 1, 2 s.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import MIB, body_bytes
from processes import REPO_ROOT, logged, serve, terminate

pytestmark = pytest.mark.integration

#: Seconds upstream takes to send the archive (between its two halves).
HOLD = 1.5
#: The agent archiverd-fetch names itself by, as the access log quotes it.
AGENT = '"archiverd-fetch/'
ARCHIVE = body_bytes(2 * MIB)


class _SlowArchive(http.server.BaseHTTPRequestHandler):
    """The archive with its Content-Length: half of it, then the rest once
    ``HOLD`` seconds have passed (or the test is over)."""

    protocol_version = "HTTP/1.1"
    server: _SlowUpstream

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self.server.paths.append(self.path)
        half = len(ARCHIVE) // 2
        self.send_response(200)
        self.send_header("Content-Type", "application/x-gzip")
        self.send_header("Content-Length", str(len(ARCHIVE)))
        self.end_headers()
        self.wfile.write(ARCHIVE[:half])
        self.wfile.flush()
        self.server.release.wait(HOLD)
        self.wfile.write(ARCHIVE[half:])

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _SlowUpstream(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowArchive)
        self.paths: list[str] = []
        self.release = threading.Event()

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/{{repo}}/{{rev}}.{{suffix}}"


@pytest.fixture
def upstream() -> Iterator[_SlowUpstream]:
    server = _SlowUpstream()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def _config(path: Path, template: str, tasks: str = "") -> Path:
    """File storage; requests without ``Prefer`` are not held at all."""
    path.write_text(
        f"""
[tasks]
hold = 0
{tasks}

[sources.hgmo]
url_template = "{template}"

[storage]
backend = "file"

[storage.file]
root = "{path.parent / "data"}"
regions = ["local"]
"""
    )
    return path


def _fetch(base: str, target: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run archiverd-fetch for r@0123456789ab into ``target``: the finished
    process and its wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    args = ["--server", base, "hgmo", "r", "0123456789ab", "-o", str(target)]
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "archiverd.client.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.monotonic() - began


def test_a_cold_fetch_is_one_held_request_then_the_download(
    tmp_path: Path, upstream: _SlowUpstream
) -> None:
    """The archive request is held until the task stored the archive, then
    redirected: no 202, no status poll, no sleep."""
    config = _config(tmp_path / "archiverd.toml", upstream.url_template)
    proc, base = serve(config, tmp_path)
    try:
        done, wall = _fetch(base, tmp_path / "r.tar.gz")
    finally:
        terminate(proc)  # its access log is all written once it has exited
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.tar.gz").read_bytes() == ARCHIVE
    assert len(upstream.paths) == 1
    requests = [line for line in logged(tmp_path).splitlines() if AGENT in line]
    print(f"{len(requests)} archiverd requests, client {wall:.2f} s, upstream {HOLD} s")
    assert len(requests) <= 3, requests
    assert (
        '"GET /archiver/hgmo/r/0123456789ab?suffix=tar.gz HTTP/1.1" 302'
        in (requests[0])
    )
    assert not [line for line in requests if "/archiver/status/" in line]
    assert wall >= HOLD  # upstream did hold the archive


def _summaries(out: str) -> list[dict[str, Any]]:
    """The request.summary events of archiverd-fetch's requests, in order."""
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [
        e
        for e in events
        if e.get("Type") == "request.summary"
        and str(e["Fields"].get("agent", "")).startswith("archiverd-fetch/")
    ]


def test_held_polls_follow_each_other_with_no_sleep(
    tmp_path: Path, upstream: _SlowUpstream
) -> None:
    """With a server that holds requests 0.5 s at most (``max_wait``), the
    202 and the polls that are not final come back held and said so
    (Preference-Applied): each next request starts at once, where the
    backoff would have slept 0.5 s and more."""
    tasks = "max_wait = 0.5"
    config = _config(tmp_path / "archiverd.toml", upstream.url_template, tasks)
    proc, base = serve(config, tmp_path, "--log-format", "json")
    try:
        done, wall = _fetch(base, tmp_path / "r.tar.gz")
    finally:
        terminate(proc)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.tar.gz").read_bytes() == ARCHIVE
    requests = _summaries(logged(tmp_path))
    paths = [r["Fields"]["path"] for r in requests]
    codes = [r["Fields"]["code"] for r in requests]
    assert codes[0] == 202, paths
    # At least one poll came back held with the task unfinished.
    assert "/archiver/status/" in paths[1] and "/archiver/status/" in paths[2], paths
    # Each request's start and end, on the daemon's wall clock.
    ends = [r["Timestamp"] / 1e9 for r in requests]
    starts = [end - r["Fields"]["duration_ms"] / 1000 for end, r in zip(ends, requests)]
    gaps = [round(b - a, 3) for a, b in zip(ends, starts[1:])]
    print(f"{len(requests)} archiverd requests, gaps {gaps} s, client {wall:.2f} s")
    assert max(gaps) < 0.4, (gaps, paths)  # the first backoff sleep is 0.5 s
