"""archiverd's benchmarks: ``make bench`` (``python -m bench [--runs N] [--only S]``).

Every figure is a ratio of two things measured side by side in this run (or,
for the pipeline's cost, an absolute rate with its CPU), the median of
``--runs`` runs with min and max. Servers are subprocesses on loopback: the
fast static upstream (``bench/upstream.py``), the discarding S3 sink
(``bench/sink.py``), the bare Klein ceiling (``bench/bare.py``) and the daemon
itself under ``twistd``. Results go to ``bench/results/results.{md,json}``.

Throttles emulate the network: a VCS host that streams an archive at
100 MB/s, and regions that each take 25 MB/s per connection (4 parts in
flight: 100 MB/s a region). Unthrottled runs measure archiverd's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fleet import fleet
from bench.harness import (
    MIB,
    ROOT,
    Daemon,
    Row,
    cold_fetch,
    env,
    fixture,
    get,
    get_json,
    proc_stats,
    server,
    wait_for_task,
)
from bench.hot import hits_and_polls, waiting_clients
from bench.old_clients import old_client_flow
from bench.prewarm import prewarm_burst
from bench.real_s3 import real_s3

RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "tmp"
UPSTREAM_RATE = 100_000_000  # bytes/s: the VCS host
REGION_RATE = 25_000_000  # bytes/s per connection: a region's WAN
PART = 8 * MIB
IN_FLIGHT = 4


def rev() -> str:
    """A fresh changeset id: every cold request names a new archive."""
    return uuid.uuid4().hex[:12]


def config(upstream: str, sink: str, regions: int, **tasks: Any) -> str:
    buckets = ", ".join(f'"region-{i}" = "bench-{i}"' for i in range(regions))
    # Cold requests get their 202 at once (what cold_fetch times), not a 302
    # after being held for the task (tasks.hold defaults to 5 s).
    tasks = {"hold": 0, **tasks}
    table = "".join(f"{k} = {v}\n" for k, v in tasks.items())
    return f"""
