"""Which Redis client for archiverd's fleet: ``python -m bench.redis_client``.

Measures, side by side in one run against one redis-server on loopback (the
test suite's fixture, ``tests/integration/redis_fixture.py``), the cost on the
Twisted reactor of one HGETALL of a task record (10 fields):

- txredisapi: Twisted's own protocol on the reactor, one connection,
  concurrent commands pipelined on it;
- redis-py: the blocking client called through ``deferToThreadPool`` on a
  dedicated ``ThreadPool`` (``--threads``), as archiverd runs botocore;
- redis-py called directly, with no reactor: the floor, for reference.

Figures: sequential latency (µs per op: one caller awaiting each reply before
the next), throughput with ``--callers`` concurrent callers (ops/s), and the
process's CPU time per op in each (what the daemon pays, on any thread). Each
figure is the median of ``--rounds`` rounds, the clients taking turns within
a round. Needs redis-server (``scripts/redis.sh install``), txredisapi and
redis (``pip install txredisapi redis``). Writes its figures to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "archiverd:task:bench"
LOCK = "archiverd:lock:bench"
FIELDS = {
    "state": "PROGRESS",
    "status": "Uploading: 37.2 MiB so far",
    "src_url": "https://hg.mozilla.org/mozilla-central/archive/"
    "9213957d166d.tar.gz/testing/mozharness",
    "regions": "us-east-1,us-west-2",
    "bytes_received": "39007846",
    "created": "1790000000.25",
    "started": "1790000000.5",
    "owner": "archiverd-7f9c:1234",
    "ahead": "0",
    "error": "",
}

Op = Callable[[], Awaitable[Any]]


async def sequential(op: Op, n: int) -> tuple[float, float]:
    """(µs per op, CPU µs per op) with one caller."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await op()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / n * 1e6, cpu / n * 1e6


async def concurrent(op: Op, callers: int, n: int) -> tuple[float, float]:
    """(ops/s, CPU µs per op) with ``callers`` callers each doing ``n`` ops."""
    from twisted.internet.defer import Deferred, gatherResults

    async def caller() -> None:
        for _ in range(n):
            await op()

    cpu, wall = time.process_time(), time.perf_counter()
    await gatherResults(
        [Deferred.fromCoroutine(caller()) for _ in range(callers)],
        consumeErrors=True,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    total = callers * n
    return total / wall, cpu / total * 1e6


async def bench(reactor: Any, server: Any, args: argparse.Namespace) -> None:
    import redis as redispy
    import txredisapi
    from twisted.internet.defer import succeed
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    url, port = server.url, server.port
    # convertNumbers=False: "0" stays a string, as redis-py gives it
    tx = await txredisapi.Connection("127.0.0.1", port, dbid=0, convertNumbers=False)
    assert await tx.hgetall(KEY) == FIELDS, "txredisapi read the record wrong"

    pool = ThreadPool(minthreads=args.threads, maxthreads=args.threads, name="redis")
    pool.start()
    client = redispy.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=2,
        max_connections=args.threads + 1,
    )
    assert client.hgetall(KEY) == FIELDS

    # (title, the call with txredisapi, the call with redis-py)
    commands: list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = [
        (f"HGETALL ({len(FIELDS)}-field task record)", _hgetall, _hgetall),
        ("SET NX PX (a lock taken)", _set_nx_tx, _set_nx_py),
    ]
    await tx.delete(LOCK)
    import twisted

    print(
        f"Python {sys.version.split()[0]}, Twisted {twisted.__version__}, "
        f"txredisapi {version('txredisapi')}, redis-py {version('redis')}, "
        f"redis-server {_server_version(server)}; median of {args.rounds} rounds "
        f"of {args.ops} ops; {args.callers} concurrent callers"
    )
    for title, tx_call, py_call in commands:
        clients: list[tuple[str, Op, bool]] = [
            (
                "txredisapi (reactor, pipelined)",
                lambda c=tx_call: c(tx),
                True,
            ),
            (
                f"redis-py on a {args.threads}-thread pool",
                lambda c=py_call: deferToThreadPool(reactor, pool, c, client),
                True,
            ),
            (
                "redis-py direct, blocking (floor)",
                lambda c=py_call: succeed(c(client)),
                False,
            ),
        ]
        results = await _measure(clients, args)
        print()
        print(f"{title}:")
        print()
        print(
            f"| client | sequential µs/op | CPU µs/op | {args.callers} callers "
            "ops/s | CPU µs/op |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, _, _ in clients:
            r = results[name]
            tput = f"{statistics.median(r['tput']):,.0f}" if r["tput"] else "n/a"
            tput_cpu = f"{statistics.median(r['tput_cpu']):.0f}" if r["tput"] else "n/a"
            print(
                f"| {name} | {statistics.median(r['lat']):.0f} "
                f"| {statistics.median(r['lat_cpu']):.0f} | {tput} | {tput_cpu} |"
            )
        tx_name, pool_name = clients[0][0], clients[1][0]
        print()
        print(
            "txredisapi ÷ thread pool: sequential latency "
            f"{_ratio(results, tx_name, pool_name, 'lat'):.2f}×, throughput "
            f"{_ratio(results, tx_name, pool_name, 'tput'):.2f}×"
        )

    await tx.disconnect()
    pool.stop()
    client.close()


def _hgetall(client: Any) -> Any:
    return client.hgetall(KEY)


# The same key each time: taken once, refused after; the cost is alike.
def _set_nx_tx(client: Any) -> Any:
    return client.set(LOCK, "token", pexpire=30_000, only_if_not_exists=True)


def _set_nx_py(client: Any) -> Any:
    return client.set(LOCK, "token", px=30_000, nx=True)


async def _measure(
    clients: list[tuple[str, Op, bool]], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {
        name: {"lat": [], "lat_cpu": [], "tput": [], "tput_cpu": []}
        for name, _, _ in clients
    }
    for _name, op, _ in clients:  # warm up connections, threads, caches
        await sequential(op, 200)
    for _ in range(args.rounds):
        for name, op, can_share in clients:
            lat, lat_cpu = await sequential(op, args.ops)
            results[name]["lat"].append(lat)
            results[name]["lat_cpu"].append(lat_cpu)
            if can_share:
                tput, tput_cpu = await concurrent(
                    op, args.callers, max(1, args.ops // args.callers)
                )
                results[name]["tput"].append(tput)
                results[name]["tput_cpu"].append(tput_cpu)
    return results


def _ratio(results: dict[str, dict[str, list[float]]], a: str, b: str, k: str) -> float:
    return statistics.median(results[a][k]) / statistics.median(results[b][k])


def _server_version(server: Any) -> str:
    for line in server.command("INFO", "server").splitlines():
        if line.startswith("redis_version:"):
            return str(line.split(":", 1)[1])
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for module in ("redis", "txredisapi"):
        try:
            __import__(module)
        except ImportError:
            print(f"bench.redis_client: needs {module}: pip install {module}")
            return 1

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from redis_fixture import RedisServer
    from twisted.internet import task

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        server.command(*_hset_args())

        async def run(reactor: Any) -> None:
            await bench(reactor, server, args)

        try:
            task.react(lambda reactor: _as_deferred(run(reactor)))
        except SystemExit as e:
            return int(e.code or 0)
    return 0


def _hset_args() -> list[str]:
    args = ["HSET", KEY]
    for k, v in FIELDS.items():
        args += [k, v]
    return args


def _as_deferred(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)


if __name__ == "__main__":
    sys.exit(main())
