"""The fleet scenario of ``make bench``: daemons coordinated through Redis.

Side by side in one run, against the fast upstream and the discarding sink:

- hits (302s) at one Redis-coordinated daemon ÷ at one daemon without Redis
  (hits never touch Redis: this should be ~1);
- hits at two daemons (wrk on each at once) ÷ at one;
- status polls of finished tasks at a daemon that did not run them (each
  record read from Redis once, then answered from memory as the owner
  answers: target ≥ 0.95) ÷ at the daemon that ran them;
- polls at two daemons ÷ at one;
- Redis round trips per cold archive at the daemon that fetches it (claim,
  turn at a slot, fence, finish: target ≤ 6), with Redis' commands beside.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

from bench.harness import (
    Daemon,
    Row,
    fixture,
    get,
    proc_stats,
    server,
    wait_for_task,
)

TASKS = 300


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """redis-server on a free loopback port; its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("bench: redis-server is needed (scripts/redis.sh install)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while redis_cli(port, "PING") != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def redis_cli(port: int, *command: str) -> str:
    """One command over RESP, answered as text ("" when unreachable)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(
                f"*{len(command)}\r\n".encode()
                + b"".join(f"${len(c)}\r\n{c}\r\n".encode() for c in command)
            )
            data = b""
            while not data.endswith(b"\r\n") or data.startswith(b"$"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"$") and data.count(b"\r\n") >= 2:
                    break
    except OSError:
        return ""
    text = data.decode()
    return text[1:].strip() if text[:1] in "+:" else text.split("\r\n", 1)[-1]


def commands_processed(port: int) -> int:
    info = redis_cli(port, "INFO", "stats")
    for line in info.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    raise RuntimeError("no total_commands_processed in INFO")


def round_trips(url: str) -> float:
    """The daemon's Redis round trips so far, pings left out (/metrics)."""
    _, _, body = get(url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith('archiverd_redis_calls_total{kind="work"}'):
            return float(line.split()[-1])
    raise RuntimeError("no archiverd_redis_calls_total in /metrics")


def wrk_at_once(
    urls: list[str], seconds: int, connections: int, script: Path | None = None
) -> float:
    """Requests/s summed over one wrk per URL, all running at once."""
    procs = []
    for url in urls:
        args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
        if script is not None:
            args += ["-s", str(script)]
        procs.append(subprocess.Popen([*args, url], stdout=subprocess.PIPE, text=True))
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                total += float(line.split()[1])
            if "Non-2xx or 3xx" in line or "Socket errors" in line:
                raise RuntimeError(f"wrk saw errors: {line}")
    return total


def polls_and_cpu(daemon: Daemon, seconds: int, script: Path) -> tuple[float, float]:
    """Polls/s at ``daemon`` (wrk, 50 connections), and the daemon's CPU
    microseconds per poll meanwhile (steadier than the rate on a busy
    machine)."""
    cpu = proc_stats(daemon.pid).cpu
    rate = wrk_at_once([daemon.url], seconds, 50, script)
    used = proc_stats(daemon.pid).cpu - cpu
    return rate, used / (rate * seconds) * 1e6


def fleet(args: Any, config: Any, rev: Any, lua: Any, work: Path) -> list[Row]:
    runs, seconds = args.runs, args.seconds
    alone, hits_redis, hits_two, polls_far, polls_two = [], [], [], [], []
    costs: list[float] = []
    hit_trips: list[float] = []
    cpu_near: list[float] = []
    cpu_far: list[float] = []
    script = work / "fleet-status.lua"
    with (
        server(fixture("bench.upstream")) as up,
        server(fixture("bench.sink")) as sink,
        redis_server(work / "redis") as redis_url,
    ):
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        coordination = f'\n[coordination]\nbackend = "redis"\nurl = "{redis_url}"\n'
        # hold = 0: a cold request answers 202 at once, so the cold archives
        # are asked for back to back and their tasks polled afterwards.
        shared = config(up.url, sink.url, 2, hold=0) + coordination
        with (
            Daemon(work / "fleet-a", shared) as a,
            Daemon(work / "fleet-b", shared) as b,
            Daemon(work / "fleet-memory", config(up.url, sink.url, 2, hold=0)) as solo,
        ):
            hit = f"/archiver/hgmo/bench/size-1024/{rev()}"
            wait_for_task(get(a.url + hit)[1]["Location"])
            assert get(solo.url + hit)[0] == 302  # one sink: stored for both
            # Cold archives through a, counting Redis' commands and a's round
            # trips; their tasks then answer polls from a's memory, and at b
            # from the record b read once (a success is reused 30 s).
            before, started = commands_processed(port), time.monotonic()
            trips = round_trips(a.url)
            paths = [f"/archiver/hgmo/bench/size-1024/{rev()}" for _ in range(TASKS)]
            ids = [get(a.url + p)[1]["Location"].rsplit("/", 1)[1] for p in paths]
            for task_id in ids:
                wait_for_task(f"{a.url}/archiver/status/{task_id}")
            pings = 3 * (time.monotonic() - started + 1)  # a, b: 1/s; slack
            per_miss = (commands_processed(port) - before - pings) / TASKS
            trips_per_miss = (round_trips(a.url) - trips) / TASKS
            for task_id in ids:  # b reads each record once: not what is timed
                get(f"{b.url}/archiver/status/{task_id}")
            script.write_text(lua(ids))
            for _ in range(runs):
                one_solo = wrk_at_once([solo.url + hit], seconds, 50)
                trips = round_trips(a.url)
                one = wrk_at_once([a.url + hit], seconds, 50)
                hit_trips.append(round_trips(a.url) - trips)
                two = wrk_at_once([a.url + hit, b.url + hit], seconds, 25)
                alone.append(one / one_solo)
                hits_two.append(two / one)
                hits_redis.append(one)
                # The owner before and after the other daemon: the machine's
                # drift over the three runs cancels out.
                near, cpu_a = polls_and_cpu(a, seconds, script)
                far, cpu_b = polls_and_cpu(b, seconds, script)
                again, cpu_again = polls_and_cpu(a, seconds, script)
                near = (near + again) / 2
                cpu_near.append((cpu_a + cpu_again) / 2)
                cpu_far.append(cpu_b)
                both = wrk_at_once([a.url, b.url], seconds, 25, script)
                polls_far.append(far / near)
                polls_two.append(both / near)
                costs.append((1 / far - 1 / near) * 1e6)
    return [
        Row(
            "Fleet: hits at a Redis-coordinated daemon ÷ at one without Redis",
            "≈ 1 (hits never touch Redis)",
            alone,
            lambda m: m >= 0.9 and max(hit_trips) == 0,
            notes=f"{min(hits_redis):.0f}–{max(hits_redis):.0f} 302s/s; Redis "
            f"round trips during them: {max(hit_trips):.0f}",
        ),
        Row(
            "Fleet: hits at 2 daemons at once ÷ at 1 daemon",
            "report (2 cores shared by the daemons and wrk)",
            hits_two,
        ),
        Row(
            "Fleet: polls at a daemon that does not own the task (its record "
            "read once; a success reused 30 s) ÷ at the owner",
            "≥ 0.95",
            polls_far,
            lambda m: m >= 0.95,
            notes=f"{min(costs):.0f}–{max(costs):.0f} µs more per poll (wall time, "
            f"50 connections); daemon CPU per poll {median(cpu_far):.0f} µs there, "
            f"{median(cpu_near):.0f} µs at the owner",
        ),
        Row(
            "Fleet: polls at 2 daemons at once ÷ at the owner alone",
            "report",
            polls_two,
        ),
        Row(
            "Fleet: Redis round trips per cold archive",
            "≤ 6",
            [trips_per_miss],
            lambda m: m <= 6,
            unit="round trips",
            notes=f"{per_miss:.1f} Redis commands (in Lua scripts); over {TASKS} "
            "cold archives at one daemon, pings left out",
        ),
    ]
