"""archiverd.archives: where a client should go and what a task id's status
is, decided without HTTP: plain values from the domain object, over
in-memory storage, a real TaskService on a Clock and a fake hgweb."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import (
    FakeHgweb,
    FakeRunner,
    InlineStorageService,
    MemoryStorage,
    StubClient,
    failure_of,
    result_of,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from archiverd import wire
from archiverd.archives import MAX_TASK_ID, Accepted, Archives, Redirect, Status
from archiverd.config import SourceConfig
from archiverd.errors import BadRequest, Busy, FleetUnavailable, NotFound
from archiverd.keys import ArchiveRequest
from archiverd.storage.base import ObjectInfo
from archiverd.tasks.coordinator import LocalCoordinator
from archiverd.tasks.model import Outcome
from archiverd.tasks.service import TaskService
from archiverd.transfer.sources import Source

NODE = "42bf8560b395a5a9e3c2bbd6c2de2f2c6bd4ec70"
REV = NODE[:12]
ASH = ArchiveRequest.parse("hgmo", "projects/ash", REV)
REGIONS = ("east", "west")
INFO = ObjectInfo("application/gzip", "ash.tar.gz")


class Elsewhere(LocalCoordinator):
    """One daemon's coordinator that also knows another daemon's records."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, dict[str, Any]] = {}
        self.known: dict[str, dict[str, Any]] = {}
        self.down = False
        self.lookups: list[str] = []

    async def lookup(self, task_id: str) -> dict[str, Any] | None:
        self.lookups.append(task_id)
        if self.down:
            raise FleetUnavailable("redis: connection refused")
        found = self.records.get(task_id)
        return None if found is None else dict(found)

    def peek(self, task_id: str) -> dict[str, Any] | None:
        found = self.known.get(task_id)
        return None if found is None else dict(found)


