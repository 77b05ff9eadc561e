"""Two daemons, one Redis, one moto S3, in this process: they act as one.

The three-process tests (a real kill -9 included) are in
test_fleet_processes.py; these cover the same rules quickly, plus what needs
reaching into Redis or the daemons.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import pytest
import pytest_twisted
import redis as redis_py
from daemon import MIB, s3_config
from faults import FaultyUpstream, body_bytes
from polling import eventually
from twisted.internet import defer, threads

pytestmark = pytest.mark.integration

REV = "0123456789ab"


@pytest.fixture
def upstream():
    with FaultyUpstream(nbytes=6 * MIB) as server:
        yield server


def fleet_config(upstream: Any, buckets: Any, redis: Any, **tasks: Any) -> dict:
    config = s3_config(upstream.url_template, buckets)
    config["sources"]["hgmo"]["retry_backoff"] = 0.01
    config["coordination"] = {
        "backend": "redis",
        "url": redis.url,
        "lock_ttl": 3,
        "timeout": 1,
    }
    config["tasks"].update(tasks)
    return config


async def two_daemons(start_archiverd: Any, config: dict) -> list[Any]:
    daemons = [await start_archiverd(config), await start_archiverd(config)]
    for d in daemons:  # Redis answering, as seen by each
        await eventually(lambda d=d: d.daemon.fleet.up)
    return daemons


@pytest_twisted.ensureDeferred
async def test_requests_at_both_daemons_make_one_fetch_and_both_answer(
    upstream, s3_buckets, redis, start_archiverd
):
    a, b = await two_daemons(start_archiverd, fleet_config(upstream, s3_buckets, redis))
    path = f"/archiver/hgmo/r/{REV}"
    answers = await defer.gatherResults(
        [defer.ensureDeferred((a, b)[i % 2].get(path)) for i in range(40)]
    )
    assert {r.code for r in answers} == {202}
    locations = {r.headers.getRawHeaders("location")[0] for r in answers}
    task_path = "/archiver/status/r-0123456789ab.tar.gz"
    assert {urlpath(loc) for loc in locations} == {task_path}

    for d in (a, b):
        result = await d.wait(task_path)
        assert result["state"] == "SUCCESS", result
        assert result["sha256"] and result["size"] == 6 * MIB
        assert set(result["s3_urls"]) == set(s3_buckets.buckets)
    assert upstream.requests == 1
    # b read a's record once; a success is then answered from b's memory.
    fleet = b.daemon.fleet
    calls = fleet.calls - fleet.pings
    for _ in range(5):
        assert (await b.get_json(task_path))[1]["result"]["state"] == "SUCCESS"
    assert fleet.calls - fleet.pings == calls

    def stored() -> list[Any]:
        return [
            (s3_buckets.keys(r), s3_buckets.pending_uploads(r))
            for r in s3_buckets.buckets
        ]

    assert await threads.deferToThread(stored) == [(["r-0123456789ab.tar.gz"], [])] * 2
    for d in (a, b):
        assert (await d.get(path)).code == 302


@pytest_twisted.ensureDeferred
async def test_a_cold_archive_costs_at_most_six_redis_round_trips(
    upstream, s3_buckets, redis, start_archiverd
):
    """Claim, turn at a slot (which publishes the record), fence, finish:
    four round trips, and room for two heartbeats; the daemon that did not
    fetch it answers the finished task's polls with none (one read, then
    from memory), and its answer is the owner's."""
    upstream.nbytes = 64 * 1024
    a, b = await two_daemons(start_archiverd, fleet_config(upstream, s3_buckets, redis))

    def work(d: Any) -> int:
        return d.daemon.fleet.calls - d.daemon.fleet.pings

    before = work(a)
    location = loc(await a.get(f"/archiver/hgmo/r/{REV}"))
    result = await a.wait(location)
    assert result["state"] == "SUCCESS", result
    assert work(a) - before <= 6
    assert upstream.requests == 1

    task_path = urlpath(location)
    _, first = await b.get_json(task_path)
    read = work(b)
    for _ in range(5):
        _, again = await b.get_json(task_path)
        assert again == first
    assert work(b) == read
    _, owners = await a.get_json(task_path)
    assert first["result"] == owners["result"] | {"elapsed_seconds": ANY}


@pytest_twisted.ensureDeferred
async def test_max_concurrent_tasks_holds_across_the_fleet(
    upstream, s3_buckets, redis, start_archiverd
):
    upstream.script = ["stall_body:1024"]
    a, b = await two_daemons(
        start_archiverd,
        fleet_config(upstream, s3_buckets, redis, max_concurrent_tasks=1),
    )
    first = await a.get("/archiver/hgmo/r/000000000001")
    await eventually(lambda: upstream.requests == 1)
    second = await b.get("/archiver/hgmo/r/000000000002")
    queued = second.headers.getRawHeaders("location")[0]
    # Behind it on the same daemon: waits there, out of Redis' queue.
    third = loc(await b.get("/archiver/hgmo/r/000000000003"))

    async def seen_queued(location: str, status: str) -> bool:
        states = [(await d.get_json(location))[1]["result"] for d in (a, b)]
        return all((s["state"], s["status"]) == ("PENDING", status) for s in states)

    await eventually(lambda: seen_queued(queued, "queued (0 ahead)"))
    await eventually(lambda: seen_queued(third, "queued (1 ahead)"))
    assert upstream.requests == 1  # the others wait for the fleet's one slot

    upstream.release.set()  # the first fails (cut off); the others may go
    assert (await a.wait(first.headers.getRawHeaders("location")[0]))[
        "state"
    ] == "FAILURE"
    assert (await a.wait(queued))["state"] == "SUCCESS"
    assert (await a.wait(third))["state"] == "SUCCESS"


