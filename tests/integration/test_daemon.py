"""`twistd -n archiverd` as a subprocess, driven like the old service's clients."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from faults import MIB, FaultyS3, FaultyUpstream, S3Fault
from fixtures import archive_members
from polling import TIMEOUT, eventually_blocking
from processes import (
    open_url,
    output,
    serve,
    terminate,
    twistd,
    wait_for_task,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon_config(tmp_path: Path, hgweb, s3_buckets) -> Path:
    return write_config(tmp_path / "archiverd.toml", hgweb.url_template, s3_buckets)


def test_old_clients_session_against_twistd(tmp_path, hgweb, s3_buckets, daemon_config):
    """202 with an absolute Location and {"result": {}}, polls to SUCCESS with
    both regions' URLs whose bytes are upstream's, then a 302 to the
    preferred region; SIGTERM stops the daemon cleanly."""
    proc, base = serve(daemon_config, tmp_path)
    try:
        rev = hgweb.node("projects/ash", "tip")[:12]
        url = (
            f"{base}/archiver/hgmo/projects/ash/{rev}"
            "?subdir=testing/mozharness&preferred_region=us-west-2"
        )
        code, headers, body = open_url(url)
        assert code == 202
        assert json.loads(body) == {"result": {}}
        location = headers["Location"]
        assert location == (
            f"{base}/archiver/status/projects_ash-{rev}.tar.gz_testing_mozharness"
        )

        result = wait_for_task(location)
        assert result["state"] == "SUCCESS", result
        assert set(result["s3_urls"]) == {"us-east-1", "us-west-2"}

        expected = hgweb.archive("projects/ash", rev, subdir="testing/mozharness")
        for signed in result["s3_urls"].values():
            code, _, data = open_url(signed)
            assert code == 200
            assert data == expected
        files = archive_members(expected, f"ash-{rev}/testing/mozharness/")
        assert "scripts/run.py" in files

        code, headers, _ = open_url(url, follow=False)
        assert code == 302
        assert s3_buckets.buckets["us-west-2"] in headers["Location"]
        code, _, data = open_url(url)  # the old client follows the redirect
        assert code == 200 and data == expected
    finally:
        terminate(proc)
    # twistd re-raises the signal that stopped it once shutdown is complete.
    assert proc.returncode == -signal.SIGTERM
    log = output(proc, tmp_path)
    assert "Server Shut Down." in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[storage.s3]\nbucket = 'x'\n", "storage.s3.bucket: unknown key"),
        ("[storage]\nbackend = 's3'\n", "storage.s3.buckets: no regions configured"),
        ("listen = 'nonsense:1'\n", "listen: bad endpoint 'nonsense:1'"),
        ("[pipeline]\npart_size = 1024\n", "pipeline.part_size: must be between"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_config_stops_start_up_with_one_clear_line(tmp_path, config, message):
    path = tmp_path / "archiverd.toml"
    path.write_text(config)
    proc = twistd("--config", str(path), cwd=tmp_path)
    lines = output(proc, tmp_path).strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("archiverd: config error: ")
    assert message in lines[0]


def test_unreadable_config_names_the_file(tmp_path):
    proc = twistd("--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    out = output(proc, tmp_path)
    assert proc.returncode != 0
    assert out.strip() == (
        f"archiverd: config error: {tmp_path / 'missing.toml'}: cannot read: "
        "No such file or directory"
    )


def _start_stalled_transfer(
    tmp_path: Path, config: Path, buckets: Any
) -> tuple[subprocess.Popen[bytes], str]:
    """A daemon whose one transfer has parts up in every region, then stalls."""
    proc, base = serve(config, tmp_path)
    code, headers, _ = open_url(f"{base}/archiver/hgmo/r/0123456789ab")
    assert code == 202
    eventually_blocking(
        lambda: all(buckets.pending_uploads(r) for r in buckets.buckets),
        what="a multipart upload in every region",
    )
    return proc, headers["Location"]


def test_sigterm_mid_transfer_aborts_uploads_and_exits(tmp_path, s3_buckets):
    """SIGTERM during a transfer: its uploads are aborted in every region and
    the daemon exits cleanly, within the shutdown grace period (it never had
    to give up waiting)."""
    with FaultyUpstream([f"stall_body:{12 * MIB}"]) as upstream:
        config = write_config(
            tmp_path / "archiverd.toml", upstream.url_template, s3_buckets
        )
        proc, _ = _start_stalled_transfer(tmp_path, config, s3_buckets)
        terminate(proc, timeout=TIMEOUT)
    for region in s3_buckets.buckets:
        assert s3_buckets.pending_uploads(region) == []
        assert s3_buckets.keys(region) == []
    log = output(proc, tmp_path)
    assert "Server Shut Down." in log
    assert "shutdown_grace" not in log, log


def test_sigterm_exits_within_the_grace_period_when_storage_hangs(
    tmp_path, s3_buckets, moto_server
):
    """SIGTERM while every abort hangs: once shutdown_grace (1 s) has passed
    the daemon says so and exits, leaving the hung calls behind."""
    with (
        FaultyUpstream([f"stall_body:{12 * MIB}"]) as upstream,
        FaultyS3(moto_server.endpoint_url) as s3,
    ):
        for bucket in s3_buckets.buckets.values():
            s3.faults.append(S3Fault(bucket, "abort", hang=True))
        config = write_config(
            tmp_path / "archiverd.toml",
            upstream.url_template,
            s3_buckets,
            s3.endpoint_url,
            extra="shutdown_grace = 1",
        )
        proc, _ = _start_stalled_transfer(tmp_path, config, s3_buckets)
        started = time.monotonic()
        terminate(proc, timeout=TIMEOUT)
        waited = time.monotonic() - started
        # The aborts still hang (for 120 s): the daemon exited without them.
        for region in s3_buckets.buckets:
            assert s3_buckets.pending_uploads(region) != []
    assert waited >= 1, waited  # it gave the aborts the whole grace period
    assert "shutdown_grace of 1.0s passed" in output(proc, tmp_path)


def test_log_format_json_writes_only_mozlog_lines_with_one_per_request(tmp_path, hgweb):
    """`--log-format json`: every line twistd writes is one JSON object in
    mozlog's envelope (twistd's own lines too); each request is one
    request.summary line with its duration, and a signed URL's signature
    shows nowhere."""
    config = tmp_path / "archiverd.toml"
    config.write_text(
        f"""
