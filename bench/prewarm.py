"""Pre-warm (issue 12): a burst of CI jobs that all ask for a new push's
archive T seconds after the push, at a daemon that watches the repo and at
one that does not, side by side on the same ``hg serve``.

Each job asks once (``[tasks] hold = 0``: a 302 means the archive was
already stored) and, on a 202, long-polls its status until SUCCESS. Figures:
the fraction of jobs answered 302 on their first request, and the p50 and
p99 of each job's time to the archive. Also what the watcher costs hgweb:
its requests per minute for the one watched repo.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import MIB, ROOT, Daemon, Row

REPO = "bench/prewarm"
SUBDIR = "testing/mozharness"
JOBS = 100
AFTER = 5.0  # seconds between the push and the burst
INTERVAL = 2  # the watcher's poll interval in this bench


def _config(template: str, root: Path, prewarm: bool) -> str:
    table = (
        f"""
[sources.hgmo.prewarm]
repos = ["{REPO}"]
shapes = [{{ subdir = "{SUBDIR}" }}]
interval = {INTERVAL}
"""
        if prewarm
        else ""
    )
    return f"""
[sources.hgmo]
url_template = "{template}"
{table}
[storage]
backend = "file"
[storage.file]
root = "{root}"
regions = ["us-east-1", "us-west-2"]
[tasks]
hold = 0
"""


def _mozharness(seed: int) -> dict[str, bytes | None]:
    """~300 files, ~3 MiB: about what testing/mozharness weighs."""
    rng = random.Random(seed)
    files: dict[str, bytes | None] = {
        f"{SUBDIR}/mozharness/m{i:03}.py": rng.randbytes(8 * 1024) for i in range(300)
    }
    files[f"{SUBDIR}/blob.bin"] = rng.randbytes(MIB // 2)
    return files


async def _exchange(port: int, path: str, extra: str = "") -> tuple[int, str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
    writer.write(f"{head}Connection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    location = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "location":
            location = value.strip()
    return int(lines[0].split()[1]), location, body


async def _job(port: int, path: str) -> tuple[bool, float]:
    """(answered 302 at once, seconds until the archive is stored)."""
    started = time.monotonic()
    code, location, _ = await _exchange(port, path)
    if code == 302:
        return True, time.monotonic() - started
    assert code == 202, code
    status = location.split("127.0.0.1", 1)[1].split("/", 1)[1]
    while True:
        code, _, body = await _exchange(port, "/" + status, "Prefer: wait=60\r\n")
        if b'"SUCCESS"' in body:
            return False, time.monotonic() - started
        assert b'"FAILURE"' not in body, body


def _burst(ports: list[int], path: str) -> list[list[tuple[bool, float]]]:
    async def all_of_them() -> list[list[tuple[bool, float]]]:
        bursts = [
            asyncio.gather(*(_job(port, path) for _ in range(JOBS))) for port in ports
        ]
        return [list(b) for b in await asyncio.gather(*bursts)]

    return asyncio.run(all_of_them())


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def prewarm_burst(runs: int, work: Path) -> list[Row]:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from fixtures import HgwebServer

    fraction: dict[bool, list[float]] = {True: [], False: []}
    p50: dict[bool, list[float]] = {True: [], False: []}
    p99: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp, HgwebServer(Path(tmp)) as hgweb:
        hgweb.commit(REPO, _mozharness(0), "first")
        daemons = {
            on: Daemon(
                work / f"prewarm-{on}",
                _config(hgweb.url_template, work / f"prewarm-data-{on}", on),
            )
            for on in (True, False)
        }
        try:
            time.sleep(2 * INTERVAL)  # the watcher's first poll: its position
            polls = hgweb.count("/json-")
            watched_from = time.monotonic()
            for run in range(runs):
                node = hgweb.commit(REPO, _mozharness(run + 1), f"push {run}")
                time.sleep(AFTER)
                path = f"/archiver/hgmo/{REPO}/{node[:12]}?subdir={SUBDIR}"
                results = _burst([daemons[True].port, daemons[False].port], path)
                for on, jobs in zip((True, False), results, strict=True):
                    times = [seconds for _, seconds in jobs]
                    fraction[on].append(sum(hit for hit, _ in jobs) / len(jobs))
                    p50[on].append(statistics.median(times))
                    p99[on].append(_p99(times))
            minutes = (time.monotonic() - watched_from) / 60
            per_minute = (hgweb.count("/json-") - polls) / minutes
        finally:
            for daemon in daemons.values():
                daemon.stop()
    burst = f"burst of {JOBS} jobs {AFTER:g} s after a push"
    without = "without pre-warm"
    return [
        Row(
            f"13a. Pre-warm, {burst}: fraction answered 302 on the first request",
            "≥ 0.99",
            fraction[True],
            lambda m: m >= 0.99,
            notes=f"{without}: {statistics.median(fraction[False]):.2f}; hg serve "
            f"polled {per_minute:.1f} requests/min for the watched repo "
            f"(interval {INTERVAL} s, branches + bookmarks)",
        ),
        Row(
            f"13b. Pre-warm, {burst}: p50 time to the archive",
            "report",
            p50[True],
            unit="s",
            notes=f"{without}: {statistics.median(p50[False]):.3f} s",
        ),
        Row(
            f"13c. Pre-warm, {burst}: p99 time to the archive",
            "report",
            p99[True],
            unit="s",
            notes=f"{without}: {statistics.median(p99[False]):.3f} s",
        ),
    ]
