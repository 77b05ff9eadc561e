"""Every upstream, storage and load fault: the truth for clients, nothing partial.

Upstream faults come from :class:`faults.FaultyUpstream`, storage faults from
:class:`faults.FaultyS3` in front of moto; the daemon runs in-process.
"""

from __future__ import annotations

import errno
import re
from typing import Any

import pytest
import pytest_twisted
from daemon import MIB, s3_config, tasks_config
from faults import FaultyS3, FaultyUpstream, S3Fault, body_bytes
from fixtures import free_port
from polling import eventually
from twisted.internet import reactor, task, threads

from archiverd.storage.files import FileStorage

pytestmark = pytest.mark.integration


@pytest.fixture
def upstream():
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def faulty_s3(moto_server):
    with FaultyS3(moto_server.endpoint_url) as proxy:
        yield proxy


def _config(template: str, buckets: Any, endpoint: str = "", **source: Any) -> dict:
    config = s3_config(template, buckets, endpoint)
    config["sources"]["hgmo"].update({"retry_backoff": 0.01, **source})
    return config


def _files(template: str, root: Any, **source: Any) -> dict:
    return {
        "sources": {
            "hgmo": {"url_template": template, "retry_backoff": 0.01, **source}
        },
        "storage": {"backend": "file", "file": {"root": str(root)}},
        "pipeline": {"part_size": 5 * MIB},
        "tasks": tasks_config(),
    }


async def _fetch(d: Any, path: str = "/archiver/hgmo/r/0123456789ab") -> dict:
    response = await d.get(path)
    assert response.code == 202, response.code
    return await d.wait(response.headers.getRawHeaders("location")[0])


async def _nothing_left(buckets: Any) -> None:
    """No object and no pending multipart upload in any region."""

    def check() -> None:
        for region in buckets.buckets:
            assert buckets.keys(region) == []
            assert buckets.pending_uploads(region) == []

    await threads.deferToThread(check)


# -- upstream ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_5xx_and_resets_are_retried_then_succeed(
    upstream, tmp_path, start_archiverd
):
    upstream.script = ["status:503", "reset", "status:502"]
    d = await start_archiverd(_files(upstream.url_template, tmp_path, retries=3))
    result = await _fetch(d)
    assert result["state"] == "SUCCESS", result
    assert upstream.requests == 4
    assert result["size"] == upstream.nbytes