@pytest_twisted.ensureDeferred
async def test_with_redis_down_hits_still_redirect_and_misses_get_503(
    upstream, s3_buckets, redis, start_archiverd
):
    a, b = await two_daemons(start_archiverd, fleet_config(upstream, s3_buckets, redis))
    stored = f"/archiver/hgmo/r/{REV}"
    assert (await a.wait(loc(await a.get(stored))))["state"] == "SUCCESS"
    # b has never seen it: its hit is answered from storage alone.
    await threads.deferToThread(redis.stop)
    for d in (a, b):
        assert (await d.get(stored)).code == 302
        response = await d.get("/archiver/hgmo/r/fedcba987654")
        assert response.code == 503
        assert response.headers.getRawHeaders("retry-after") == ["5"]
        assert "other daemons" in (await response.json())["error"]
        code, health = await d.get_json("/__heartbeat__")
        assert (code, health["checks"]["redis"]) == (500, "error")
        metrics = await (await d.get("/metrics")).text()
        assert "archiverd_redis_up 0.0" in metrics
        # A finished task's status still comes from storage.
        code, body = await d.get_json("/archiver/status/r-0123456789ab.tar.gz")
        assert (code, body["result"]["state"]) == (200, "SUCCESS")
        # Anything else may be running at another daemon: unknown for now.
        response = await d.get("/archiver/status/r-fedcba987654.tar.gz")
        assert response.code == 503
        assert response.headers.getRawHeaders("retry-after") == ["5"]
    assert [p for p in upstream.paths if "/archive/" in p] == [
        f"/r/archive/{REV}.tar.gz/"
    ]

    await threads.deferToThread(redis.start)
    await eventually(lambda: a.daemon.fleet.up and b.daemon.fleet.up)
    result = await b.wait(loc(await b.get("/archiver/hgmo/r/fedcba987654")))
    assert result["state"] == "SUCCESS"


@pytest_twisted.ensureDeferred
async def test_a_holder_that_loses_its_lock_stops_and_cannot_publish(
    upstream, s3_buckets, redis, start_archiverd
):
    upstream.script = [f"stall_body:{6 * MIB}"]
    (a,) = [await start_archiverd(fleet_config(upstream, s3_buckets, redis))]
    await eventually(lambda: a.daemon.fleet.up)
    location = loc(await a.get(f"/archiver/hgmo/r/{REV}"))
    await eventually(lambda: pending_everywhere(s3_buckets))

    # Another daemon took the work over (as if this one had stalled past
    # lock_ttl): the lock now holds its token, and the record is its own.
    client = redis_py.Redis.from_url(redis.url, decode_responses=True)
    lock = "archiverd:lock:r-0123456789ab.tar.gz"
    record = "archiverd:task:r-0123456789ab.tar.gz"
    await threads.deferToThread(client.set, lock, "someone-else", px=60_000)
    await threads.deferToThread(
        client.hset, record, mapping={"state": "STARTED", "status": "theirs"}
    )

    result = await a.wait(location)
    assert result["state"] == "FAILURE"
    assert "another daemon took this task over" in result["status"]
    assert await threads.deferToThread(client.hget, record, "status") == "theirs"
    assert await threads.deferToThread(client.get, lock) == "someone-else"

    def pending() -> list[Any]:
        return [s3_buckets.pending_uploads(r) for r in s3_buckets.buckets]

    assert await threads.deferToThread(pending) == [[], []]
    assert await threads.deferToThread(s3_buckets.keys, "us-east-1") == []
    client.close()


@pytest_twisted.ensureDeferred
async def test_taking_over_aborts_the_dead_holders_pending_uploads(
    upstream, s3_buckets, redis, start_archiverd
):
    # A daemon died holding the lock: its uploads stay pending, and its lock
    # (here: none, as after lock_ttl) no longer protects them.
    key = "r-0123456789ab.tar.gz"

    def orphan() -> None:
        for region in s3_buckets.buckets:
            client = s3_buckets.client(region)
            client.create_multipart_upload(Bucket=s3_buckets.buckets[region], Key=key)

    await threads.deferToThread(orphan)
    (a,) = [await start_archiverd(fleet_config(upstream, s3_buckets, redis))]
    await eventually(lambda: a.daemon.fleet.up)
    result = await a.wait(loc(await a.get(f"/archiver/hgmo/r/{REV}")))
    assert result["state"] == "SUCCESS"

    def state() -> list[Any]:
        return [
            (s3_buckets.keys(r), s3_buckets.pending_uploads(r))
            for r in s3_buckets.buckets
        ]

    assert await threads.deferToThread(state) == [([key], [])] * 2
    stored = await threads.deferToThread(s3_buckets.get, "us-east-1", key)
    assert stored == body_bytes(6 * MIB)


# -- helpers -------------------------------------------------------------------


def loc(response: Any) -> str:
    assert response.code == 202, response.code
    return str(response.headers.getRawHeaders("location")[0])


def urlpath(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def pending_everywhere(buckets: Any) -> bool:
    pending = await threads.deferToThread(
        lambda: [buckets.pending_uploads(r) for r in buckets.buckets]
    )
    return all(pending)
