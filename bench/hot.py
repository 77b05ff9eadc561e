"""Benchmarks 6, 7 and 12: the hot path, and clients that wait.

6 and 7: hits (302s for a stored archive) and status polls (1,000 finished
tasks) at archiverd, against a bare Klein route and a bare twisted.web
Resource (``bench/bare.py``), each with the same access log (the combined
format, written to a file of its own by archiverd's ``AccessLogFile``: the
``access_log`` setting, ``bench.bare --access-log``), measured one after the
other in each run with wrk, 1 thread and 50 connections (wrk on one core, the
server on the other).

12: 10,000 clients waiting (long polls and held requests, ``Prefer: wait``)
on 100 tasks that cannot finish (their upstream answers after 10 minutes):
the daemon's RSS above what it was before they came, and the hit rate while
they wait against the rate just before.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    MIB,
    ROOT,
    Daemon,
    Row,
    env,
    fixture,
    get,
    proc_stats,
    server,
    wait_for_task,
)

WAITERS = 10_000
WAITED_TASKS = 100


def wrk(url: str, seconds: int, script: Path | None = None) -> dict[str, float]:
    """wrk with 1 thread and 50 connections: requests/s, requests, errors."""
    args = ["wrk", "-t1", "-c50", f"-d{seconds}s"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True
    ).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "errors": (int(bad.group(1)) if bad else 0)
        + (1 if "Socket errors" in out else 0),
    }


def _heads(sink: str) -> int:
    buckets = get_stats(sink)["buckets"].values()
    return sum(b["head"] for b in buckets)


def get_stats(url: str) -> Any:
    import json

    return json.loads(get(url + "/__stats__")[2])


def _stored(d: Daemon, path: str) -> None:
    """Ask for ``path`` until it is stored (a 302)."""
    code, headers, _ = get(d.url + path)
    if code == 202:
        wait_for_task(headers["Location"])
    code, _, _ = get(d.url + path)
    assert code == 302, (path, code)


def hits_and_polls(
    runs: int,
    seconds: int,
    config: Callable[..., str],
    rev: Callable[[], str],
    lua: Callable[[list[str]], str],
    work: Path,
) -> list[Row]:
    """Rows 6 and 7 (see the module docstring)."""
    hits, polls, calls, errors = [], [], [], 0
    rps: dict[str, list[float]] = {}
    script = work / "status.lua"
    access = f'access_log = "{work / "archiverd-access.log"}"\n'
    bare = ("bench.bare", "--access-log")
    with server(fixture("bench.upstream")) as up, server(fixture("bench.sink")) as sink:
        with (
            Daemon(work / "hits", access + config(up.url, sink.url, 2, hold=0)) as d,
            server(fixture(*bare, str(work / "klein-access.log"))) as klein,
            server(
                fixture(*bare, str(work / "web-access.log"), "--kind", "resource")
            ) as web,
        ):
            hit = f"/archiver/hgmo/bench/size-1024/{rev()}"
            _stored(d, hit)
            paths = [f"/archiver/hgmo/bench/size-1024/{rev()}" for _ in range(1000)]
            ids = [get(d.url + p)[1]["Location"].rsplit("/", 1)[1] for p in paths]
            for task_id in ids:
                wait_for_task(f"{d.url}/archiver/status/{task_id}")
            script.write_text(lua(ids))

            def measure(name: str, url: str, poll: bool = False) -> float:
                result = wrk(url, seconds, script if poll else None)
                rps.setdefault(name, []).append(result["rps"])
                if url.startswith(d.url):
                    nonlocal errors
                    errors += int(result["errors"])
                return result["rps"]

            for _ in range(runs):
                heads = _heads(sink.url)
                ours = measure("archiverd hits", d.url + hit)
                calls.append((_heads(sink.url) - heads) / (ours * seconds))
                hits.append(ours / measure("Klein hits", klein.url + hit))
                measure("twisted.web hits", web.url + hit)
                ours = measure("archiverd polls", d.url, poll=True)
                polls.append(ours / measure("Klein polls", klein.url, poll=True))
                measure("twisted.web polls", web.url, poll=True)
    med = {name: statistics.median(values) for name, values in rps.items()}

    def figures(kind: str) -> str:
        return (
            f"req/s: archiverd {med[f'archiverd {kind}']:,.0f}, bare Klein "
            f"{med[f'Klein {kind}']:,.0f}, bare twisted.web "
            f"{med[f'twisted.web {kind}']:,.0f} (ceiling "
            f"{med[f'twisted.web {kind}'] / med[f'Klein {kind}']:.2f}× Klein)"
        )

    return [
        Row(
            "6. Hit path (302s, wrk 1 thread, 50 connections, access log on) ÷ "
            "bare Klein fixed 302",
            "≥ 1.5",
            hits,
            lambda m: m >= 1.5,
            notes=f"{figures('hits')}; storage calls per hit {max(calls):.4f} "
            f"(≤ 0.1); error responses {errors}",
        ),
        Row(
            "7. Status polls over 1,000 tasks ÷ bare Klein route (access log on)",
            "≥ 1.5",
            polls,
            lambda m: m >= 1.5,
            notes=figures("polls"),
        ),
    ]


def _waiting_config(config: str, slow: str) -> str:
    """The bench config, with a source whose upstream answers after 10
    minutes, connections uncapped and waits up to 5 minutes."""
    slow_source = (
        f'[sources.slow]\nurl_template = "{slow}/{{repo}}/archive/{{rev}}.'
        '{suffix}/{subdir}"\nheaders_timeout = 900\n'
    )
    text = config.replace("[storage]\n", slow_source + "[storage]\n", 1)
    return f"max_connections = 0\n{text}max_wait = 300\n"


def _waiters(port: int, ids_file: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.waiters", "--port", str(port)]
        + ["--ids", str(ids_file), "--count", str(WAITERS)],
        cwd=ROOT,
        env=env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"bench.waiters did not start: {line!r}")
    return proc


def _release(proc: subprocess.Popen[bytes]) -> int:
    """Close the waiters; how many were answered while they waited."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    line = proc.stdout.readline().decode()
    proc.wait(timeout=60)
    return int(line.split()[1]) if line.startswith("ANSWERED ") else -1


