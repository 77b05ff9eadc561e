"""archiverd.tasks.redis_store without Redis: what needs no server (TTLs, names, input
checks, and calls made before start())."""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from archiverd.tasks.redis_store import (
    FleetUnavailable,
    RedisFleet,
    default_instance,
    milliseconds,
)

# A URL is only parsed until start(); nothing here connects.
URL = "redis://127.0.0.1:6379/0"


def test_ttls_become_whole_milliseconds() -> None:
    assert milliseconds(30) == 30_000
    assert milliseconds(0.25) == 250
    assert milliseconds(0.0001) == 1  # never 0: PX 0 is an error in Redis


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_a_ttl_must_be_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        milliseconds(ttl)


def test_default_instance_is_host_and_pid() -> None:
    assert default_instance() == f"{socket.gethostname()}:{os.getpid()}"
    assert RedisFleet(URL, Clock()).instance == default_instance()


def test_a_bad_url_is_refused_when_made() -> None:
    with pytest.raises(ValueError):
        RedisFleet("http://127.0.0.1:6379", Clock())


def test_not_up_before_start() -> None:
    assert not RedisFleet(URL, Clock()).up


@pytest_twisted.ensureDeferred
async def test_calls_before_start_are_unavailable_at_once() -> None:
    fleet = RedisFleet(URL, Clock())
    with pytest.raises(FleetUnavailable):
        await fleet.ping()
    with pytest.raises(FleetUnavailable):
        await fleet.acquire("k", 30)
    with pytest.raises(FleetUnavailable):
        await fleet.load_task("t")
    assert not fleet.up


@pytest_twisted.ensureDeferred
async def test_an_empty_task_record_is_refused() -> None:
    fleet = RedisFleet(URL, Clock())
    with pytest.raises(ValueError, match="at least one field"):
        await fleet.keep("k", "token", 30, "t", {}, 30, seq=1)


@pytest_twisted.ensureDeferred
async def test_a_zero_record_ttl_is_refused_before_any_call() -> None:
    fleet = RedisFleet(URL, Clock())
    with pytest.raises(ValueError, match="positive"):
        await fleet.keep("k", "token", 30, "t", {"state": "PENDING"}, 0, seq=1)
    with pytest.raises(ValueError, match="positive"):
        await fleet.keep("k", "token", 0, "t", {"state": "PENDING"}, 30, seq=1)


@pytest_twisted.ensureDeferred
async def test_a_zero_ttl_is_refused_before_any_call() -> None:
    fleet = RedisFleet(URL, Clock())
    with pytest.raises(ValueError):
        await fleet.acquire("k", 0)


@pytest_twisted.ensureDeferred
async def test_stop_without_start_does_nothing() -> None:
    await RedisFleet(URL, Clock()).stop()
