"""archiverd on real S3 servers (moto, and Ceph radosgw where it is installed),
held against the streaming bound.

The last part cannot be stored before both the download and the parts phase
end, and completion starts after it, so no design can store an archive faster
than::

    bound = max(T_down, T_parts) + T_complete

all three measured in the same run as archiverd: ``T_parts``, the parts
phase alone (256 MiB from memory into each of 2 regions, archiverd's part
size and parts in flight); ``T_complete``, completing those uploads (and
whatever a design must do before SUCCESS, which for archiverd is tagging:
that is measured as archiverd does it, by ``S3Storage.complete_upload``);
``T_down``, reading upstream to nowhere, with upstream paced to the server's
store rate (the archive's size ÷ ``T_parts`` measured once at the start).

The bound holds when the server's capacity is the same in both
measurements, which on a 2-core machine it is not by itself: the server's
CPU (radosgw's above all: ~4.5 s of CPU to take 512 MiB) would be shared
with whoever sends, and archiverd also downloads and hashes where the
parts-phase client only sends. So while these rows run the server has core 0
to itself and every client (the parts phase, upstream, archiverd) runs on
the others (:func:`own_core`): the server takes what one core lets it, the
same in both measurements. The server's pace also drifts as it fills
(radosgw's memstore: T_parts 1.6 s fresh, 2.8 s after ~1 GiB), so the
phases are measured just before and just after each archiverd run and
averaged. Measured without the own core: radosgw 1.73× the bound,
with T_parts 1.70 s and archiverd 3.21 s, the two processes sharing two
cores; with it, 1.01-1.04× (docs/performance.md).

``python -m bench.real_s3 phases --endpoint E --regions N --size S`` prints
``{"parts": s, "complete": s}`` (run in its own process, as the other
baselines are). :func:`real_s3` is the ``make bench`` scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from bench.harness import MIB, ROOT, Daemon, Row, cold_fetch, env, fixture, server

SIZE = 256 * MIB
REGIONS = 2
PART = 8 * MIB
IN_FLIGHT = 4
RADOSGW = ROOT / "scripts" / "radosgw.sh"


def phases(endpoint: str, regions: int, size: int) -> dict[str, float]:
    """Seconds for the parts of ``size`` bytes to reach every region at once
    (``IN_FLIGHT`` at a time each), then for completing every upload."""
    from archiverd.storage.s3 import S3Storage
    from bench.baselines import INFO
    from bench.upstream import BLOCK

    part = (BLOCK * (PART // len(BLOCK) + 1))[:PART]
    count, last = divmod(size, PART)
    parts: list[bytes] = [part] * count + ([part[:last]] if last else [])
    buckets = {f"region-{i}": f"baseline-{i}" for i in range(regions)}
    storage = S3Storage(
        buckets,
        endpoint_url=endpoint,
        addressing_style="path",
        max_connections=regions * IN_FLIGHT,
    )
    storage.open()
    key = f"baseline/{uuid.uuid4().hex}.tar.gz"
    uploads = {r: storage.start_upload(r, key, INFO) for r in storage.regions}
    checksums = [storage.part_checksum(p) for p in parts]

    def region_parts(region: str) -> list[tuple[int, str]]:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [
                pool.submit(
                    storage.upload_part,
                    region,
                    key,
                    uploads[region],
                    n,
                    0,
                    p,
                    checksums[n - 1],
                )
                for n, p in enumerate(parts, 1)
            ]
            return [(n, f.result()) for n, f in enumerate(futures, 1)]

    with ThreadPoolExecutor(regions) as outer:
        started = time.monotonic()
        tags = dict(zip(storage.regions, outer.map(region_parts, storage.regions)))
        parts_done = time.monotonic()
        list(
            outer.map(
                lambda r: storage.complete_upload(
                    r, key, uploads[r], tags[r], INFO, "0" * 64, size
                ),
                storage.regions,
            )
        )
        completed = time.monotonic()
    for region, bucket in buckets.items():
        storage._clients[region].delete_object(Bucket=bucket, Key=key)
    storage.close()
    return {"parts": parts_done - started, "complete": completed - parts_done}


def _phases(endpoint: str) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.real_s3",
            "phases",
            "--endpoint",
            endpoint,
            "--regions",
            str(REGIONS),
            "--size",
            str(SIZE),
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        check=True,
    )
    measured: dict[str, float] = json.loads(out.stdout)
    return measured


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _named(prefixes: tuple[str, ...]) -> list[int]:
    """Processes whose name starts with one of ``prefixes``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip().startswith(prefixes):
                    found.append(int(pid))
        except OSError:
            pass
    return found


