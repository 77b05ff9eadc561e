"""archiverd end to end in-process: real hgweb upstream, moto S3, local files;
the tests taking ``any_s3_buckets`` run against moto and against a real S3
(Ceph radosgw)."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from urllib.parse import unquote, urlsplit

import pytest
import pytest_twisted
import treq
from daemon import MIB, file_config, s3_config
from polling import eventually
from twisted.internet import defer, threads

pytestmark = pytest.mark.integration


async def _bytes(url: str) -> bytes:
    response = await treq.get(url)
    assert response.code == 200, url
    return await response.content()


@pytest_twisted.ensureDeferred
async def test_cold_request_streams_into_both_regions_then_redirects(
    hgweb, any_s3_buckets, start_archiverd
):
    """202 + absolute Location, SUCCESS with a URL per region, bytes equal
    upstream's, then 302 to the preferred region."""
    d = await start_archiverd(s3_config(hgweb.url_template, any_s3_buckets))
    node = hgweb.node("projects/ash", "tip")[:12]
    path = f"/archiver/hgmo/projects/ash/{node}?subdir=testing/mozharness"

    response = await d.get(path)
    assert response.code == 202
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert await response.json() == {"result": {}}
    location = response.headers.getRawHeaders("location")[0]
    task_id = f"projects_ash-{node}.tar.gz_testing_mozharness"
    assert location == f"{d.base_url}/archiver/status/{task_id}"

    result = await d.wait(location)
    assert result["state"] == "SUCCESS", result
    assert result["status"] == "Task completed! Check 's3_urls' for upload locations."
    assert result["src_url"] == (
        f"{hgweb.base_url}/projects/ash/archive/{node}.tar.gz/testing/mozharness"
    )
    assert set(result["s3_urls"]) == {"us-east-1", "us-west-2"}

    expected = hgweb.archive("projects/ash", node, subdir="testing/mozharness")
    key = f"projects/ash-{node}.tar.gz/testing/mozharness"
    for region, url in result["s3_urls"].items():
        assert await _bytes(url) == expected
        head = any_s3_buckets.head(region, key)
        assert head["ContentType"] == "application/gzip"
        assert head["Metadata"]["sha256"] == hashlib.sha256(expected).hexdigest()
        assert "filename=" in head["ContentDisposition"]
    assert result["sha256"] == hashlib.sha256(expected).hexdigest()
    assert result["size"] == len(expected)
    with tarfile.open(fileobj=io.BytesIO(expected), mode="r:gz") as tar:
        assert all("testing/mozharness" in n for n in tar.getnames())

    response = await d.get(path + "&preferred_region=us-west-2")
    assert response.code == 302
    redirect = response.headers.getRawHeaders("location")[0]
    assert any_s3_buckets.buckets["us-west-2"] in redirect
    assert await _bytes(redirect) == expected


@pytest_twisted.ensureDeferred
async def test_multipart_archive_is_whole_with_sha256(
    hgweb, any_s3_buckets, start_archiverd
):
    """A 12 MiB archive goes up in 5 MiB parts and comes back byte for byte."""
    d = await start_archiverd(
        s3_config(hgweb.url_template, any_s3_buckets, parts_in_flight=2)
    )
    response = await d.get("/archiver/hgmo/big/repo/tip?suffix=zip")
    assert response.code == 202
    result = await d.wait(response.headers.getRawHeaders("location")[0])
    assert result["state"] == "SUCCESS", result
    node = hgweb.node("big/repo", "tip")[:12]
    expected = hgweb.archive("big/repo", node, suffix="zip")
    assert len(expected) > 2 * 5 * MIB
    for region in any_s3_buckets.buckets:
        key = f"big/repo-{node}.zip"
        assert any_s3_buckets.get(region, key) == expected
        head = any_s3_buckets.head(region, key)
        tags = any_s3_buckets.client(region).get_object_tagging(
            Bucket=any_s3_buckets.buckets[region], Key=key
        )["TagSet"]
        sha256 = hashlib.sha256(expected).hexdigest()
        assert tags == [{"Key": "sha256", "Value": sha256}]  # written once
        assert head["ContentType"] == "application/zip"
        assert any_s3_buckets.pending_uploads(region) == []


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_make_one_upstream_get(
    hgweb, s3_buckets, start_archiverd
):
    """50 simultaneous requests for one archive: one GET, one object per region."""
    d = await start_archiverd(s3_config(hgweb.url_template, s3_buckets))
    node = hgweb.node("big/repo", "tip")[:12]
    before = hgweb.count(f"/big/repo/archive/{node}.tar.bz2")
    responses = await defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(
                d.get(f"/archiver/hgmo/big/repo/{node}?suffix=tar.bz2")
            )
            for _ in range(50)
        ]
    )
    assert {r.code for r in responses} == {202}
    locations = {r.headers.getRawHeaders("location")[0] for r in responses}
    assert len(locations) == 1
    result = await d.wait(locations.pop())
    assert result["state"] == "SUCCESS", result
    assert hgweb.count(f"/big/repo/archive/{node}.tar.bz2") - before == 1
    for region in s3_buckets.buckets:
        assert s3_buckets.keys(region) == [f"big/repo-{node}.tar.bz2"]