[sources.hgmo]
url_template = "{hgweb.url_template}"

[storage]
backend = "file"

[storage.file]
root = "{tmp_path / "data"}"
regions = ["local"]

[tasks]
hold = 0
"""
    )
    proc, base = serve(config, tmp_path, "--log-format", "json")
    try:
        rev = hgweb.node("projects/ash", "tip")[:12]
        code, headers, _ = open_url(f"{base}/archiver/hgmo/projects/ash/{rev}")
        assert code == 202
        result = wait_for_task(headers["Location"])
        assert result["state"] == "SUCCESS", result
        signed = result["s3_urls"]["local"]
        signature = signed.split("signature=")[1].split("&")[0]
        assert len(signature) >= 16
        code, _, data = open_url(signed)
        assert code == 200 and data
    finally:
        terminate(proc)
    assert proc.returncode == -signal.SIGTERM
    out = output(proc, tmp_path)
    lines = [json.loads(line) for line in out.splitlines()]  # every one is JSON
    assert signature not in out
    for line in lines:
        assert line["Logger"] == "archiverd" and line["EnvVersion"] == "2.0"
        assert isinstance(line["Timestamp"], int) and line["Pid"] == proc.pid
        assert line["Severity"] in range(8) and isinstance(line["Fields"], dict)
    assert any(line["Fields"].get("msg") == "Server Shut Down." for line in lines)
    assert not any("error" in line["Fields"] for line in lines)
    requests = [line["Fields"] for line in lines if line["Type"] == "request.summary"]
    assert [r["route"] for r in requests][0] == "archive"
    assert requests[0]["code"] == 202
    [served] = [r for r in requests if r["route"] == "files"]
    assert served["code"] == 200 and served["bytes"] == len(data)
    assert "signature=REDACTED" in served["path"]
    assert served["method"] == "GET" and served["remote"] == "127.0.0.1"
    assert isinstance(served["duration_ms"], float) and served["duration_ms"] >= 0
    assert served["agent"].startswith("Python-urllib")


def test_a_restart_after_sigkill_aborts_the_uploads_left_pending(tmp_path, s3_buckets):
    """SIGKILL mid-transfer leaves a multipart upload pending in every bucket
    (nothing can run); with one daemon (no Redis), the next task for that
    archive aborts them before it uploads, so none is left once it succeeds."""
    with FaultyUpstream([f"stall_body:{12 * MIB}"]) as upstream:
        config = write_config(
            tmp_path / "archiverd.toml", upstream.url_template, s3_buckets
        )
        proc, _ = _start_stalled_transfer(tmp_path, config, s3_buckets)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        assert all(s3_buckets.pending_uploads(r) for r in s3_buckets.buckets)

        proc, base = serve(config, tmp_path)  # upstream now answers in full
        try:
            code, headers, _ = open_url(f"{base}/archiver/hgmo/r/0123456789ab")
            assert code == 202
            result = wait_for_task(headers["Location"])
            assert result["state"] == "SUCCESS", result
        finally:
            terminate(proc)
    for region in s3_buckets.buckets:
        assert s3_buckets.pending_uploads(region) == []
        assert s3_buckets.keys(region) == ["r-0123456789ab.tar.gz"]
    assert "aborted 1 abandoned upload(s)" in output(proc, tmp_path)
