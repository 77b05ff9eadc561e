"""The process fails loudly and cleanly; every wait has a deadline on a
monotonic clock: `twistd -n archiverd` against a taken port, missing or
unreachable storage, a blackholed S3 endpoint, and a wall clock stepped under
libfaketime, and upstream credentials (issue 10, items 5, 6, 12, 13 and 17)."""

from __future__ import annotations

import base64
import glob
import http.server
import io
import json
import socket
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faults import MIB, FaultyS3, FaultyUpstream, S3Fault
from fixtures import free_port, random_bytes
from polling import eventually_blocking
from processes import (
    logged,
    open_url,
    output,
    serve,
    task_status,
    terminate,
    twistd,
    wait_for_task,
    write_config,
)

pytestmark = pytest.mark.integration

#: twistd's own lines as it starts, before archiverd has a say.
_TWISTD_START = ("starting up.", "reactor class:")


def _said(out: str) -> list[str]:
    """The lines of a run's output that are not twistd's start-up lines."""
    return [
        line
        for line in out.splitlines()
        if not any(start in line for start in _TWISTD_START)
    ]


def _file_config(path: Path, template: str, extra: str = "", source: str = "") -> Path:
    path.write_text(
        f"""
{extra}
[sources.hgmo]
url_template = "{template}"
{source}

[storage]
backend = "file"

[storage.file]
root = "{path.parent / "data"}"
regions = ["local"]

[tasks]
hold = 0
"""
    )
    return path


# -- item 12: a port in use ---------------------------------------------------