@pytest_twisted.ensureDeferred
async def test_upstream_404_is_a_failure_quoting_upstream(
    hgweb, s3_buckets, start_archiverd
):
    d = await start_archiverd(s3_config(hgweb.url_template, s3_buckets))
    response = await d.get("/archiver/hgmo/projects/ash/abcdef123456")
    assert response.code == 202
    location = response.headers.getRawHeaders("location")[0]
    result = await d.wait(location)
    assert result["state"] == "FAILURE"
    assert "answered 404" in result["status"]
    assert "unknown revision 'abcdef123456'" in result["status"]
    assert "/projects/ash/archive/abcdef123456.tar.gz/" in result["status"]
    assert result["s3_urls"] == {}

    # A later request starts a new task (it fails again, but it does run).
    before = hgweb.count("/projects/ash/archive/abcdef123456.tar.gz")
    response = await d.get("/archiver/hgmo/projects/ash/abcdef123456")
    assert response.code == 202
    await d.wait(location)
    assert hgweb.count("/projects/ash/archive/abcdef123456.tar.gz") == before + 1


@pytest_twisted.ensureDeferred
async def test_upstream_breaking_off_leaves_no_object_and_no_pending_upload(
    breaking_upstream, any_s3_buckets, start_archiverd
):
    breaking_upstream.nbytes = 13 * MIB  # two whole parts, then the break
    d = await start_archiverd(s3_config(breaking_upstream.url_template, any_s3_buckets))
    response = await d.get("/archiver/hgmo/some/repo/0123456789ab")
    assert response.code == 202
    result = await d.wait(response.headers.getRawHeaders("location")[0])
    assert result["state"] == "FAILURE"
    assert "broke off" in result["status"]
    for region in any_s3_buckets.buckets:
        assert any_s3_buckets.keys(region) == []
        assert any_s3_buckets.pending_uploads(region) == []


@pytest_twisted.ensureDeferred
async def test_symbolic_revs_resolve_to_the_current_changeset(
    hgweb, s3_buckets, start_archiverd
):
    """'default' follows new commits: never served stale. A name is keyed
    with the changeset it names when asked, and fetched from hgweb by name
    (so the archive's top folder is hgweb's ``moving-default/``)."""
    d = await start_archiverd(s3_config(hgweb.url_template, s3_buckets))
    repo = "scratch/moving"
    first = hgweb.commit(repo, {"a.txt": b"one"}, "first")
    response = await d.get(f"/archiver/hgmo/{repo}/default")
    assert response.code == 202
    location = response.headers.getRawHeaders("location")[0]
    assert unquote(location).endswith(f"scratch_moving-default@{first[:12]}.tar.gz")
    result = await d.wait(location)
    assert result["state"] == "SUCCESS", result
    assert result["src_url"] == f"{hgweb.base_url}/{repo}/archive/default.tar.gz/"
    key = f"{repo}-default@{first[:12]}.tar.gz"
    for region in s3_buckets.buckets:
        assert s3_buckets.keys(region) == [key]
        stored = s3_buckets.get(region, key)
        with tarfile.open(fileobj=io.BytesIO(stored), mode="r:gz") as tar:
            assert tar.getnames() and all(
                n.startswith("moving-default/") for n in tar.getnames()
            )
            member = tar.extractfile("moving-default/a.txt")
            assert member is not None and member.read() == b"one"
    response = await d.get(f"/archiver/hgmo/{repo}/default")
    assert response.code == 302

    second = hgweb.commit(repo, {"a.txt": b"two"}, "second")
    response = await d.get(f"/archiver/hgmo/{repo}/default")
    assert response.code == 202
    location = response.headers.getRawHeaders("location")[0]
    assert unquote(location).endswith(f"scratch_moving-default@{second[:12]}.tar.gz")

    response = await d.get(f"/archiver/hgmo/{repo}/no-such-tag")
    assert response.code == 404
    assert "unknown revision" in (await response.json())["error"]


@pytest_twisted.ensureDeferred
async def test_only_missing_regions_are_uploaded(
    hgweb, any_s3_buckets, start_archiverd
):
    """Stored in us-east-1 only: a request preferring us-west-2 fills just it."""
    d = await start_archiverd(s3_config(hgweb.url_template, any_s3_buckets))
    node = hgweb.node("mozilla-central", "tip")[:12]
    key = f"mozilla-central-{node}.tar.gz"
    any_s3_buckets.client("us-east-1").put_object(
        Bucket=any_s3_buckets.buckets["us-east-1"], Key=key, Body=b"sentinel"
    )
    path = f"/archiver/hgmo/mozilla-central/{node}"
    assert (await d.get(path)).code == 302  # default region has it
    response = await d.get(path + "?preferred_region=us-west-2")
    assert response.code == 202
    result = await d.wait(response.headers.getRawHeaders("location")[0])
    assert result["state"] == "SUCCESS"
    assert result["regions"] == ["us-west-2"]
    assert any_s3_buckets.get("us-east-1", key) == b"sentinel"
    assert any_s3_buckets.get("us-west-2", key) == hgweb.archive(
        "mozilla-central", node
    )


