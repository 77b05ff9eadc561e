"""What proving a close-delimited body whole costs: ``python -m bench.completeness``.

A body without Content-Length or chunked framing (HTTP/1.0) is proven whole by
its format (``archiverd/transfer/complete.py``). This measures:

1. each format's check alone, on a real archive of Python's standard library
   (source files, so it compresses as a source tree does): MiB/s of archive
   and CPU seconds per GiB;
2. the daemon end to end (one region, the discarding S3 sink) fetching the
   same tar.gz served with a Content-Length (no check: HTTP proves it) and
   close-delimited (checked): MiB/s and daemon CPU per GiB, median of runs.

The upstream is this module run as a fixture (``python -m bench.completeness
serve --port 0 --file F [--close]``). Nothing here is part of ``make bench``:
the pipeline row there measures Content-Length bodies, which are not checked.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import statistics
import sys
import sysconfig
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._serve import Handler, serve
from bench._serve import parser as serve_parser

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "results" / "tmp" / "completeness"
MIB = 1024 * 1024


def stdlib_tar() -> bytes:
    """A tar of the standard library's .py files (about 30 MiB)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in sorted(stdlib.rglob("*.py")):
            if "site-packages" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(stdlib)), recursive=False)
    return out.getvalue()


def archives(copies: int) -> dict[str, bytes]:
    """The stdlib in each format; the tar.gz is ``copies`` gzip members (one
    member or many inflate at the same rate)."""
    import bz2
    import zipfile

    tar = stdlib_tar()
    member = gzip.compress(tar, compresslevel=6, mtime=0)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stdlib.tar", tar)
    return {
        "tar.gz": member * copies,
        "tar.bz2": bz2.compress(tar, 6),
        "zip": out.getvalue(),
    }


def check_alone(suffix: str, data: bytes, part: int = 8 * MIB) -> tuple[float, float]:
    """MiB/s and CPU s/GiB of one format's check, fed a part at a time."""
    from archiverd.transfer.complete import format_check

    cpu, wall = time.process_time(), time.perf_counter()
    check = format_check(suffix)
    view = memoryview(data)
    for start in range(0, len(data), part):
        check.feed(view[start : start + part])
    assert check.verdict() is None, suffix
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return len(data) / MIB / wall, cpu / (len(data) / 1024**3)


class FileHandler(Handler):
    """Serves one file for every archive path: with Content-Length, or
    HTTP/1.0 close-delimited with ``--close``."""

    def do_GET(self) -> None:  # noqa: N802
        options: Any = self.server.options
        data = Path(options.file).read_bytes()
        if options.close:
            self.wfile.write(
                b"HTTP/1.0 200 OK\r\nContent-Type: application/x-gzip\r\n\r\n"
            )
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
        view = memoryview(data)
        for start in range(0, len(data), MIB):
            self.wfile.write(view[start : start + MIB])


def end_to_end(path: Path, close: bool, runs: int) -> tuple[list[float], list[float]]:
    """MiB/s and daemon CPU s/GiB of cold fetches of the file at ``path``."""
    from bench.__main__ import config
    from bench.harness import Daemon, cold_fetch, fixture, proc_stats, server

    size = path.stat().st_size
    upstream = [sys.executable, "-m", "bench.completeness", "serve", "--port", "0"]
    upstream += ["--file", str(path)] + (["--close"] if close else [])
    rates, cpu = [], []
    with server(upstream) as up:
        with server(fixture("bench.sink")) as sink:
            name = "close" if close else "length"
            with Daemon(WORK / name, config(up.url, sink.url, 1)) as d:
                for _ in range(runs):
                    before = proc_stats(d.pid).cpu
                    rev = uuid.uuid4().hex[:12]
                    seconds, result = cold_fetch(d, f"/archiver/hgmo/bench/{rev}")
                    assert result["size"] == size, result
                    cpu.append((proc_stats(d.pid).cpu - before) / (size / 1024**3))
                    rates.append(size / MIB / seconds)
    return rates, cpu


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        p = serve_parser("Serves one file, with a length or close-delimited.")
        p.add_argument("--file", required=True)
        p.add_argument("--close", action="store_true")
        serve(FileHandler, p.parse_args(sys.argv[2:]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--copies", type=int, default=40, help="gzip members (~6 MiB)")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    made = archives(args.copies)
    print("| check alone | archive | MiB/s | CPU s/GiB |\n|---|---|---|---|")
    for suffix, data in made.items():
        rate, cpu = check_alone(suffix, data)
        print(f"| {suffix} | {len(data) / MIB:.1f} MiB | {rate:.0f} | {cpu:.2f} |")
    path = WORK / "stdlib.tar.gz"
    path.write_bytes(made["tar.gz"])
    print("\n| daemon, tar.gz, 1 region | MiB/s | CPU s/GiB |\n|---|---|---|")
    for close in (False, True):
        rates, cpu = end_to_end(path, close, args.runs)
        label = "close-delimited (checked)" if close else "Content-Length (not checked)"
        print(
            f"| {label} | {statistics.median(rates):.0f} "
            f"(min {min(rates):.0f}) | {statistics.median(cpu):.2f} |"
        )
    os.remove(path)


if __name__ == "__main__":
    main()
