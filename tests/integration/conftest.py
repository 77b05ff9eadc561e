"""Fixtures running real components on loopback: hgweb, moto S3, and an
upstream that breaks mid-transfer. See ``fixtures.py`` for the APIs.

None of these fixtures touch the Twisted reactor (pytest-twisted runs one in
this process): servers live in subprocesses or plain threads.

Tests wait for events with ``polling.eventually`` (on the reactor) or
``polling.eventually_blocking`` (elsewhere), never with fixed sleeps.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from fixtures import (
    MOTO_ENV,
    MOTO_ENV_REMOVED,
    BreakingUpstream,
    HgwebServer,
    MotoS3,
    Radosgw,
    RadosgwBuckets,
    S3Buckets,
    build_standard_repos,
)

# Debian's redis-server on loopback, for the fleet tests.
from redis_fixture import redis, redis_server  # noqa: F401


@pytest.fixture(scope="session")
def hgweb(tmp_path_factory: pytest.TempPathFactory):
    """A real ``hg serve --web-conf`` over the standard test repositories.

    Session-wide: ``commit()``/``tag()``/``bookmark()`` on the standard repos
    are seen by every later test; make a fresh repo (``commit()`` on a new
    path creates it) when a test needs to move ``default``/``tip``.
    """
    server = HgwebServer(tmp_path_factory.mktemp("hgweb"))
    build_standard_repos(server)
    with server:
        yield server


@pytest.fixture(scope="session")
def moto_server():
    """A moto S3 server on 127.0.0.1, with fake AWS credentials exported
    (and ``AWS_SESSION_TOKEN``/``AWS_SECURITY_TOKEN``/``AWS_PROFILE``
    removed) in ``os.environ`` for the whole session."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in MOTO_ENV.items():
            env.setenv(name, value)
        for name in MOTO_ENV_REMOVED:
            env.delenv(name, raising=False)
        with MotoS3() as moto:
            yield moto


@pytest.fixture
def s3_buckets(moto_server: MotoS3):
    """Two fresh buckets, in us-east-1 and us-west-2; emptied and deleted
    afterwards."""
    with S3Buckets(moto_server) as buckets:
        yield buckets


@pytest.fixture
def breaking_upstream():
    """An HTTP server whose every archive is cut off mid-stream."""
    with BreakingUpstream() as upstream:
        yield upstream


@pytest_twisted.async_yield_fixture
async def start_archiverd():
    """Start archiverd in this process with a raw config; stopped afterwards."""
    # Imported here: only the tests that run the daemon need archiverd.tap.
    from daemon import InProcess

    started: list[InProcess] = []

    async def start(raw_config: dict, backend=None) -> InProcess:
        daemon = InProcess(raw_config, backend)
        await daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        await daemon.stop()


@pytest.fixture(scope="session")
def radosgw(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server, Ceph radosgw, on 127.0.0.1 for the whole session,
    with the same fake AWS credentials as ``moto_server`` exported.

    Skipped with the reason when radosgw is not installed (see
    ``scripts/radosgw.sh install``), unless ``ARCHIVERD_REQUIRE_RADOSGW=1``
    (CI sets it), which turns that into a failure.
    """
    reason = Radosgw.unavailable()
    if reason:
        if os.environ.get("ARCHIVERD_REQUIRE_RADOSGW") == "1":
            pytest.fail(
                f"radosgw: {reason}; ARCHIVERD_REQUIRE_RADOSGW=1 forbids skipping",
                pytrace=False,
            )
        pytest.skip(f"radosgw: {reason}")
    with pytest.MonkeyPatch.context() as env:
        for name, value in MOTO_ENV.items():
            env.setenv(name, value)
        for name in MOTO_ENV_REMOVED:
            env.delenv(name, raising=False)
        with Radosgw(tmp_path_factory.mktemp("radosgw")) as server:
            yield server


@pytest.fixture(params=["moto", "radosgw"])
def any_s3_buckets(request: pytest.FixtureRequest):
    """What ``s3_buckets`` gives, once on moto and once on radosgw (the test
    runs for each; the radosgw run is skipped where radosgw is not
    installed)."""
    if request.param == "moto":
        yield request.getfixturevalue("s3_buckets")
        return
    with RadosgwBuckets(request.getfixturevalue("radosgw")) as buckets:
        yield buckets
