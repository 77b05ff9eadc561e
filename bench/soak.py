"""A bounded soak on loopback: ``make soak`` (``python -m bench.soak``).

For ``--seconds`` (60): wrk drives the hit path and status polls at once,
while 5,000 distinct cold requests go through in waves against the fast
static upstream and the discarding S3 sink. Passes when there is no error
response anywhere, every task succeeds, the daemon's RSS grows less than 10%
between the soak's two halves, and the task table stays within its bound.
Writes ``bench/results/soak.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.__main__ import RESULTS, WORK, _lua, concurrent_gets, config, rev, wrk
from bench.harness import (
    Daemon,
    fixture,
    get,
    get_json,
    proc_stats,
    server,
    wait_for_task,
)

MAX_TASKS = 1000


def cold_wave(daemon: Daemon, count: int) -> tuple[int, int]:
    """``count`` distinct cold requests at once, then their tasks to the end.

    Returns (error responses, failed tasks).
    """
    paths = [f"/archiver/hgmo/soak/size-16384/{rev()}" for _ in range(count)]
    answers = concurrent_gets(daemon.port, paths)
    errors = sum(code not in (202, 302) for code, _ in answers)
    failed = 0
    for path in paths:
        code, headers, _ = get(daemon.url + path)
        if code == 202:
            while True:
                result = get_json(headers["Location"])["result"]
                if result["state"] in ("SUCCESS", "FAILURE"):
                    failed += result["state"] == "FAILURE"
                    break
                time.sleep(0.01)
        elif code != 302:
            errors += 1
    return errors, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--cold", type=int, default=5000)
    parser.add_argument("--wave", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("soak: wrk is needed (apt-get install wrk)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = WORK / "soak"
    shutil.rmtree(workdir, ignore_errors=True)
    with server(fixture("bench.upstream")) as up, server(fixture("bench.sink")) as sink:
        cfg = config(up.url, sink.url, 2, max_tasks=MAX_TASKS, keep_finished=30)
        # Cache bounds that fill within the first seconds, so that the two
        # halves compare steady states: with the defaults (100,000 keys) the
        # caches would still be filling, by design, a day into production.
        cfg = cfg.replace("[storage]\n", "[storage]\nexists_cache_size = 2000\n")
        with Daemon(workdir, cfg) as d:
            report = soak(d, args, workdir)
    write(report)
    sys.exit(0 if report["passed"] else 1)


def soak(d: Daemon, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    hit = f"/archiver/hgmo/soak/size-16384/{rev()}"
    code, headers, _ = get(d.url + hit)
    wait_for_task(headers["Location"])
    ids = []
    for _ in range(200):
        code, headers, _ = get(d.url + f"/archiver/hgmo/soak/size-1024/{rev()}")
        ids.append(headers["Location"].rsplit("/", 1)[1])
    script = workdir / "status.lua"
    script.write_text(_lua(ids))

    results: dict[str, dict[str, float]] = {}

    def load(name: str, url: str, lua: Path | None) -> None:
        results[name] = wrk(url, args.seconds, connections=25, script=lua)

    threads = [
        threading.Thread(target=load, args=("hits", d.url + hit, None)),
        threading.Thread(target=load, args=("polls", d.url, script)),
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    samples: list[tuple[float, int]] = []
    errors = failed = sent = 0
    while time.monotonic() - started < args.seconds:
        if sent < args.cold:
            e, f = cold_wave(d, min(args.wave, args.cold - sent))
            errors, failed, sent = errors + e, failed + f, sent + args.wave
        else:
            time.sleep(0.5)
        samples.append((time.monotonic() - started, proc_stats(d.pid).rss))
    for t in threads:
        t.join()
    while sent < args.cold:  # finish the cold requests if the time ran out
        e, f = cold_wave(d, min(args.wave, args.cold - sent))
        errors, failed, sent = errors + e, failed + f, sent + args.wave

    half = args.seconds / 2
    first = [rss for t, rss in samples if t < half]
    second = [rss for t, rss in samples if t >= half]
    growth = statistics.mean(second) / statistics.mean(first) - 1
    logs = "".join(p.read_text() for p in workdir.glob("twistd.log*"))
    sizes = [int(m.group(1)) for m in re.finditer(r"task table: (\d+) of", logs)]
    wrk_errors = sum(r["non_2xx_3xx"] + r["socket_errors"] for r in results.values())
    report = {
        "seconds": args.seconds,
        "hits_per_second": results["hits"]["rps"],
        "polls_per_second": results["polls"]["rps"],
        "cold_requests": sent,
        "error_responses": errors + wrk_errors,
        "failed_tasks": failed,
        "rss_first_half_mib": round(statistics.mean(first) / 2**20, 1),
        "rss_second_half_mib": round(statistics.mean(second) / 2**20, 1),
        "rss_growth": round(growth, 4),
        "task_table_max": max(sizes, default=0),
        "task_table_bound": MAX_TASKS,
    }
    report["passed"] = (
        report["error_responses"] == 0
        and failed == 0
        and growth < 0.10
        and report["task_table_max"] <= MAX_TASKS
    )
    return report


def write(report: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# archiverd soak", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.items()]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