@pytest_twisted.ensureDeferred
async def test_file_backend_serves_signed_urls_with_ranges(
    hgweb, tmp_path, start_archiverd
):
    d = await start_archiverd(file_config(hgweb.url_template, str(tmp_path)))
    node = hgweb.node("projects/ash", "v1.0")[:12]
    response = await d.get("/archiver/hgmo/projects/ash/v1.0?suffix=zip")
    assert response.code == 202
    location = response.headers.getRawHeaders("location")[0]
    assert unquote(location).endswith(f"projects_ash-v1.0@{node}.zip")
    result = await d.wait(location)
    assert result["state"] == "SUCCESS", result
    # A tag is fetched by name: the archive is hgweb's for "v1.0".
    expected = hgweb.archive("projects/ash", "v1.0", suffix="zip")
    assert set(result["s3_urls"]) == {"a", "b"}
    for url in result["s3_urls"].values():
        assert url.startswith(f"{d.base_url}/archiver/files/")
        response = await treq.get(url)
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type") == ["application/zip"]
        assert await response.content() == expected

    url = result["s3_urls"]["a"]
    response = await treq.get(url, headers={"Range": "bytes=10-19"})
    assert response.code == 206
    assert await response.content() == expected[10:20]

    tampered = url.replace("signature=", "signature=0")
    assert (await treq.get(tampered)).code == 403
    other_key = url.replace(f"{node}.zip", f"{node}.tar.gz")
    assert other_key != url
    assert (await treq.get(other_key)).code == 403
    expired = url.split("?")[0] + "?expires=1&signature=" + url.split("signature=")[1]
    assert (await treq.get(expired)).code == 403

    # No temporary file is left beside the objects.
    assert [p for r in "ab" for p in (tmp_path / r / ".partial").iterdir()] == []

    response = await d.get("/archiver/hgmo/projects/ash/v1.0?suffix=zip")
    assert response.code == 302
    assert urlsplit(response.headers.getRawHeaders("location")[0]).path.startswith(
        "/archiver/files/a/"
    )


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Sends `nbytes` of a chunked body, then stalls until released."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"x" * (256 * 1024)
        for _ in range(self.server.nbytes // len(chunk)):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.flush()
        self.server.release.wait(30)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling_upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    server.daemon_threads = True
    server.nbytes = 12 * MIB
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{{repo}}/archive/{{rev}}.{{suffix}}"
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest_twisted.ensureDeferred
async def test_stopping_mid_transfer_aborts_every_multipart_upload(
    stalling_upstream, any_s3_buckets, start_archiverd
):
    """Stopping the daemon (as SIGTERM does) while parts are up leaves no
    object and no pending multipart upload in any region."""
    d = await start_archiverd(s3_config(stalling_upstream, any_s3_buckets))
    response = await d.get("/archiver/hgmo/some/repo/0123456789ab")
    location = response.headers.getRawHeaders("location")[0]

    async def uploads_pending() -> bool:
        pending = await threads.deferToThread(
            lambda: [any_s3_buckets.pending_uploads(r) for r in any_s3_buckets.buckets]
        )
        return all(pending)

    await eventually(uploads_pending, what="a multipart upload in every region")
    code, body = await d.get_json(location)
    assert body["result"]["state"] == "PROGRESS"

    await d.stop()
    for region in any_s3_buckets.buckets:
        assert any_s3_buckets.pending_uploads(region) == []
        assert any_s3_buckets.keys(region) == []


@pytest_twisted.ensureDeferred
async def test_metrics_count_the_bytes_of_a_real_transfer(
    hgweb, s3_buckets, start_archiverd
):
    d = await start_archiverd(s3_config(hgweb.url_template, s3_buckets))
    response = await d.get("/archiver/hgmo/big/repo/tip?suffix=tar.bz2&subdir=data")
    result = await d.wait(response.headers.getRawHeaders("location")[0])
    assert result["state"] == "SUCCESS", result
    response = await d.get("/metrics")
    assert response.code == 200
    samples = {}
    for line in (await response.text()).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    size = result["size"]
    assert samples["archiverd_upstream_bytes_total"] == size
    for region in s3_buckets.buckets:
        assert samples[f'archiverd_uploaded_bytes_total{{region="{region}"}}'] == size
    assert samples["archiverd_upstream_ttfb_seconds_count"] == 1
    assert samples['archiverd_task_duration_seconds_count{state="SUCCESS"}'] == 1
    assert samples['archiverd_tasks{state="SUCCESS"}'] == 1
    requests = 'archiverd_http_requests_total{code="%s",route="%s"}'
    assert samples[requests % (202, "archive")] == 1
    assert samples[requests % (200, "status")] >= 1