def test_a_port_in_use_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    """CannotListenError was logged as "Unhandled Error" and the process ran
    on without listening, so systemd's Restart=on-failure never fired."""
    config = _file_config(
        tmp_path / "archiverd.toml", "http://127.0.0.1:1/{repo}/{rev}.{suffix}"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = f"tcp:{port}:interface=127.0.0.1"
        proc = twistd("--config", str(config), "--listen", listen, cwd=tmp_path)
        out = output(proc, tmp_path)
    assert proc.returncode == 1, out
    [line] = _said(out)
    assert line.endswith(
        f"archiverd: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in out


# -- item 13: broken infrastructure at start ---------------------------------


def test_a_missing_bucket_stops_start_up_with_one_line_naming_it(
    tmp_path: Path, s3_buckets: Any
) -> None:
    """The daemon started and served with a bucket that does not exist; its
    tasks then failed as "internal error"."""
    buckets = SimpleNamespace(
        buckets={
            "us-east-1": s3_buckets.buckets["us-east-1"],
            "us-west-2": "archiverd-no-such-bucket",
        },
        endpoint_url=s3_buckets.endpoint_url,
    )
    config = write_config(
        tmp_path / "archiverd.toml", "http://127.0.0.1:1/{repo}/{rev}.{suffix}", buckets
    )
    listen = f"tcp:{free_port()}:interface=127.0.0.1"
    proc = twistd("--config", str(config), "--listen", listen, cwd=tmp_path)
    out = output(proc, tmp_path)
    assert proc.returncode == 1, out
    [line] = [line for line in out.splitlines() if "no-such-bucket" in line]
    assert "archiverd: cannot start: storage.s3.buckets: " in line
    assert "bucket 'archiverd-no-such-bucket' (us-west-2) does not exist" in line
    assert "Traceback" not in out


def test_storage_that_cannot_be_opened_stops_start_up_with_one_line(
    tmp_path: Path,
) -> None:
    """botocore refuses a region name the config allows: every storage call
    failed, and the daemon ran on, after one traceback."""
    buckets = SimpleNamespace(
        buckets={"us_east_1": "archiverd-east"}, endpoint_url="http://127.0.0.1:1"
    )
    config = write_config(
        tmp_path / "archiverd.toml", "http://127.0.0.1:1/{repo}/{rev}.{suffix}", buckets
    )
    listen = f"tcp:{free_port()}:interface=127.0.0.1"
    proc = twistd("--config", str(config), "--listen", listen, cwd=tmp_path)
    out = output(proc, tmp_path)
    assert proc.returncode == 1, out
    [line] = [line for line in out.splitlines() if "us_east_1" in line]
    assert "archiverd: cannot start: storage cannot be opened: " in line
    assert "Traceback" not in out


def test_unreachable_storage_and_redis_start_degraded_and_say_so(
    tmp_path: Path,
) -> None:
    """Storage that refuses connections and a Redis that is down: the daemon
    starts (they may come back), says so once per check, and its heartbeat
    fails while /__lbheartbeat__ still answers."""
    storage, redis = free_port(), free_port()  # nothing listens on either
    buckets = SimpleNamespace(
        buckets={"us-east-1": "archiverd-east", "us-west-2": "archiverd-west"},
        endpoint_url=f"http://127.0.0.1:{storage}",
    )
    config = write_config(
        tmp_path / "archiverd.toml",
        "http://127.0.0.1:1/{repo}/{rev}.{suffix}",
        buckets,
        extra=f'[coordination]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis}/0"',
        s3="max_attempts = 1",
    )
    proc, base = serve(config, tmp_path)
    try:
        degraded = eventually_blocking(
            lambda: [
                line for line in logged(tmp_path).splitlines() if "at start" in line
            ],
            until=lambda lines: len(lines) >= 3,
            what="a line for each failed check",
        )
        assert open_url(f"{base}/__lbheartbeat__")[0] == 200
        code, _, body = open_url(f"{base}/__heartbeat__")
        assert code == 500
    finally:
        terminate(proc)
    assert sorted(line.split("] ", 1)[1].split(":", 1)[0] for line in degraded) == [
        "redis",
        "storage in us-east-1",
        "storage in us-west-2",
    ]
    assert all("serving degraded" in line for line in degraded)
    out = output(proc, tmp_path)
    assert len([line for line in out.splitlines() if f":{redis}" in line]) == 1
    assert "Traceback" not in out
    assert b'"storage:us-east-1": "error"' in body and b'"redis": "error"' in body


# -- item 5: blackholed storage ----------------------------------------------


def _stored_then_blackholed(
    tmp_path: Path,
    buckets: Any,
    proxy: FaultyS3,
    upstream: FaultyUpstream,
    **extra: str,
) -> tuple[Any, str]:
    """A daemon that stored one archive (r-0123456789ab.tar.gz), with S3
    then accepting connections and never answering."""
    config = write_config(
        tmp_path / "archiverd.toml",
        upstream.url_template,
        buckets,
        proxy.endpoint_url,
        **extra,
    )
    proc, base = serve(config, tmp_path)
    code, _, _ = open_url(f"{base}/archiver/hgmo/r/0123456789ab")
    assert code == 202
    eventually_blocking(
        lambda: "stored r-0123456789ab.tar.gz" in logged(tmp_path),
        what="the archive stored in every region",
    )
    for bucket in buckets.buckets.values():
        proxy.faults.append(S3Fault(bucket, "any", hang=True))
    return proc, base


def _ask_in_background(url: str) -> None:
    def ask() -> None:
        try:
            open_url(url)
        except OSError:
            pass  # the test ends before storage answers

    threading.Thread(target=ask, daemon=True).start()


def test_a_stored_archive_is_served_while_every_storage_thread_is_stuck(
    tmp_path: Path, s3_buckets: Any, moto_server: Any
) -> None:
    """Cold requests filled the storage threads with calls to an endpoint
    that never answers, and a hit for a stored archive waited behind them to
    have its URL signed (118 s). Signing needs no network: it has threads of
    its own."""
    with (
        FaultyUpstream() as upstream,
        FaultyS3(moto_server.endpoint_url) as s3,
    ):
        proc, base = _stored_then_blackholed(
            tmp_path,
            s3_buckets,
            s3,
            upstream,
            storage="threads = 2",  # no URL is signed yet for the stored one
            extra="shutdown_grace = 1",  # storage still hangs when it stops
        )
        try:
            for n in range(4):  # 8 existence checks for 2 threads
                _ask_in_background(f"{base}/archiver/hgmo/r/00000000000{n}")
            eventually_blocking(
                lambda: sum(f.seen for f in s3.faults) >= 2,
                what="both storage threads stuck in S3 calls",
            )
            code, headers, _ = open_url(
                f"{base}/archiver/hgmo/r/0123456789ab?preferred_region=us-west-2",
                follow=False,
            )
            assert code == 302
            assert s3_buckets.buckets["us-west-2"] in headers["Location"]
            assert "X-Amz-Signature=" in headers["Location"]
        finally:
            terminate(proc)


def test_a_cold_request_to_blackholed_storage_is_answered_within_its_timeouts(
    tmp_path: Path, s3_buckets: Any, moto_server: Any
) -> None:
    """[storage.s3] connect_timeout and read_timeout bound every storage
    call: a cold request is answered (202) once they pass, and its task
    fails naming the region, instead of waiting as long as S3 holds on."""
    with (
        FaultyUpstream() as upstream,
        FaultyS3(moto_server.endpoint_url) as s3,
    ):
        proc, base = _stored_then_blackholed(
            tmp_path,
            s3_buckets,
            s3,
            upstream,
            s3="connect_timeout = 1\nread_timeout = 1\nmax_attempts = 1",
        )
        try:
            code, headers, _ = open_url(f"{base}/archiver/hgmo/r/00000000000a")
            assert code == 202
            result = wait_for_task(headers["Location"])
        finally:
            terminate(proc)
    assert result["state"] == "FAILURE", result
    assert result["status"].startswith("storage in us-"), result
    assert "timeout" in result["status"].lower(), result


# -- item 6: a wall clock stepped under libfaketime ---------------------------


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    return found[0]


class _SteppedClock:
    """The wall clock a daemon sees through libfaketime: stepped by writing
    an offset to a file that libfaketime reads at every call. The monotonic
    clock is left alone, as a real step (NTP, an operator) leaves it."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = tmp_path / "faketime"
        self.file.write_text("+0\n")
        self.environ = {
            "LD_PRELOAD": _libfaketime(),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step(self, offset: str) -> None:
        self.file.write_text(f"{offset}\n")


class _HeldArchive(http.server.BaseHTTPRequestHandler):
    """A whole .tar.gz with its Content-Length: a first piece, then the rest
    once the test releases it."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()
    archive = b""

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-gzip")
        self.send_header("Content-Length", str(len(self.archive)))
        self.end_headers()
        self.wfile.write(self.archive[:MIB])
        self.wfile.flush()
        self.release.wait(60)
        self.wfile.write(self.archive[MIB:])

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _tar_gz(nbytes: int) -> bytes:
    data = random_bytes(nbytes)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("r-0123456789ab/blob")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _progressing(status_url: str) -> dict[str, Any]:
    return eventually_blocking(
        lambda: task_status(status_url),
        until=lambda result: result["state"] == "PROGRESS",
        what="the task to receive its first bytes",
    )


def test_a_stalled_fetch_fails_on_time_when_the_wall_clock_steps_back(
    tmp_path: Path,
) -> None:
    """Stepped back an hour, the wall clock moved every deadline an hour
    away: a fetch stalled mid-body stayed STARTED. Deadlines are on the
    monotonic clock: it fails at its idle_timeout (2 s) all the same."""
    clock = _SteppedClock(tmp_path)
    with FaultyUpstream([f"stall_body:{MIB}"]) as upstream:
        config = _file_config(
            tmp_path / "archiverd.toml",
            upstream.url_template,
            source="idle_timeout = 2\ntotal_timeout = 60",
        )
        proc, base = serve(config, tmp_path, environ=clock.environ)
        try:
            code, headers, _ = open_url(f"{base}/archiver/hgmo/r/0123456789ab")
            assert code == 202
            _progressing(headers["Location"])
            clock.step("-1h")
            result = wait_for_task(headers["Location"])
        finally:
            terminate(proc)
    assert result["state"] == "FAILURE", result
    assert "(idle_timeout)" in result["status"], result


def test_a_healthy_fetch_survives_the_wall_clock_stepping_forward(
    tmp_path: Path,
) -> None:
    """Stepped forward two hours, the wall clock fired every deadline at
    once: a healthy fetch failed "took longer than 30s" after 3.6 s. On the
    monotonic clock it goes on, and its elapsed time is the real one; signed
    URLs alone follow the wall clock (they are checked against it)."""
    clock = _SteppedClock(tmp_path)
    _HeldArchive.archive = archive = _tar_gz(2 * MIB)
    _HeldArchive.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeldArchive)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    template = f"http://127.0.0.1:{server.server_port}/{{repo}}/{{rev}}.{{suffix}}"
    config = _file_config(
        tmp_path / "archiverd.toml",
        template,
        source="idle_timeout = 20\ntotal_timeout = 30",
    )
    try:
        proc, base = serve(config, tmp_path, environ=clock.environ)
        try:
            code, headers, _ = open_url(f"{base}/archiver/hgmo/r/0123456789ab")
            assert code == 202
            _progressing(headers["Location"])
            clock.step("+2h")
            # Polls wake the reactor, which then runs whatever is due.
            for _ in range(3):
                assert task_status(headers["Location"])["state"] == "PROGRESS"
            _HeldArchive.release.set()
            result = wait_for_task(headers["Location"])
            assert result["state"] == "SUCCESS", result
            assert result["elapsed_seconds"] < 600, result
            code, _, data = open_url(result["s3_urls"]["local"])
        finally:
            terminate(proc)
    finally:
        _HeldArchive.release.set()
        server.shutdown()
        server.server_close()
    assert code == 200 and data == archive


# -- item 17: upstream credentials ---------------------------------------------

_SECRETS = ("S3CRET1", "S3CRET2", "S3CRET3")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_upstream_credentials_are_sent_and_never_shown(
    tmp_path: Path, log_format: str
) -> None:
    """A template with userinfo failed every fetch with "invalid hostname",
    quoting the password; a template's ``?private_token=`` showed in the
    logs, every ``src_url`` and FAILURE texts. Now: userinfo goes as Basic
    auth, a configured header (here from the environment) with it, the
    query token stays in the URL asked for, and none of them shows in a
    status, a failure or a log line, text or JSON."""
    with FaultyUpstream(["status:404", "status:503"]) as upstream:
        base_url = upstream.base_url.replace("http://", "http://deploy:S3CRET1@")
        template = (
            base_url + "/{repo}/archive/{rev}.{suffix}/{subdir}?private_token=S3CRET2"
        )
        config = _file_config(
            tmp_path / "archiverd.toml",
            template,
            source="retries = 1\nretry_backoff = 0\n"
            'headers = { "PRIVATE-TOKEN" = { env = "UPSTREAM_TOKEN" } }',
        )
        options = ("--log-format", "json") if log_format == "json" else ()
        proc, base = serve(
            config, tmp_path, *options, environ={"UPSTREAM_TOKEN": "S3CRET3"}
        )
        try:
            code, headers, _ = open_url(f"{base}/archiver/hgmo/r/0123456789ab")
            assert code == 202
            refused = wait_for_task(headers["Location"])
            code, headers, _ = open_url(f"{base}/archiver/hgmo/r/0123456789ac")
            assert code == 202
            stored = wait_for_task(headers["Location"])
        finally:
            terminate(proc)
        seen = list(upstream.seen_headers)
        paths = list(upstream.paths)
    assert refused["state"] == "FAILURE" and "404" in refused["status"], refused
    assert stored["state"] == "SUCCESS", stored
    expected = "Basic " + base64.b64encode(b"deploy:S3CRET1").decode()
    # The 404, the 503 and the 200 at least (a GET that meets a closed
    # persistent connection is sent again).
    assert len(seen) >= 3, paths
    assert all(h.get("authorization") == expected for h in seen), seen
    assert all(h.get("private-token") == "S3CRET3" for h in seen), seen
    assert all("private_token=S3CRET2" in path for path in paths), paths
    shown = json.dumps([refused, stored]) + logged(tmp_path)
    assert "private_token=REDACTED" in refused["src_url"]
    assert "retrying" in shown  # the 503 was logged, with its URL
    assert not [s for s in _SECRETS if s in shown], shown
