"""archiverd as real processes (`twistd -n archiverd`), for the tests that
start, signal and kill them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fixtures import free_port
from polling import TIMEOUT, eventually_blocking

REPO_ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).parent / "twistd"


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # The checkout itself (not an installed copy) is what runs, plugin included.
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(extra or {})}


def twistd(
    *args: str, cwd: Path, environ: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the daemon (with ``environ`` added to the environment); its
    output goes to cwd/twistd.out (never a full pipe)."""
    with open(cwd / "twistd.out", "wb") as out:
        return subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "archiverd", *args],
            cwd=cwd,
            env=env(environ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def output(proc: subprocess.Popen[bytes], cwd: Path) -> str:
    """Everything the daemon wrote, once it has exited (a daemon still
    running after 30 s is killed, and the test fails)."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running after 30 s:\n{logged(cwd)}") from None
    return logged(cwd)


def logged(cwd: Path) -> str:
    """What the daemon started in ``cwd`` has written so far."""
    return (cwd / "twistd.out").read_text()


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], timeout: float = TIMEOUT
) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"archiverd exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    eventually_blocking(
        listening, what=f"archiverd to listen on port {port}", timeout=timeout
    )


def serve(
    config: Path,
    cwd: Path,
    *options: str,
    environ: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """The daemon serving ``config`` on a free loopback port, once it listens:
    (its process, its base URL)."""
    port = free_port()
    proc = twistd(
        "--config",
        str(config),
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        *options,
        cwd=cwd,
        environ=environ,
    )
    try:
        wait_for_port(port, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, f"http://127.0.0.1:{port}"


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then wait for the exit; past ``timeout``, kill it and raise."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def task_status(url: str) -> dict[str, Any]:
    """The ``result`` of a status URL (which must answer 200)."""
    code, _, body = open_url(url)
    assert code == 200, (code, body)
    return dict(json.loads(body)["result"])


def wait_for_task(url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Poll a status URL until the task finishes; its last ``result``."""
    return eventually_blocking(
        lambda: task_status(url),
        until=lambda result: result["state"] in ("SUCCESS", "FAILURE"),
        what=f"the task at {url} to finish",
        timeout=timeout,
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def open_url(url: str, follow: bool = True) -> tuple[int, dict[str, str], bytes]:
    handlers = [urllib.request.ProxyHandler({})]
    if not follow:
        handlers.append(_NoRedirect())
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def write_config(
    path: Path,
    template: str,
    buckets: Any,
    endpoint: str = "",
    extra: str = "",
    *,
    storage: str = "",
    s3: str = "",
    tasks: str = "",
    hold: float = 0,
) -> Path:
    """An s3 config; ``extra`` goes at the top, ``storage``, ``s3`` and
    ``tasks`` into the [storage], [storage.s3] and [tasks] tables.

    ``hold = 0`` unless given: a cold request gets its 202 at once (the flow
    these tests poll), not a 302 after waiting for the task."""
    regions = ", ".join(f'"{r}" = "{b}"' for r, b in buckets.buckets.items())
    path.write_text(
        f"""
{extra}
[sources.hgmo]
url_template = "{template}"

[storage]
backend = "s3"
signed_url_expiry = 300
{storage}

[storage.s3]
endpoint_url = "{endpoint or buckets.endpoint_url}"
addressing_style = "path"
buckets = {{ {regions} }}
{s3}

[pipeline]
part_size = 5242880

[tasks]
hold = {hold}
{tasks}
"""
    )
    return path


def write_file_config(
    path: Path,
    template: str,
    regions: tuple[str, ...] = ("a", "b"),
    *,
    root: Path | None = None,
    storage: str = "",
    file: str = "",
    tasks: str = "",
) -> Path:
    """A file-backend config, its root ``root`` (else ``data`` beside
    ``path``); ``storage``, ``file`` and ``tasks`` go into the [storage],
    [storage.file] and [tasks] tables (archiverd's defaults otherwise,
    ``hold`` among them)."""
    listed = ", ".join(f'"{r}"' for r in regions)
    path.write_text(
        f"""
[sources.hgmo]
url_template = "{template}"

[storage]
backend = "file"
{storage}

[storage.file]
root = "{root or path.parent / "data"}"
regions = [{listed}]
{file}

[tasks]
{tasks}
"""
    )
    return path