[sources.hgmo]
url_template = "{upstream}/{{repo}}/archive/{{rev}}.{{suffix}}/{{subdir}}"
[storage]
backend = "s3"
[storage.s3]
endpoint_url = "{sink}"
addressing_style = "path"
buckets = {{ {buckets} }}
[pipeline]
part_size = {PART}
parts_in_flight = {IN_FLIGHT}
[tasks]
{table}
"""


def baseline(*args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.baselines", *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        check=True,
    )
    seconds: float = json.loads(out.stdout)["seconds"]
    return seconds


def stats(url: str) -> Any:
    return get_json(url + "/__stats__")


def wrk(
    url: str, seconds: int, connections: int = 50, script: Path | None = None
) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "non_2xx_3xx": int(bad.group(1)) if bad else 0,
        "socket_errors": 0 if errors is None else 1,
    }


async def _request(port: int, path: str) -> tuple[int, float]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    writer.write(f"{head}Connection: close\r\n\r\n".encode())
    status = await reader.readline()
    elapsed = time.monotonic() - started
    await reader.read()
    writer.close()
    return int(status.split()[1]), elapsed


def concurrent_gets(port: int, paths: list[str]) -> list[tuple[int, float]]:
    """Send every request at once; (status, seconds to the status line) each."""

    async def all_of_them() -> list[tuple[int, float]]:
        return list(await asyncio.gather(*(_request(port, p) for p in paths)))

    return asyncio.run(all_of_them())


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


# -- scenarios -------------------------------------------------------------


def overlap_and_old_design(runs: int) -> list[Row]:
    """Targets 1 and 2: archiverd against its two legs, and the old design."""
    size = 256 * MIB
    t_arch2, t_arch3, overlap, old2, old3 = [], [], [], [], []
    with (
        server(fixture("bench.upstream", "--rate", str(UPSTREAM_RATE))) as up,
        server(fixture("bench.sink", "--rate", str(REGION_RATE))) as sink,
    ):
        path = f"/bench/size-{size}"
        with (
            Daemon(WORK / "overlap2", config(up.url, sink.url, 2)) as two,
            Daemon(WORK / "overlap3", config(up.url, sink.url, 3)) as three,
        ):
            for _ in range(runs):
                url = f"{up.url}{path}/archive/{rev()}.tar.gz/"
                t_up = baseline("read", url)
                t_upload = baseline(
                    "upload",
                    "--endpoint",
                    sink.url,
                    "--regions",
                    "2",
                    "--size",
                    str(size),
                    "--part-size",
                    str(PART),
                    "--in-flight",
                    str(IN_FLIGHT),
                )
                a2, _ = cold_fetch(two, f"/archiver/hgmo{path}/{rev()}")
                s2 = baseline(
                    "sequential", url, "--endpoint", sink.url, "--regions", "2"
                )
                a3, _ = cold_fetch(three, f"/archiver/hgmo{path}/{rev()}")
                s3 = baseline(
                    "sequential", url, "--endpoint", sink.url, "--regions", "3"
                )
                t_arch2.append(a2)
                t_arch3.append(a3)
                overlap.append(a2 / max(t_up, t_upload))
                old2.append(s2 / a2)
                old3.append(s3 / a3)
    return [
        Row(
            "1. Overlap: cold 256 MiB to SUCCESS, 2 regions ÷ max(upstream alone, "
            "upload alone)",
            "≤ 1.15",
            overlap,
            lambda m: m <= 1.15,
            notes=f"archiverd {statistics.median(t_arch2):.2f} s",
        ),
        Row(
            "2a. Old design (temp file, then region after region) ÷ archiverd, "
            "2 regions",
            "≥ 2",
            old2,
            lambda m: m >= 2,
        ),
        Row(
            "2b. Old design ÷ archiverd, 3 regions",
            "≥ 2.5",
            old3,
            lambda m: m >= 2.5,
            notes=f"archiverd {statistics.median(t_arch3):.2f} s",
        ),
    ]


def memory(runs: int) -> list[Row]:
    """Target 3: peak RSS does not grow with the archive; nothing on disk."""
    ratios, written, leftovers = [], [], []
    peaks: dict[int, list[int]] = {64 * MIB: [], 1024 * MIB: []}
    with server(fixture("bench.upstream")) as up, server(fixture("bench.sink")) as sink:
        for n in range(runs):
            for size in peaks:
                workdir = WORK / f"memory-{n}-{size}"
                with Daemon(workdir, config(up.url, sink.url, 2), log=False) as d:
                    before = proc_stats(d.pid)
                    cold_fetch(d, f"/archiver/hgmo/bench/size-{size}/{rev()}")
                    after = proc_stats(d.pid)
                    peaks[size].append(after.peak_rss)
                    written.append(after.write_bytes - before.write_bytes)
                    leftovers.extend(p for p in d.tmpdir.rglob("*"))
            ratios.append(peaks[1024 * MIB][-1] / peaks[64 * MIB][-1])
    small = statistics.median(peaks[64 * MIB]) / MIB
    large = statistics.median(peaks[1024 * MIB]) / MIB
    return [
        Row(
            "3. Peak RSS for 1 GiB ÷ for 64 MiB (2 regions)",
            "≤ 1.10",
            ratios,
            lambda m: m <= 1.10,
            notes=f"{large:.0f} MiB ÷ {small:.0f} MiB; bytes the daemon wrote to disk: "
            f"{max(written)}; files left in its TMPDIR: {len(leftovers)}",
        ),
    ]


def regions(runs: int) -> list[Row]:
    """Target 4: a region more costs (almost) no time; upstream read once."""
    size = 256 * MIB
    ratios, extra = [], []
    with (
        server(fixture("bench.upstream")) as up,
        server(fixture("bench.sink", "--rate", str(REGION_RATE))) as sink,
    ):
        with (
            Daemon(WORK / "regions1", config(up.url, sink.url, 1)) as one,
            Daemon(WORK / "regions3", config(up.url, sink.url, 3)) as three,
        ):
            for _ in range(runs):
                t1, _ = cold_fetch(one, f"/archiver/hgmo/bench/size-{size}/{rev()}")
                sent = stats(up.url)["bytes_sent"]
                t3, _ = cold_fetch(three, f"/archiver/hgmo/bench/size-{size}/{rev()}")
                extra.append(stats(up.url)["bytes_sent"] - sent - size)
                ratios.append(t3 / t1)
    return [
        Row(
            "4. Time at 3 regions ÷ at 1 region (256 MiB, regions at 100 MB/s each)",
            "≤ 1.15",
            ratios,
            lambda m: m <= 1.15,
            notes=f"bytes read from upstream beyond the archive's size: {max(extra)}",
        ),
    ]


def dedup(runs: int) -> list[Row]:
    """Target 5: 1,000 identical cold requests, one fetch."""
    rows_p99, gets, completes, answered = [], [], [], []
    with (
        server(fixture("bench.upstream", "--rate", "50000000")) as up,
        server(fixture("bench.sink")) as sink,
    ):
        with Daemon(WORK / "dedup", config(up.url, sink.url, 2)) as d:
            for _ in range(runs):
                path = f"/archiver/hgmo/bench/size-{64 * MIB}/{rev()}"
                requests = stats(up.url)["requests"]
                done = _completed(sink.url)
                answers = concurrent_gets(d.port, [path] * 1000)
                accepted = [t for code, t in answers if code == 202]
                answered.append(sum(code in (202, 302) for code, _ in answers))
                code, headers, _ = get(d.url + path)
                if code == 202:
                    wait_for_task(headers["Location"])
                gets.append(stats(up.url)["requests"] - requests)
                completes.append(_completed(sink.url) - done)
                rows_p99.append(p99(accepted))
    return [
        Row(
            "5. 1,000 concurrent identical cold requests: p99 of the 202",
            "< 1 s",
            rows_p99,
            lambda m: m < 1,
            unit="s",
            notes=f"upstream GETs {max(gets)}, uploads completed (2 regions) "
            f"{max(completes)}, answered {min(answered)}/1000",
        ),
    ]


def _completed(sink: str) -> int:
    buckets = stats(sink)["buckets"].values()
    return sum(b["completed"] + b["puts"] for b in buckets)


def _heads(sink: str) -> int:
    return sum(b["head"] for b in stats(sink)["buckets"].values())


def hit_path_and_status(runs: int, seconds: int) -> list[Row]:
    """Targets 6 and 7: hits and status polls against bare Klein and bare
    twisted.web ceilings (``bench/hot.py``)."""
    return hits_and_polls(runs, seconds, config, rev, _lua, WORK)


def _lua(ids: list[str]) -> str:
    listed = ",".join(f'"{i}"' for i in ids)
    return (
        f"local ids = {{{listed}}}\nlocal n = 0\n"
        "request = function()\n  n = n + 1\n"
        '  return wrk.format("GET", "/archiver/status/" .. ids[(n % #ids) + 1])\n'
        "end\n"
    )


def pipeline_cost(runs: int) -> list[Row]:
    """Target 8: MiB/s and CPU per GiB with nothing else in the way."""
    size = 1024 * MIB
    rows = []
    by_count: dict[int, tuple[list[float], list[float]]] = {}
    with server(fixture("bench.upstream")) as up, server(fixture("bench.sink")) as sink:
        for count in (1, 3):
            rates, cpu = by_count[count] = [], []
            with Daemon(WORK / f"cost{count}", config(up.url, sink.url, count)) as d:
                for _ in range(runs):
                    before = proc_stats(d.pid).cpu
                    seconds, _ = cold_fetch(
                        d, f"/archiver/hgmo/bench/size-{size}/{rev()}"
                    )
                    cpu.append((proc_stats(d.pid).cpu - before) / (size / 1024**3))
                    rates.append(size / MIB / seconds)
            rows.append(
                Row(
                    f"8. Pipeline, 1 GiB, {count} region{'s' if count > 1 else ''} "
                    "(unthrottled upstream and sink)",
                    "≥ 250 MiB/s" if count == 1 else "report",
                    rates,
                    (lambda m: m >= 250) if count == 1 else None,
                    unit="MiB/s",
                    notes=f"daemon CPU {statistics.median(cpu):.2f} s per GiB "
                    "(sha256 and CRC32 included)",
                )
            )
    (rate1, cpu1), (rate3, cpu3) = by_count[1], by_count[3]
    rows += [
        Row(
            "8c. Pipeline rate, 3 regions ÷ 1 region (run by run)",
            "≥ 0.85",
            [three / one for one, three in zip(rate1, rate3)],
            lambda m: m >= 0.85,
            notes="upstream, sink and daemon share the 2 cores: the sink takes "
            "3 GiB for the 3 regions' copies",
        ),
        Row(
            "8d. Daemon CPU per GiB, 3 regions ÷ 1 region (run by run)",
            "≤ 1.3",
            [three / one for one, three in zip(cpu1, cpu3)],
            lambda m: m <= 1.3,
        ),
    ]
    return rows


def tuning(runs: int) -> list[Row]:
    """Not in the default run: the measurements behind the pipeline defaults.

    512 MiB, 2 regions, unthrottled; each setting against the defaults.
    """
    size = 512 * MIB
    settings = [
        ("part_size", 5 * MIB),
        ("part_size", 16 * MIB),
        ("parts_in_flight", 2),
        ("parts_in_flight", 8),
        ("read_size", 64 * 1024),
        ("read_size", 256 * 1024),
    ]
    rows = []
    with server(fixture("bench.upstream")) as up, server(fixture("bench.sink")) as sink:
        default = config(up.url, sink.url, 2)
        for name, value in settings:
            changed = default.replace(f"{name} = ", f"{name} = {value}\n# ")
            if name not in default:
                changed = default.replace(
                    "[pipeline]\n", f"[pipeline]\n{name} = {value}\n"
                )
            ratios = []
            with (
                Daemon(WORK / "tune-a", default) as a,
                Daemon(WORK / f"tune-{name}-{value}", changed) as b,
            ):
                for _ in range(runs):
                    base, _ = cold_fetch(a, f"/archiver/hgmo/bench/size-{size}/{rev()}")
                    other, _ = cold_fetch(
                        b, f"/archiver/hgmo/bench/size-{size}/{rev()}"
                    )
                    ratios.append(base / other)
            rows.append(
                Row(
                    f"tuning: {name} = {value}, throughput ÷ defaults'",
                    "report",
                    ratios,
                )
            )
    return rows


def with_moto(runs: int) -> list[Row]:
    """archiverd and the old design against moto, a real S3 implementation.

    moto stores every byte in one process (about 40 MiB/s here), so its
    regions cannot take uploads in parallel the way real regions do: this
    row checks the pipeline against real S3 semantics, and shows what is left
    of the advantage when storage itself is the one slow leg.
    """
    size = 64 * MIB
    ratios = []
    with (
        server(fixture("bench.upstream")) as up,
        server(fixture("bench.moto_server")) as moto,
    ):
        with Daemon(WORK / "moto", config(up.url, moto.url, 2)) as d:
            for _ in range(runs):
                url = f"{up.url}/bench/size-{size}/archive/{rev()}.tar.gz/"
                ours, result = cold_fetch(
                    d, f"/archiver/hgmo/bench/size-{size}/{rev()}"
                )
                assert result["size"] == size
                old = baseline(
                    "sequential", url, "--endpoint", moto.url, "--regions", "2"
                )
                ratios.append(old / ours)
    return [
        Row(
            "moto (both regions in one moto process): old design ÷ archiverd, "
            "64 MiB, 2 regions",
            "report",
            ratios,
        )
    ]


SCENARIOS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "overlap": lambda a: overlap_and_old_design(a.runs),
    "memory": lambda a: memory(a.runs),
    "regions": lambda a: regions(a.runs),
    "dedup": lambda a: dedup(a.runs),
    "hits": lambda a: hit_path_and_status(a.runs, a.seconds),
    "waiting": lambda a: waiting_clients(a.runs, a.seconds, config, rev, WORK),
    "pipeline": lambda a: pipeline_cost(a.runs),
    "moto": lambda a: with_moto(a.runs),
    "reals3": lambda a: real_s3(a.runs, config, rev, baseline, WORK),
    "fleet": lambda a: fleet(a, config, rev, _lua, WORK),
    "oldclient": lambda a: old_client_flow(a.runs, WORK),
    "prewarm": lambda a: prewarm_burst(a.runs, WORK),
}


def write(rows: list[Row], started: float, name: str = "results") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{platform.machine()}, {os_cpus()} cores, Python {platform.python_version()}"
    )
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine,
        "seconds": round(time.monotonic() - started, 1),
        "rows": [r.as_dict() for r in rows],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# archiverd benchmark results",
        "",
        f"{data['date']}, {machine}; `make bench` took {data['seconds']} s.",
        "Median of the runs, with min and max; every ratio measured side by side.",
        "",
        "| figure | target | median | min | max | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        unit = "" if r["unit"] == "×" else f" {r['unit']}"
        lines.append(
            f"| {r['name']} | {r['target']} | {r['median']}{unit} | {r['min']} | "
            f"{r['max']} | {met} | {r['notes']} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def os_cpus() -> int:
    import os

    return os.cpu_count() or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument(
        "--only", action="append", choices=sorted([*SCENARIOS, "tuning"])
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is needed (apt-get install wrk)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    started = time.monotonic()
    rows: list[Row] = []
    for name in args.only or SCENARIOS:
        print(f"bench: {name} ...", flush=True)
        rows += tuning(args.runs) if name == "tuning" else SCENARIOS[name](args)
    if args.only == ["tuning"]:
        name = "tuning"
    elif args.only is not None and set(args.only) != set(SCENARIOS):
        name = "partial"
    else:
        name = "results"
    write(rows, started, name)


if __name__ == "__main__":
    main()