class Domain:
    """An :class:`Archives` with everything behind it in memory."""

    def __init__(self, *, caches: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.backend = MemoryStorage(REGIONS, self.clock.seconds)
        self.storage = InlineStorageService(self.backend, self.clock, **(caches or {}))
        self.runner = FakeRunner()
        self.coordinator = Elsewhere()
        self.tasks = TaskService(self.clock, self.runner, coordinator=self.coordinator)
        self.hgweb = FakeHgweb({("projects/ash", "default"): NODE})
        hgmo = Source(
            SourceConfig("hgmo"), StubClient(self.hgweb, self.clock), self.clock
        )
        self.archives = Archives(
            {"hgmo": hgmo}, self.storage, self.tasks, self.clock, signed_url_expiry=300
        )

    def store(self, key: str, regions: tuple[str, ...] = REGIONS) -> None:
        for region in regions:
            self.backend.put(region, key, b"archive bytes", INFO, "0" * 64)

    def locate(self, rev: str = REV, **query: str) -> Redirect | Accepted:
        found = self.archives.locate("hgmo", "projects/ash", rev, **query)
        return result_of(found) if isinstance(found, Deferred) else found

    def status(self, task_id: str = ASH.task_id) -> Status:
        found = self.archives.status(task_id)
        return result_of(found) if isinstance(found, Deferred) else found


@pytest.fixture
def domain() -> Domain:
    return Domain()


# -- locate ------------------------------------------------------------------


def test_a_missing_archive_is_accepted_and_one_task_fetches_it(domain: Domain) -> None:
    assert domain.locate() == Accepted(ASH.task_id)
    assert domain.locate() == Accepted(ASH.task_id)
    assert [call.task.key for call in domain.runner.calls] == [ASH.key]
    assert domain.runner.calls[0].task.regions == REGIONS


def test_a_stored_archive_is_a_redirect_to_the_preferred_region(
    domain: Domain,
) -> None:
    domain.store(ASH.key)
    found = domain.locate(preferred_region="west")
    assert isinstance(found, Redirect)
    assert found.url.startswith(f"https://west.s3.example/{ASH.key}?")
    assert domain.runner.calls == []


def test_an_unknown_preferred_region_is_the_first_region(domain: Domain) -> None:
    domain.store(ASH.key)
    found = domain.locate(preferred_region="mars")
    assert isinstance(found, Redirect)
    assert found.url.startswith("https://east.s3.example/")


def test_a_cached_hit_is_answered_at_once_without_a_storage_call() -> None:
    """The hit path: a key known stored and a fresh signed URL need no I/O,
    and no Deferred."""
    domain = Domain(caches={"exists_cache_size": 100, "signed_url_reuse": 30})
    domain.store(ASH.key)
    domain.locate()  # learns that it is stored, and signs a URL
    calls = list(domain.storage.calls)
    found = domain.archives.locate("hgmo", "projects/ash", REV)
    assert isinstance(found, Redirect)
    assert domain.storage.calls == calls


def test_missing_in_the_preferred_region_only_fetches_only_what_is_missing(
    domain: Domain,
) -> None:
    domain.store(ASH.key, regions=("east",))
    assert domain.locate(preferred_region="west") == Accepted(ASH.task_id)
    assert domain.runner.calls[0].task.regions == ("west",)
    assert isinstance(domain.locate(preferred_region="east"), Redirect)


def test_a_symbolic_rev_is_resolved_and_names_the_changeset(domain: Domain) -> None:
    by_name = ArchiveRequest.parse("hgmo", "projects/ash", "default").with_rev(NODE)
    assert domain.locate("default") == Accepted(by_name.task_id)
    assert by_name.task_id == "projects_ash-default@42bf8560b395.tar.gz"
    assert domain.hgweb.requests == ["/projects/ash/json-rev/default"]


def test_concurrent_misses_share_one_look_at_storage(domain: Domain) -> None:
    domain.storage.call = _held(domain.storage.call)  # type: ignore[method-assign]
    first = domain.archives.locate("hgmo", "projects/ash", REV)
    second = domain.archives.locate("hgmo", "projects/ash", REV)
    assert isinstance(first, Deferred) and isinstance(second, Deferred)
    assert len(domain.storage.held) == len(REGIONS)  # one exists() per region
    domain.storage.release()
    assert result_of(first) == result_of(second) == Accepted(ASH.task_id)
    assert len(domain.runner.calls) == 1


def test_an_unknown_source_is_not_found(domain: Domain) -> None:
    with pytest.raises(NotFound, match="unknown source 'github'"):
        domain.archives.locate("github", "projects/ash", REV)


def test_a_bad_request_is_refused_before_any_work(domain: Domain) -> None:
    with pytest.raises(BadRequest):
        domain.archives.locate("hgmo", "projects/../etc", REV)
    assert domain.storage.calls == [] and domain.runner.calls == []


# -- status ------------------------------------------------------------------


def test_a_running_task_is_answered_at_once_from_the_table(domain: Domain) -> None:
    domain.locate()
    found = domain.archives.status(ASH.task_id)
    assert isinstance(found, Status)  # no Deferred: no I/O was needed
    assert found.task is domain.runner.calls[0].task
    assert found.result["state"] == "STARTED"
    assert found.urls == {}


def test_a_finished_task_gets_a_signed_url_per_region(domain: Domain) -> None:
    domain.locate()
    domain.store(ASH.key)
    domain.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    found = domain.status()
    assert found.result["state"] == "SUCCESS"
    assert found.result["sha256"] == "ab" * 32
    assert sorted(found.urls) == sorted(REGIONS)


def test_an_unknown_task_is_pending_with_the_old_words(domain: Domain) -> None:
    found = domain.status()
    assert found.result == {
        "state": "PENDING",
        "status": wire.UNKNOWN_STATUS,
        "src_url": "",
    }
    assert found.urls == {} and found.task is None


def test_a_task_from_before_a_restart_stored_everywhere_is_success(
    domain: Domain,
) -> None:
    domain.store(ASH.key)
    found = domain.status()
    assert found.result["state"] == "SUCCESS"
    assert found.result["status"] == wire.SUCCESS_STATUS
    assert sorted(found.urls) == sorted(REGIONS)


def test_a_task_stored_in_some_regions_only_is_unknown(domain: Domain) -> None:
    domain.store(ASH.key, regions=("east",))
    assert domain.status().result["status"] == wire.UNKNOWN_STATUS


def test_an_overlong_task_id_is_unknown_without_asking_anyone(domain: Domain) -> None:
    found = domain.status("a" * (MAX_TASK_ID + 1))
    assert found.result["status"] == wire.UNKNOWN_STATUS
    assert domain.storage.calls == [] and domain.coordinator.lookups == []


def test_another_daemons_task_is_read_from_its_record(domain: Domain) -> None:
    domain.coordinator.records[ASH.task_id] = {"state": "PROGRESS", "status": "x"}
    found = domain.status()
    assert found.result == {"state": "PROGRESS", "status": "x"}
    assert found.urls == {} and found.task is None


def test_another_daemons_success_known_here_needs_no_io(domain: Domain) -> None:
    domain.coordinator.known[ASH.task_id] = {"state": "PENDING", "status": "q"}
    found = domain.archives.status(ASH.task_id)
    assert isinstance(found, Status)
    assert found.result["status"] == "q"
    assert domain.coordinator.lookups == []


def test_records_out_of_reach_and_nothing_stored_is_busy(domain: Domain) -> None:
    domain.coordinator.down = True
    failure_of(domain.archives.status(ASH.task_id), Busy)  # type: ignore[arg-type]


def test_records_out_of_reach_but_stored_everywhere_is_success(
    domain: Domain,
) -> None:
    domain.coordinator.down = True
    domain.store(ASH.key)
    assert domain.status().result["state"] == "SUCCESS"


def _held(call: Any) -> Any:
    """Storage calls that wait until ``release()`` (on the storage service)."""
    owner = call.__self__
    owner.held = []

    async def held(fn: Any, *args: Any) -> Any:
        d: Deferred[None] = Deferred()
        owner.held.append(d)
        await d
        return await call(fn, *args)

    def release() -> None:
        for d in owner.held:
            d.callback(None)

    owner.release = release
    return held
