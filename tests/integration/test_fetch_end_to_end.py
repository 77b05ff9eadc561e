"""archiverd-fetch end to end: the CLI as a subprocess against archiverd
running on the test reactor, with hgweb upstream and file or moto S3 storage."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from daemon import file_config, s3_config
from fixtures import archive_members, free_port
from twisted.internet.utils import getProcessOutputAndValue

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBDIR = "testing/mozharness"


def _env() -> dict[str, str]:
    """The checkout's code, and no proxy between the CLI and loopback."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


async def fetch(*args: str) -> tuple[int, str]:
    """Run ``archiverd-fetch ARGS`` in a subprocess; (exit code, stderr)."""
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "archiverd.client.cli", *args],
        env=_env(),
        path=REPO_ROOT,
    )
    assert out == b""  # everything it says goes to stderr
    return code, err.decode()


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest_twisted.ensureDeferred
async def test_cold_archive_is_polled_for_and_saved_to_a_file(
    hgweb, tmp_path, start_archiverd
):
    """202, then polling until SUCCESS: -o FILE holds upstream's exact bytes,
    checked against the sha256 the status reports; no temporary file left."""
    d = await start_archiverd(file_config(hgweb.url_template, str(tmp_path / "s")))
    node = hgweb.node("projects/ash", "v1.0")[:12]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "ash.tar.gz"

    code, err = await fetch(
        "--server", d.base_url, "hgmo", "projects/ash", node, "-o", str(target)
    )

    assert code == 0, err
    expected = hgweb.archive("projects/ash", node)
    assert target.read_bytes() == expected
    assert os.listdir(out_dir) == ["ash.tar.gz"]
    task = d.daemon.tasks.get(f"projects_ash-{node}.tar.gz")
    assert task is not None  # it was a cold request: a task ran
    assert "no sha256" not in err
    assert f"saved {target}" in err


@pytest_twisted.ensureDeferred
async def test_warm_archive_follows_the_302_and_extracts_the_subdir(
    hgweb, tmp_path, start_archiverd
):
    """Stored already: 302 to the file backend, whose x-amz-meta-sha256 is
    checked; --dest gets the subdir with the top folder and subdir stripped,
    exactly the files the old client extracted."""
    d = await start_archiverd(file_config(hgweb.url_template, str(tmp_path / "s")))
    node = hgweb.node("projects/ash", "v1.0")[:12]
    path = f"/archiver/hgmo/projects/ash/{node}?subdir={SUBDIR}"
    first = await d.get(path)
    assert first.code == 202
    assert (await d.wait(first.headers.getRawHeaders("location")[0]))["state"] == (
        "SUCCESS"
    )
    assert (await d.get(path)).code == 302
    dest = tmp_path / "dest"

    code, err = await fetch(
        "--server", d.base_url, "hgmo", "projects/ash", node,
        "--subdir", SUBDIR, "--region", "b", "--dest", str(dest),
    )  # fmt: skip

    assert code == 0, err
    archive = hgweb.archive("projects/ash", node, subdir=SUBDIR)
    expected = archive_members(archive, f"ash-{node}/{SUBDIR}/")
    assert _files(dest) == expected
    assert expected["scripts/run.py"] == b"print('run v1')\n"
    assert len(expected["blob.bin"]) == 2 * 1024 * 1024
    assert "no sha256" not in err  # the file backend sent it
    assert "extracted" in err


@pytest_twisted.ensureDeferred
async def test_zip_through_s3_extracts_the_whole_tree(
    hgweb, s3_buckets, tmp_path, start_archiverd
):
    """Cold then warm against moto S3: the 302 path checks S3's own
    x-amz-meta-sha256; a zip extracts with its top folder stripped."""
    d = await start_archiverd(s3_config(hgweb.url_template, s3_buckets))
    node = hgweb.node("mozilla-central", "tip")[:12]
    args = ["--server", d.base_url, "hgmo", "mozilla-central", node, "--suffix", "zip"]

    code, err = await fetch(*args, "--dest", str(tmp_path / "cold"))
    assert code == 0, err
    code, err = await fetch(*args, "--region", "us-west-2", "--dest", str(tmp_path))
    assert code == 0, err
    assert "no sha256" not in err
    for root in (tmp_path / "cold", tmp_path):
        assert (root / "README.txt").read_bytes() == b"mozilla-central\n"
        assert (root / "mach").read_bytes() == b"#!/usr/bin/env python3\n"
        assert os.access(root / "mach", os.F_OK)
    head = s3_buckets.head("us-west-2", f"mozilla-central-{node}.zip")
    stored = s3_buckets.get("us-west-2", f"mozilla-central-{node}.zip")
    assert head["Metadata"]["sha256"] == hashlib.sha256(stored).hexdigest()


@pytest_twisted.ensureDeferred
async def test_an_unknown_repo_exits_3_with_upstreams_answer(
    hgweb, tmp_path, start_archiverd
):
    d = await start_archiverd(file_config(hgweb.url_template, str(tmp_path / "s")))
    code, err = await fetch(
        "--server", d.base_url, "hgmo", "no/such-repo", "0123456789ab",
        "-o", str(tmp_path / "x.tar.gz"),
    )  # fmt: skip
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("archiverd-fetch: archiverd could not fetch the archive:")
    assert "404" in last
    assert not (tmp_path / "x.tar.gz").exists()


@pytest_twisted.ensureDeferred
async def test_a_request_the_server_refuses_exits_1_with_its_error(
    hgweb, tmp_path, start_archiverd
):
    d = await start_archiverd(file_config(hgweb.url_template, str(tmp_path / "s")))
    code, err = await fetch(
        "--server", d.base_url, "hgmo", "projects/ash", "0123456789ab",
        "--subdir", "../etc", "--dest", str(tmp_path / "d"),
    )  # fmt: skip
    assert code == 1, err
    assert "server refused the request (400): subdir contains a '..' segment" in err


@pytest_twisted.ensureDeferred
async def test_bad_usage_exits_1():
    code, err = await fetch("--server", "http://127.0.0.1:1", "hgmo", "repo", "rev")
    assert code == 1
    assert "one of the arguments --dest -o/--output is required" in err


@pytest_twisted.ensureDeferred
async def test_a_server_that_is_down_exits_3(tmp_path):
    port = free_port()  # nothing listens there
    code, err = await fetch(
        "--server", f"http://127.0.0.1:{port}", "hgmo", "projects/ash",
        "0123456789ab", "--retries", "1", "-o", str(tmp_path / "x.tar.gz"),
    )  # fmt: skip
    assert code == 3
    assert err.strip().splitlines() == [
        f"archiverd-fetch: cannot reach http://127.0.0.1:{port}: "
        "[Errno 111] Connection refused"
    ]
    assert list(tmp_path.iterdir()) == []
