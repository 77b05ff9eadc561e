"""Processes and measurements for the benchmarks: every server is a subprocess.

Nothing here touches a Twisted reactor: the benchmark driver is plain
blocking Python, so it never competes with the daemon for the GIL.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MIB = 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def env() -> dict[str, str]:
    """The checkout first on the path; fake credentials for the S3 fixtures."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


class Server:
    """A subprocess that prints ``LISTENING <port>`` once it serves."""

    def __init__(self, args: list[str], log: Path | None = None) -> None:
        self.log = log
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=out
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"{args[:4]} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def server(args: list[str], log: Path | None = None) -> Iterator[Server]:
    s = Server(args, log)
    try:
        yield s
    finally:
        s.stop()


def fixture(module: str, *options: str) -> list[str]:
    return [sys.executable, "-m", module, "--port", "0", *options]


@dataclass
class Daemon:
    """``twistd -n archiverd`` with a generated config."""

    workdir: Path
    config: str
    #: The daemon's log: a file in workdir, or None to discard it (so that
    #: the bytes the daemon writes to disk are only what archiving wrote).
    log: bool = True
    proc: subprocess.Popen[bytes] = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: The daemon's TMPDIR: it must stay empty.
        self.tmpdir = self.workdir / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        path = self.workdir / "archiverd.toml"
        path.write_text(self.config)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                f"--logfile={self.workdir / 'twistd.log' if self.log else '-'}",
                "archiverd",
                "--config",
                str(path),
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
            ],
            cwd=self.workdir,
            env={**env(), "TMPDIR": str(self.tmpdir)},
            stdout=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                get(self.url + "/archiver/status/ping")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"archiverd did not start: {self.workdir}"
                    ) from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def get(url: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """A GET that does not follow redirects."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str) -> Any:
    code, _, body = get(url)
    assert code == 200, (url, code, body[:200])
    return json.loads(body)


def wait_for_task(location: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        result: dict[str, Any] = get_json(location)["result"]
        if result["state"] in ("SUCCESS", "FAILURE"):
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"task still {result}")
        time.sleep(0.01)


def cold_fetch(daemon: Daemon, path: str) -> tuple[float, dict[str, Any]]:
    """Seconds from the first request to SUCCESS, and the final status."""
    started = time.monotonic()
    code, headers, _ = get(daemon.url + path)
    assert code == 202, (code, path)
    result = wait_for_task(headers["Location"])
    assert result["state"] == "SUCCESS", result
    return time.monotonic() - started, result


@dataclass
class ProcStats:
    peak_rss: int  # bytes (VmHWM)
    rss: int
    cpu: float  # seconds, user + system
    write_bytes: int  # bytes the process caused to be written to storage


def proc_stats(pid: int) -> ProcStats:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    io = dict(
        line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines()
    )
    return ProcStats(
        int(fields["VmHWM"].split()[0]) * 1024,
        int(fields["VmRSS"].split()[0]) * 1024,
        (int(stat[11]) + int(stat[12])) / ticks,
        int(io["write_bytes"]),
    )


@dataclass
class Row:
    """One benchmark figure: a ratio measured side by side, several times."""

    name: str
    target: str
    runs: list[float]
    passed: Callable[[float], bool] | None = None
    unit: str = "×"
    notes: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        ok = None if self.passed is None else bool(self.passed(self.median))
        return {
            "name": self.name,
            "target": self.target,
            "median": round(self.median, 3),
            "min": round(min(self.runs), 3),
            "max": round(max(self.runs), 3),
            "runs": [round(r, 3) for r in self.runs],
            "unit": self.unit,
            "met": ok,
            "notes": self.notes,
        }