@contextmanager
def own_core(server_pids: list[int]) -> Iterator[None]:
    """The server (every thread of ``server_pids``) on core 0, this process
    and the ones it starts meanwhile on the other cores (see the module)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        yield
        return
    server, clients = {cores[0]}, set(cores[1:])
    for pid in server_pids:
        for thread in _threads(pid):
            os.sched_setaffinity(thread, server)
    os.sched_setaffinity(0, clients)
    try:
        yield
    finally:
        os.sched_setaffinity(0, set(cores))


@contextmanager
def radosgw() -> Iterator[str]:
    """A throwaway radosgw (``scripts/radosgw.sh``), its buckets made; its URL."""
    import boto3

    workdir = Path(tempfile.mkdtemp(prefix="bench-radosgw-"))
    shutil.rmtree(workdir)
    environment = {
        **env(),
        "RADOSGW_ACCESS_KEY": env()["AWS_ACCESS_KEY_ID"],
        "RADOSGW_SECRET_KEY": env()["AWS_SECRET_ACCESS_KEY"],
        "RADOSGW_OWNER_PID": str(os.getpid()),
        # Every byte is kept in memory: room for a run's objects.
        "RADOSGW_MEMSTORE_BYTES": str(8 * 1024**3),
    }
    try:
        out = subprocess.run(
            [str(RADOSGW), "start", str(workdir)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        url = out.strip().splitlines()[-1].removeprefix("endpoint_url=")
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=environment["RADOSGW_ACCESS_KEY"],
            aws_secret_access_key=environment["RADOSGW_SECRET_KEY"],
        )
        for n in range(REGIONS):
            for prefix in ("bench", "baseline"):
                s3.create_bucket(Bucket=f"{prefix}-{n}")
        yield url
    finally:
        subprocess.run(
            [str(RADOSGW), "stop", str(workdir)], capture_output=True, check=False
        )


def radosgw_unavailable() -> str | None:
    proc = subprocess.run(
        [str(RADOSGW), "check"], capture_output=True, text=True, check=False
    )
    return None if proc.returncode == 0 else proc.stdout.strip() or "not installed"


def _on(
    name: str,
    endpoint: str,
    runs: int,
    config: Callable[..., str],
    rev: Callable[[], str],
    baseline: Callable[..., float],
    work: Path,
    old_design: bool,
) -> list[Row]:
    """The rows for one server at ``endpoint``."""
    calibration = _phases(endpoint)
    rate = int(SIZE / calibration["parts"])
    ratios, olds, notes = [], [], []
    with server(fixture("bench.upstream", "--rate", str(rate))) as up:
        path = f"/bench/size-{SIZE}"
        cfg = config(up.url, endpoint, REGIONS, hold=0)
        with Daemon(work / f"real-s3-{name}", cfg) as d:
            # Warm-up: a server's first multipart upload into a bucket is slow.
            cold_fetch(d, f"/archiver/hgmo/bench/size-{2 * PART}/{rev()}")
            for _ in range(runs):
                before = _phases(endpoint)
                t_down = baseline("read", f"{up.url}{path}/archive/{rev()}.tar.gz/")
                ours, result = cold_fetch(d, f"/archiver/hgmo{path}/{rev()}")
                assert result["size"] == SIZE, result
                after = _phases(endpoint)
                # A server's pace drifts as it fills (radosgw's memstore):
                # the phases are measured on both sides of archiverd's run.
                measured = {k: (before[k] + after[k]) / 2 for k in before}
                bound = max(t_down, measured["parts"]) + measured["complete"]
                ratios.append(ours / bound)
                notes.append((ours, t_down, measured["parts"], measured["complete"]))
                if old_design:
                    url = f"{up.url}{path}/archive/{rev()}.tar.gz/"
                    old = baseline(
                        "sequential", url, "--endpoint", endpoint, "--regions", "2"
                    )
                    olds.append(old / ours)
    ours, t_down, t_parts, t_complete = (
        statistics.median(n[i] for n in notes) for i in range(4)
    )
    rows = [
        Row(
            f"{name}: cold 256 MiB, 2 regions, to SUCCESS ÷ the streaming bound "
            "max(T_down, T_parts) + T_complete",
            "≤ 1.05",
            ratios,
            lambda m: m <= 1.05,
            notes=f"medians: archiverd {ours:.2f} s, T_down {t_down:.2f} s, "
            f"T_parts {t_parts:.2f} s, T_complete {t_complete:.3f} s; upstream "
            f"paced to {rate / MIB:.0f} MiB/s",
        )
    ]
    if old_design:
        rows.append(
            Row(
                f"{name}: old design ÷ archiverd, cold 256 MiB, 2 regions",
                "report (one server on one core serves both regions)",
                olds,
            )
        )
    return rows


def real_s3(
    runs: int,
    config: Callable[..., str],
    rev: Callable[[], str],
    baseline: Callable[..., float],
    work: Path,
) -> list[Row]:
    """archiverd against the streaming bound on moto and on radosgw."""
    with (
        server(fixture("bench.moto_server", "--regions", str(REGIONS))) as moto,
        own_core([moto.pid]),
    ):
        rows = _on("moto", moto.url, runs, config, rev, baseline, work, False)
    missing = radosgw_unavailable()
    if missing is not None:
        print(f"bench: radosgw rows skipped: {missing}", flush=True)
        return rows
    with radosgw() as url, own_core(_named(("radosgw", "ceph-"))):
        rows += _on("radosgw", url, runs, config, rev, baseline, work, True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("phases")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--regions", type=int, default=REGIONS)
    p.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    print(json.dumps(phases(args.endpoint, args.regions, args.size)), flush=True)


if __name__ == "__main__":
    main()