@pytest_twisted.ensureDeferred
async def test_retries_are_bounded_and_back_off(upstream, tmp_path, start_archiverd):
    upstream.script = ["status:503"] * 10
    d = await start_archiverd(
        _files(upstream.url_template, tmp_path, retries=2, retry_backoff=0.2)
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "answered 503" in result["status"]
    assert "(after 3 attempts)" in result["status"]
    assert upstream.requests == 3
    gaps = [b - a for a, b in zip(upstream.times, upstream.times[1:])]
    # Backoff 0.2 s then 0.4 s, each with jitter in [0.5, 1.5).
    assert 0.1 <= gaps[0] < 0.35 and 0.2 <= gaps[1] < 0.65, gaps


@pytest_twisted.ensureDeferred
async def test_connection_refused_fails_with_the_cause(tmp_path, start_archiverd):
    template = f"http://127.0.0.1:{free_port()}/{{repo}}/archive/{{rev}}.{{suffix}}"
    d = await start_archiverd(_files(template, tmp_path, retries=1))
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "cannot reach 127.0.0.1" in result["status"]
    assert "refused" in result["status"].lower()
    assert "(after 2 attempts)" in result["status"]


@pytest_twisted.ensureDeferred
async def test_while_upstream_cannot_be_reached_the_status_says_so(
    tmp_path, start_archiverd
):
    """A person polling tells a dead upstream from a slow download: the
    status names the cause and the next attempt, and /metrics counts it."""
    template = f"http://127.0.0.1:{free_port()}/{{repo}}/archive/{{rev}}.{{suffix}}"
    d = await start_archiverd(_files(template, tmp_path, retries=3, retry_backoff=0.6))
    response = await d.get("/archiver/hgmo/r/0123456789ab")
    location = response.headers.getRawHeaders("location")[0]

    async def status() -> dict:
        return dict((await d.get_json(location))[1]["result"])

    seen = await eventually(
        status, until=lambda r: r["status"].startswith("Retrying"), timeout=10
    )
    assert seen["state"] == "STARTED"
    assert re.fullmatch(
        r"Retrying: cannot reach 127\.0\.0\.1 \(connection refused\); "
        r"attempt [234] of 4, next in [0-9.]+ s",
        seen["status"],
    ), seen["status"]
    result = await d.wait(location)
    assert result["state"] == "FAILURE" and "(after 4 attempts)" in result["status"]
    metrics = await (await d.get("/metrics")).text()
    assert (
        'archiverd_upstream_retries_total{cause="refused",source="hgmo"} 3.0' in metrics
    ), metrics


@pytest_twisted.ensureDeferred
async def test_refusals_are_not_retried(upstream, tmp_path, start_archiverd):
    upstream.script = ["status:410"]
    d = await start_archiverd(_files(upstream.url_template, tmp_path, retries=3))
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "answered 410" in result["status"] and "scripted 410" in result["status"]
    assert upstream.requests == 1


@pytest_twisted.ensureDeferred
async def test_headers_timeout(upstream, tmp_path, start_archiverd):
    upstream.script = ["stall_headers"]
    d = await start_archiverd(
        _files(upstream.url_template, tmp_path, headers_timeout=0.3)
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "(headers_timeout)" in result["status"]
    assert upstream.requests == 1


@pytest_twisted.ensureDeferred
async def test_idle_timeout_mid_body_leaves_nothing(
    upstream, s3_buckets, start_archiverd
):
    upstream.script = [f"stall_body:{6 * MIB}"]
    d = await start_archiverd(
        _config(upstream.url_template, s3_buckets, idle_timeout=0.5)
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "(idle_timeout)" in result["status"]
    assert f"after {6 * MIB} bytes" in result["status"]
    await _nothing_left(s3_buckets)


@pytest_twisted.ensureDeferred
async def test_total_timeout(upstream, tmp_path, start_archiverd):
    upstream.script = ["trickle:0.05"]
    d = await start_archiverd(
        _files(upstream.url_template, tmp_path, total_timeout=1, idle_timeout=5)
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "(total_timeout)" in result["status"]
    assert result["bytes_received"] > 0


@pytest_twisted.ensureDeferred
async def test_content_length_not_honoured_leaves_nothing(
    upstream, s3_buckets, start_archiverd
):
    upstream.script = ["short"]
    upstream.nbytes = 12 * MIB
    d = await start_archiverd(_config(upstream.url_template, s3_buckets))
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "broke off" in result["status"]
    await _nothing_left(s3_buckets)


@pytest_twisted.ensureDeferred
async def test_archive_over_max_archive_bytes(upstream, s3_buckets, start_archiverd):
    upstream.nbytes = 12 * MIB
    d = await start_archiverd(
        _config(upstream.url_template, s3_buckets, max_archive_bytes=7 * MIB)
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert f"archive exceeds {7 * MIB} bytes" in result["status"]
    assert result["bytes_received"] <= 7 * MIB
    await _nothing_left(s3_buckets)


@pytest_twisted.ensureDeferred
async def test_redirects_are_followed_within_the_same_host_only(
    upstream, tmp_path, start_archiverd
):
    with FaultyUpstream() as elsewhere:
        other = elsewhere.base_url.replace("127.0.0.1", "localhost") + "/x"
        upstream.script = [f"redirect:{upstream.base_url}/moved", f"redirect:{other}"]
        d = await start_archiverd(_files(upstream.url_template, tmp_path))
        result = await _fetch(d)
        assert result["state"] == "FAILURE"
        assert "to another host: not followed" in result["status"]
        assert upstream.paths[1] == "/moved"
        assert elsewhere.requests == 0

        upstream.script = [f"redirect:{upstream.base_url}/moved"]
        result = await _fetch(d, "/archiver/hgmo/r/0123456789ab?suffix=zip")
        assert result["state"] == "SUCCESS"
        assert upstream.paths[-1] == "/moved"


# -- storage -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slowdown_on_parts_is_retried(
    upstream, s3_buckets, faulty_s3, start_archiverd
):
    upstream.nbytes = 11 * MIB
    west = s3_buckets.buckets["us-west-2"]
    faulty_s3.faults.append(S3Fault(west, "part", 503, "SlowDown", times=2))
    d = await start_archiverd(
        _config(upstream.url_template, s3_buckets, faulty_s3.endpoint_url)
    )
    result = await _fetch(d)
    assert result["state"] == "SUCCESS", result
    assert faulty_s3.faults[0].seen == 2
    key = "r-0123456789ab.tar.gz"
    data = await threads.deferToThread(s3_buckets.get, "us-west-2", key)
    assert data == body_bytes(11 * MIB)


@pytest_twisted.ensureDeferred
async def test_persistent_part_failure_in_one_region_leaves_nothing_anywhere(
    upstream, s3_buckets, faulty_s3, start_archiverd
):
    upstream.nbytes = 16 * MIB
    west = s3_buckets.buckets["us-west-2"]
    faulty_s3.faults.append(S3Fault(west, "part", 500, "InternalError"))
    d = await start_archiverd(
        _config(upstream.url_template, s3_buckets, faulty_s3.endpoint_url)
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "us-west-2" in result["status"]
    await _nothing_left(s3_buckets)


@pytest_twisted.ensureDeferred
async def test_storage_down_still_answers_202_and_recovers(
    upstream, s3_buckets, faulty_s3, start_archiverd
):
    config = _config(upstream.url_template, s3_buckets, faulty_s3.endpoint_url)
    config["storage"]["s3"]["max_attempts"] = 2
    faulty_s3.down = True
    d = await start_archiverd(config)
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert re.search(r"storage in us-(east-1|west-2) failed", result["status"])

    faulty_s3.down = False
    result = await _fetch(d)
    assert result["state"] == "SUCCESS", result


@pytest_twisted.ensureDeferred
async def test_completion_failing_in_one_region_is_named_and_repaired_later(
    upstream, s3_buckets, faulty_s3, start_archiverd
):
    upstream.nbytes = 11 * MIB
    west = s3_buckets.buckets["us-west-2"]
    fault = S3Fault(west, "complete", 500, "InternalError")
    faulty_s3.faults.append(fault)
    config = _config(upstream.url_template, s3_buckets, faulty_s3.endpoint_url)
    config["storage"]["s3"]["max_attempts"] = 1
    d = await start_archiverd(config)
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "us-west-2" in result["status"]
    key = "r-0123456789ab.tar.gz"

    def stored() -> tuple[list[str], list[str], list[Any]]:
        return (
            s3_buckets.keys("us-east-1"),
            s3_buckets.keys("us-west-2"),
            s3_buckets.pending_uploads("us-west-2"),
        )

    assert await threads.deferToThread(stored) == ([key], [], [])

    fault.times = 0
    result = await _fetch(d, "/archiver/hgmo/r/0123456789ab?preferred_region=us-west-2")
    assert result["state"] == "SUCCESS", result
    assert result["regions"] == ["us-west-2"]
    assert upstream.requests == 2


@pytest_twisted.ensureDeferred
async def test_file_backend_disk_full_removes_the_temporary_file(
    upstream, tmp_path, start_archiverd
):
    class DiskFull(FileStorage):
        def upload_part(self, *args: Any) -> str:
            raise OSError(errno.ENOSPC, "No space left on device")

        def put(self, *args: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    upstream.nbytes = 12 * MIB
    backend = DiskFull(tmp_path, ("local",))
    d = await start_archiverd(_files(upstream.url_template, tmp_path), backend)
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "No space left on device" in result["status"]
    assert list((tmp_path / "local" / ".partial").iterdir()) == []
    assert not backend.exists("local", "r-0123456789ab.tar.gz")


@pytest_twisted.ensureDeferred
async def test_file_backend_permission_denied(upstream, tmp_path, start_archiverd):
    class ReadOnly(FileStorage):
        def start_upload(self, *args: Any) -> str:
            raise PermissionError(errno.EACCES, "Permission denied")

        def put(self, *args: Any) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

    d = await start_archiverd(
        _files(upstream.url_template, tmp_path), ReadOnly(tmp_path, ("local",))
    )
    result = await _fetch(d)
    assert result["state"] == "FAILURE"
    assert "Permission denied" in result["status"]
    assert list((tmp_path / "local" / ".partial").iterdir()) == []


# -- process and load ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_new_process_answers_status_from_storage(
    upstream, s3_buckets, start_archiverd
):
    config = _config(upstream.url_template, s3_buckets)
    first = await start_archiverd(config)
    response = await first.get("/archiver/hgmo/r/0123456789ab")
    location = response.headers.getRawHeaders("location")[0]
    assert (await first.wait(location))["state"] == "SUCCESS"
    await first.stop()

    second = await start_archiverd(config)
    task_id = location.rsplit("/", 1)[1]
    code, body = await second.get_json(f"/archiver/status/{task_id}")
    assert code == 200
    assert body["result"]["state"] == "SUCCESS"
    assert set(body["result"]["s3_urls"]) == {"us-east-1", "us-west-2"}

    code, body = await second.get_json("/archiver/status/r-fedcba987654.tar.gz")
    assert body["result"] == {
        "state": "PENDING",
        "status": "no status available at this point.",
        "src_url": "",
        "s3_urls": {},
    }


@pytest_twisted.ensureDeferred
async def test_tasks_over_max_concurrent_wait_their_turn(
    upstream, tmp_path, start_archiverd
):
    upstream.script = ["stall_body:1024"]
    config = _files(upstream.url_template, tmp_path, idle_timeout=30)
    config["tasks"].update(max_concurrent_tasks=1)
    d = await start_archiverd(config)
    locations = []
    for rev in ("000000000001", "000000000002", "000000000003"):
        response = await d.get(f"/archiver/hgmo/r/{rev}")
        locations.append(response.headers.getRawHeaders("location")[0])
    states = [(await d.get_json(loc))[1]["result"] for loc in locations]
    assert states[0]["state"] in ("STARTED", "PROGRESS")
    assert (states[1]["state"], states[1]["status"]) == ("PENDING", "queued (0 ahead)")
    assert (states[2]["state"], states[2]["status"]) == ("PENDING", "queued (1 ahead)")
    # The running task's GET reaches the upstream's thread when it does; the
    # queued ones must not have made one.
    await eventually(lambda: upstream.requests >= 1)
    assert upstream.requests == 1

    upstream.release.set()  # the stalled body ends (broken): the queue moves
    results = [await d.wait(loc) for loc in locations]
    assert [r["state"] for r in results] == ["FAILURE", "SUCCESS", "SUCCESS"]


@pytest_twisted.ensureDeferred
async def test_a_full_table_of_unfinished_work_answers_503(
    upstream, tmp_path, start_archiverd
):
    upstream.script = ["stall_body:1024", "stall_body:1024"]
    config = _files(upstream.url_template, tmp_path, idle_timeout=30)
    config["tasks"].update(max_tasks=2)
    d = await start_archiverd(config)
    for rev in ("000000000001", "000000000002"):
        assert (await d.get(f"/archiver/hgmo/r/{rev}")).code == 202
    response = await d.get("/archiver/hgmo/r/000000000003")
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["5"]
    assert "error" in await response.json()
    # Asking again for work that is already queued is still fine.
    assert (await d.get("/archiver/hgmo/r/000000000001")).code == 202
    upstream.release.set()
    await task.deferLater(reactor, 0, lambda: None)


# -- health --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_heartbeat_reports_storage_and_upstream_for_real(
    hgweb, s3_buckets, faulty_s3, start_archiverd
):
    """Real hgweb and moto: ok; a region's storage down: 500 naming it."""
    d = await start_archiverd(
        _config(hgweb.url_template, s3_buckets, faulty_s3.endpoint_url)
    )
    code, body = await d.get_json("/__heartbeat__")
    assert (code, body["status"]) == (200, "ok"), body
    assert set(body["checks"]) == {
        "storage:us-east-1",
        "storage:us-west-2",
        "upstream:hgmo",
    }

    faulty_s3.down = True
    code, body = await d.get_json("/__heartbeat__")
    assert code == 500
    assert body["checks"]["storage:us-east-1"] == "error"
    assert body["checks"]["upstream:hgmo"] == "ok"
    code, body = await d.get_json("/__lbheartbeat__")
    assert code == 200