def waiting_clients(
    runs: int,
    seconds: int,
    config: Callable[..., str],
    rev: Callable[[], str],
    work: Path,
) -> list[Row]:
    """Rows 12a and 12b (see the module docstring)."""
    above, ratios, answered, open_at = [], [], [], []
    with (
        server(fixture("bench.upstream")) as up,
        server(fixture("bench.upstream", "--latency", "600")) as slow,
        server(fixture("bench.sink")) as sink,
    ):
        for n in range(runs):
            text = _waiting_config(config(up.url, sink.url, 2, hold=0), slow.url)
            with Daemon(work / f"waiting-{n}", text) as d:
                hit = f"/archiver/hgmo/bench/size-1024/{rev()}"
                _stored(d, hit)
                lines = []
                for _ in range(WAITED_TASKS):
                    path = f"/archiver/slow/bench/size-1024/{rev()}"
                    code, headers, _ = get(d.url + path)
                    assert code == 202, (path, code)
                    lines.append(f"{headers['Location'].rsplit('/', 1)[1]} {path}")
                ids_file = work / f"waiting-{n}.ids"
                ids_file.write_text("\n".join(lines) + "\n")
                alone = wrk(d.url + hit, seconds)["rps"]
                idle = proc_stats(d.pid).rss
                waiters = _waiters(d.port, ids_file)
                try:
                    time.sleep(1)  # every request read and held
                    rss = proc_stats(d.pid).rss
                    with_them = wrk(d.url + hit, seconds)["rps"]
                finally:
                    answered.append(_release(waiters))
                open_at.append(rss)
                above.append((rss - idle) / MIB)
                ratios.append(with_them / alone)
    return [
        Row(
            f"12a. {WAITERS:,} long polls waiting on {WAITED_TASKS} tasks: daemon RSS "
            "above idle",
            "≤ 64 MiB",
            above,
            lambda m: m <= 64,
            unit="MiB",
            notes=f"RSS with them {statistics.median(open_at) / MIB:.0f} MiB; "
            f"answered before their tasks finished: {max(answered)}",
        ),
        Row(
            f"12b. Hits while {WAITERS:,} long polls wait ÷ hits without them",
            "≥ 0.9",
            ratios,
            lambda m: m >= 0.9,
        ),
    ]
