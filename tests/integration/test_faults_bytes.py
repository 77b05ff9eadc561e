"""An archive is stored only when it is provably whole and exactly upstream's
bytes; every wait on upstream has a deadline.

Upstream is :class:`faults.FaultyUpstream` on a real loopback socket, serving
real archives made here; storage is moto (S3) or the file backend; the daemon
runs in-process.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import random
import tarfile
import zipfile
from typing import Any

import pytest
import pytest_twisted
import treq
from daemon import MIB, s3_config, tasks_config
from faults import FaultyS3, FaultyUpstream, S3Fault
from polling import eventually
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import Agent, HTTPConnectionPool

from archiverd.storage.files import FileStorage

pytestmark = pytest.mark.integration

KEY = "r-0123456789ab"


def _tar(nbytes: int) -> bytes:
    """A tar holding ``nbytes`` of incompressible bytes (so its compressed
    forms are about as long)."""
    data = random.Random(nbytes).randbytes(nbytes)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("r-0123456789ab/data.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def archive(suffix: str, nbytes: int) -> bytes:
    """A real archive of about ``nbytes`` bytes in the format ``suffix`` names."""
    if suffix == "tar.gz":
        return gzip.compress(_tar(nbytes), compresslevel=1, mtime=0)
    if suffix == "tar.bz2":
        return bz2.compress(_tar(nbytes), compresslevel=1)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("r-0123456789ab/data.bin", random.Random(1).randbytes(nbytes))
        zf.writestr("r-0123456789ab/README", b"small\n")
    return out.getvalue()


@pytest.fixture
def upstream():
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def faulty_s3(moto_server):
    with FaultyS3(moto_server.endpoint_url) as proxy:
        yield proxy


def _files(template: str, root: Any, **source: Any) -> dict:
    return {
        "sources": {
            "hgmo": {"url_template": template, "retry_backoff": 0.01, **source}
        },
        "storage": {"backend": "file", "file": {"root": str(root)}},
        "pipeline": {"part_size": 5 * MIB},
        "tasks": tasks_config(),
    }


def _s3(template: str, buckets: Any, endpoint: str = "", **source: Any) -> dict:
    config = s3_config(template, buckets, endpoint)
    config["sources"]["hgmo"].update({"retry_backoff": 0.01, **source})
    return config


async def _fetch(d: Any, suffix: str = "tar.gz") -> dict:
    response = await d.get(f"/archiver/hgmo/r/0123456789ab?suffix={suffix}")
    assert response.code == 202, response.code
    return await d.wait(response.headers.getRawHeaders("location")[0], timeout=30)


async def _nothing_left(buckets: Any) -> None:
    def check() -> None:
        for region in buckets.buckets:
            assert buckets.keys(region) == []
            assert buckets.pending_uploads(region) == []

    await threads.deferToThread(check)


def _stored(root: Any, suffix: str) -> bool:
    """Whether the file backend holds the archive."""
    return FileStorage(root, ("local",)).exists("local", f"{KEY}.{suffix}")


async def _download(d: Any, result: dict) -> bytes:
    """The stored archive, through the signed URL the status gave."""
    response = await d.get(result["s3_urls"]["local"])
    assert response.code == 200, response.code
    return await response.content()


# -- item 1: a close-delimited body must prove itself whole ------------------


@pytest_twisted.ensureDeferred
async def test_a_close_delimited_targz_cut_short_by_a_reset_is_a_failure(
    upstream, s3_buckets, start_archiverd
):
    """HTTP/1.0, no Content-Length, 7 MiB of 12, then a reset: not stored
    anywhere, no pending upload (it was SUCCESS with 7,340,032 bytes)."""
    upstream.archive = archive("tar.gz", 12 * MIB)
    upstream.script = [f"close:{7 * MIB}:reset"]
    d = await start_archiverd(_s3(upstream.url_template, s3_buckets))
    result = await _fetch(d)
    assert result["state"] == "FAILURE", result
    assert "not a whole tar.gz" in result["status"], result["status"]
    await _nothing_left(s3_buckets)


@pytest.mark.parametrize("suffix", ["tar.gz", "tar.bz2", "zip"])
@pytest_twisted.ensureDeferred
async def test_a_close_delimited_archive_cut_short_is_a_failure(
    suffix, upstream, tmp_path, start_archiverd
):
    """Every format, cut anywhere (here: 3,000 bytes of a small one)."""
    upstream.archive = archive(suffix, 64 * 1024)
    upstream.script = ["close:3000"]
    d = await start_archiverd(_files(upstream.url_template, tmp_path))
    result = await _fetch(d, suffix)
    assert result["state"] == "FAILURE", result
    assert f"not a whole {suffix}" in result["status"], result["status"]
    assert not _stored(tmp_path, suffix)


@pytest.mark.parametrize(
    ("suffix", "size"), [("tar.gz", 12), ("tar.bz2", 1), ("zip", 7)]
)
@pytest_twisted.ensureDeferred
async def test_a_whole_close_delimited_archive_is_stored_byte_for_byte(
    suffix, size, upstream, tmp_path, start_archiverd
):
    upstream.archive = archive(suffix, size * MIB)
    upstream.script = ["close"]
    d = await start_archiverd(_files(upstream.url_template, tmp_path))
    result = await _fetch(d, suffix)
    assert result["state"] == "SUCCESS", result
    assert result["sha256"] == hashlib.sha256(upstream.archive).hexdigest()
    assert await _download(d, result) == upstream.archive


# -- item 2: an empty 200 is no archive --------------------------------------


@pytest.mark.parametrize("behaviour", ["empty", "close:0"])
@pytest_twisted.ensureDeferred
async def test_an_empty_200_is_a_failure(
    behaviour, upstream, tmp_path, start_archiverd
):
    """``Content-Length: 0``, or HTTP/1.0 closing at once (was SUCCESS, size 0)."""
    upstream.script = [behaviour]
    d = await start_archiverd(_files(upstream.url_template, tmp_path))
    result = await _fetch(d)
    assert result["state"] == "FAILURE", result
    assert "empty body" in result["status"], result["status"]
    assert not _stored(tmp_path, "tar.gz")


# -- item 3: upstream's bytes, never a content coding ------------------------


@pytest_twisted.ensureDeferred
async def test_a_targz_labelled_content_encoding_gzip_is_stored_as_served(
    upstream, tmp_path, start_archiverd
):
    """A static host's ``.tar.gz`` with ``Content-Encoding: gzip`` is stored
    exactly as sent (it was stored decoded, as a plain tar with another
    sha256); and archiverd asked for no coding."""
    upstream.archive = archive("tar.gz", 2 * MIB)
    upstream.script = ["coded:gzip"]
    d = await start_archiverd(_files(upstream.url_template, tmp_path))
    result = await _fetch(d)
    assert result["state"] == "SUCCESS", result
    assert result["sha256"] == hashlib.sha256(upstream.archive).hexdigest()
    assert await _download(d, result) == upstream.archive
    assert upstream.request_headers[0].get("accept-encoding", "identity") == "identity"


@pytest_twisted.ensureDeferred
async def test_a_coding_that_is_not_the_archives_own_is_a_failure(
    upstream, tmp_path, start_archiverd
):
    """A zip sent gzip-coded, unasked: its bytes are not the zip, and
    archiverd undoes no coding, so nothing is stored."""
    upstream.archive = gzip.compress(archive("zip", 1024), mtime=0)
    upstream.script = ["coded:gzip"]
    d = await start_archiverd(_files(upstream.url_template, tmp_path))
    result = await _fetch(d, "zip")
    assert result["state"] == "FAILURE", result
    assert "Content-Encoding: gzip" in result["status"], result["status"]
    assert not _stored(tmp_path, "zip")


@pytest_twisted.ensureDeferred
async def test_http_framing_is_seen_so_only_close_delimited_bodies_are_inflated(
    upstream,
):
    """The proof of length is read from Twisted's parser: a Content-Length
    or chunked body is proven by HTTP (no format check, no inflating); a
    close-delimited one is not. Guards that probe against Twisted changes."""
    from archiverd.transfer.body import length_proven
    from archiverd.transfer.client import UpstreamClient

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = UpstreamClient(Agent(reactor, pool=pool))
    upstream.script = ["ok", "coded:identity", "close"]
    try:
        proven = []
        for _ in range(3):
            response = await client.get(upstream.base_url + "/r/archive/x.tar.gz")
            proven.append(length_proven(response))
            await treq.content(response)
    finally:
        await pool.closeCachedConnections()
    assert proven == [True, True, False]


# -- items 4 and 7: every wait on upstream has a deadline --------------------


@pytest_twisted.ensureDeferred
async def test_a_json_rev_that_stalls_after_its_headers_answers_502(
    upstream, tmp_path, start_archiverd
):
    """Concurrent requests for one name share one lookup, and it ends at
    idle_timeout with a 502 and a JSON error (it hung for ever)."""
    upstream.script = ["headers_stall"]
    d = await start_archiverd(
        _files(upstream.url_template, tmp_path, idle_timeout=0.5, total_timeout=60)
    )
    asked = [
        Deferred.fromCoroutine(d.get("/archiver/hgmo/r/default", timeout=20))
        for _ in range(2)
    ]
    for response in await gatherResults(asked):
        assert response.code == 502
        body = await response.json()
        assert "(idle_timeout)" in body["error"], body
    assert upstream.requests == 1


@pytest_twisted.ensureDeferred
async def test_a_json_rev_that_breaks_off_answers_502_not_500(
    upstream, tmp_path, start_archiverd
):
    """When upstream finally closes the stalled body, the answer is 502 with
    a JSON error (it was 500 "internal error" with a traceback)."""
    upstream.script = ["headers_stall"]
    d = await start_archiverd(
        _files(upstream.url_template, tmp_path, idle_timeout=30, total_timeout=60)
    )
    pending = Deferred.fromCoroutine(d.get("/archiver/hgmo/r/default", timeout=20))
    await eventually(lambda: upstream.requests == 1)
    upstream.release.set()
    response = await pending
    assert response.code == 502
    body = await response.json()
    assert "broke off" in body["error"], body


@pytest_twisted.ensureDeferred
async def test_a_404_whose_error_body_stalls_fails_at_idle_timeout(
    upstream, tmp_path, start_archiverd
):
    """Not at total_timeout (an hour here), quoting what upstream said."""
    upstream.script = ["error_stall:404"]
    d = await start_archiverd(
        _files(upstream.url_template, tmp_path, idle_timeout=0.5, total_timeout=3600)
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE", result
    assert "answered 404" in result["status"]
    assert "unknown revision" in result["status"]


# -- item 14: every storage call of a transfer is wrapped alike --------------


@pytest_twisted.ensureDeferred
async def test_storage_failing_to_start_a_multipart_upload_is_named_and_counted(
    upstream, s3_buckets, faulty_s3, start_archiverd
):
    """An archive larger than a part, storage answering 500 to the start of
    its upload in one region: FAILURE naming the region (it was "internal
    error"), counted in storage_errors_total, nothing left anywhere."""
    upstream.nbytes = 12 * MIB
    west = s3_buckets.buckets["us-west-2"]
    faulty_s3.faults.append(S3Fault(west, "create", 500, "InternalError"))
    config = _s3(upstream.url_template, s3_buckets, faulty_s3.endpoint_url)
    config["storage"]["s3"]["max_attempts"] = 1
    d = await start_archiverd(config)
    result = await _fetch(d)
    assert result["state"] == "FAILURE", result
    assert "storage in us-west-2 failed" in result["status"], result["status"]
    response = await d.get("/metrics")
    metrics = (await response.content()).decode()
    line = 'archiverd_storage_errors_total{region="us-west-2"}'
    assert any(
        m.startswith(line) and float(m.split()[-1]) >= 1 for m in metrics.splitlines()
    ), metrics
    await _nothing_left(s3_buckets)
