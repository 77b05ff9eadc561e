"""archiverd.api.web: the HTTP API through StubTreq, over in-memory storage, a
real TaskService on a Clock with a fake runner, and a fake hgweb."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
import treq
from fakes import (
    FakeHgweb,
    FakeRunner,
    InlineStorageService,
    MemoryStorage,
    StubClient,
    result_of,
)
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs

from archiverd import __version__, wire
from archiverd.api.files import SignedFiles
from archiverd.api.web import ArchiverAPI
from archiverd.archives import Archives
from archiverd.config import SourceConfig
from archiverd.keys import ArchiveRequest
from archiverd.ops.health import Health
from archiverd.ops.metrics import Metrics
from archiverd.storage.base import ObjectInfo
from archiverd.storage.files import FileStorage
from archiverd.tasks.model import Outcome
from archiverd.tasks.service import TaskService
from archiverd.transfer.sources import Source

BASE = "http://archiver.example:8010"
NODE = "42bf8560b395a5a9e3c2bbd6c2de2f2c6bd4ec70"
REV = NODE[:12]
ASH = ArchiveRequest.parse("hgmo", "projects/ash", REV)
REGIONS = ("us-east-1", "us-west-2")
INFO = ObjectInfo("application/gzip", "ash.tar.gz")
UNKNOWN = {
    "state": "PENDING",
    "status": "no status available at this point.",
    "src_url": "",
    "s3_urls": {},
}


@dataclass
class Answer:
    code: int
    headers: Any
    body: bytes
    #: The response's Content-Length (Twisted's client keeps it off headers).
    length: int | None = None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def json(self) -> Any:
        assert self.header("Content-Type") == "application/json"
        return json.loads(self.body)


def _length(response: Any) -> int | None:
    return response.length if isinstance(response.length, int) else None


class World:
    """archiverd's API with everything behind it in memory."""

    def __init__(
        self,
        *,
        public_url: str | None = None,
        files: FileStorage | None = None,
        clock: Clock | None = None,
        max_tasks: int = 10000,
        caches: dict[str, Any] | None = None,
        hosts: tuple[str, ...] = ("archiver.example",),
        hold: float = 0.0,
        legacy_clients: tuple[str, ...] = (),
    ) -> None:
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(1_700_000_000)
        self.backend: Any = files or MemoryStorage(REGIONS, self.clock.seconds)
        self.storage = InlineStorageService(self.backend, self.clock, **(caches or {}))
        self.runner = FakeRunner()
        self.metrics = Metrics()
        self.tasks = TaskService(
            self.clock,
            self.runner,
            keep_finished=3600,
            max_tasks=max_tasks,
            metrics=self.metrics,
        )
        self.metrics.watch_tasks(self.tasks)
        self.hgweb = FakeHgweb({("projects/ash", "default"): NODE})
        hgmo = Source(
            SourceConfig("hgmo"), StubClient(self.hgweb, self.clock), self.clock
        )
        self.archives = Archives(
            {"hgmo": hgmo},
            self.storage,
            self.tasks,
            self.clock,
            signed_url_expiry=300,
            metrics=self.metrics,
        )
        self.api = ArchiverAPI(
            self.archives,
            public_url=public_url,
            hosts=hosts,
            files=None if files is None else SignedFiles(files, self.storage.call),
            health=Health(self.storage, {"hgmo": hgmo}, self.clock),
            metrics=self.metrics,
            hold=hold,
            max_wait=60,
            legacy_clients=legacy_clients,
        )
        self.http = StubTreq(self.api.resource())

    def get(self, path: str, method: str = "GET", **headers: str) -> Answer:
        return self.answer(self.start(path, method, **headers), method)

    def start(self, path: str, method: str = "GET", **headers: str) -> Deferred[Any]:
        """A request whose answer may come later (see :meth:`answer`)."""
        url = path if path.startswith("http") else BASE + path
        d = self.http.request(
            method, url, headers=headers or None, allow_redirects=False
        )
        self.http.flush()
        return d

    def answer(self, d: Deferred[Any], method: str = "GET") -> Answer:
        """The answer to a request :meth:`start` made, which must have come."""
        self.http.flush()
        response = result_of(d)
        body = treq.content(response)
        self.http.flush()
        length = None if method == "HEAD" else _length(response)
        return Answer(response.code, response.headers, result_of(body), length)

    async def served(self, url: str, **headers: str) -> Answer:
        """Like :meth:`get`, for a body Twisted streams from a file.

        Twisted's HTTP server drives a file's (pull) producer with the global
        cooperator, so only here the reactor must turn; no time passes.
        """
        from twisted.internet import reactor

        async def settled(d: Deferred[Any]) -> Deferred[Any]:
            fired: list[bool] = []
            d.addBoth(lambda result: fired.append(True) or result)
            for _ in range(1000):
                if fired:
                    break
                self.http.flush()
                await deferLater(reactor, 0, lambda: None)
            return d

        d = self.http.get(url, headers=headers or None, allow_redirects=False)
        response = result_of(await settled(d))
        body = await settled(treq.content(response))
        return Answer(
            response.code, response.headers, result_of(body), _length(response)
        )

    def store(self, key: str, regions: tuple[str, ...] = REGIONS) -> None:
        for region in regions:
            self.backend.put(region, key, b"archive bytes", INFO, "0" * 64)

    def nothing_happened(self) -> bool:
        """No task, no upstream request, no storage call."""
        return not (self.runner.calls or self.hgweb.requests or self.storage.calls)


@pytest.fixture
def world() -> World:
    return World()


# -- bad requests ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (f"/archiver/hgmo/projects/ash/{REV}?suffix=tar.xz", "unsupported suffix"),
        (f"/archiver/hgmo/projects/../etc/{REV}", "'..' segment"),
        (f"/archiver/hgmo/projects/%2E%2E/etc/{REV}", "'..' segment"),
        (f"/archiver/hgmo/projects%2F..%2F..%2Fetc/{REV}", "'..' segment"),
        (f"/archiver/hgmo/projects/ash/{REV}?subdir=../../etc", "'..' segment"),
        (f"/archiver/hgmo/projects/ash/{REV}?subdir=a%0D%0AX-Evil:%201", "control"),
        (f"/archiver/hgmo/projects/ash/{REV}?subdir=a%00b", "control"),
        (f"/archiver/hgmo/projects%5Cash/{REV}", "backslash"),
        (f"/archiver/hgmo/projects/ash/{'v' * 257}", "longer than 256"),
        ("/archiver/hgmo/projects/ash/", "rev is empty"),
        (f"/archiver/hgmo/projects/ash/{REV}?preferred_region=a%0Ab", "control"),
        (f"/archiver/hgmo/projects/ash/{REV}?subdir=%FF", "not valid UTF-8"),
        (f"/archiver/hgmo/projects/ash/{REV}?subdir=a&subdir=b", "more than once"),
    ],
)
def test_bad_input_is_a_400_with_a_json_error_and_nothing_else_happens(
    world: World, path: str, words: str
) -> None:
    answer = world.get(path)
    assert answer.code == 400
    assert list(answer.json) == ["error"]
    assert words in answer.json["error"]
    assert world.nothing_happened()


def test_an_unknown_source_is_a_404_json_error(world: World) -> None:
    answer = world.get(f"/archiver/github/projects/ash/{REV}")
    assert answer.code == 404
    assert answer.json == {"error": "unknown source 'github'"}
    assert world.nothing_happened()


def test_an_unknown_route_is_a_404_json_error(world: World) -> None:
    answer = world.get("/nothing/here")
    assert answer.code == 404
    assert answer.json == {"error": "not found"}


# -- stored archives: 302 ----------------------------------------------------


def test_a_stored_archive_redirects_to_the_preferred_regions_signed_url(
    world: World,
) -> None:
    world.store(ASH.key)
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}?preferred_region=us-west-2")
    assert answer.code == 302
    expires = int(world.clock.seconds()) + 300
    location = f"https://us-west-2.s3.example/{ASH.key}?Expires={expires}"
    assert answer.header("Location") == location
    assert answer.header("Content-Type") == "text/html; charset=utf-8"
    assert location.encode() in answer.body and len(answer.body) < 500
    assert world.runner.calls == []


@pytest.mark.parametrize("preferred", ["", "mars-1", "US-WEST-2"])
def test_an_unknown_preferred_region_means_the_default_region(
    world: World, preferred: str
) -> None:
    world.store(ASH.key)
    answer = world.get(
        f"/archiver/hgmo/projects/ash/{REV}?preferred_region={preferred}"
    )
    assert answer.code == 302
    assert answer.header("Location").startswith("https://us-east-1.s3.example/")


def test_stored_only_elsewhere_starts_a_task_for_the_missing_region(
    world: World,
) -> None:
    world.store(ASH.key, regions=("us-east-1",))
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}?preferred_region=us-west-2")
    assert answer.code == 202
    [call] = world.runner.calls
    assert call.task.regions == ("us-west-2",)


# -- archives not yet stored: 202 and a task ---------------------------------


def test_an_archive_not_stored_is_202_with_an_absolute_status_location(
    world: World,
) -> None:
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}?subdir=testing/mozharness")
    assert answer.code == 202
    assert answer.json == {"result": {}}
    task_id = "projects_ash-42bf8560b395.tar.gz_testing_mozharness"
    assert answer.header("Location") == f"{BASE}/archiver/status/{task_id}"
    [call] = world.runner.calls
    assert call.task.task_id == task_id
    assert call.task.regions == REGIONS
    assert call.task.src_url == (
        "https://hg.mozilla.org/projects/ash/archive/42bf8560b395.tar.gz/"
        "testing/mozharness"
    )


@pytest.mark.parametrize(
    ("host", "base"),
    [
        ("[::1]:9000", "http://[::1]:9000"),
        ("localhost:9000", "http://localhost:9000"),
        ("Archiver.Example", "http://Archiver.Example"),
    ],
)
def test_location_comes_from_the_host_header_when_it_is_a_name_served(
    host: str, base: str
) -> None:
    world = World(hosts=("archiver.example", "::1"))
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}", Host=host)
    assert answer.header("Location") == f"{base}/archiver/status/{ASH.task_id}"


def test_an_empty_host_header_means_the_listening_address(world: World) -> None:
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}", Host="")
    assert answer.code == 202
    assert answer.header("Location") == (
        f"http://127.0.0.1:8010/archiver/status/{ASH.task_id}"
    )


@pytest.mark.parametrize("host", ["evil.example/x", "a b", "x@evil.example"])
def test_a_malformed_host_header_is_a_400_and_never_echoed(
    world: World, host: str
) -> None:
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}", Host=host)
    assert answer.code == 400
    assert answer.header("Location") is None
    assert world.nothing_happened()


def test_location_comes_from_public_url_when_set() -> None:
    world = World(public_url="https://archiver.example.com")
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}", Host="internal:8010")
    assert answer.header("Location") == (
        f"https://archiver.example.com/archiver/status/{ASH.task_id}"
    )


def test_a_task_id_with_escapes_is_percent_encoded_in_location(world: World) -> None:
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}?subdir=some_dir")
    assert answer.header("Location") == (
        f"{BASE}/archiver/status/projects_ash-{REV}.tar.gz_some~5Fdir"
    )


def test_a_second_request_while_fetching_joins_the_task_without_storage_calls(
    world: World,
) -> None:
    first = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    calls = list(world.storage.calls)
    second = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    assert second.code == 202
    assert second.header("Location") == first.header("Location")
    assert len(world.runner.calls) == 1
    assert world.storage.calls == calls


def test_a_symbolic_rev_is_resolved_and_the_task_is_for_its_changeset(
    world: World,
) -> None:
    answer = world.get("/archiver/hgmo/projects/ash/default")
    assert answer.code == 202
    assert world.hgweb.requests == ["/projects/ash/json-rev/default"]
    by_name = ArchiveRequest.parse("hgmo", "projects/ash", "default").with_rev(NODE)
    assert answer.header("Location") == f"{BASE}/archiver/status/{by_name.task_id}"
    assert world.runner.calls[0].task.request == by_name
    assert world.runner.calls[0].task.src_url.endswith("/archive/default.tar.gz/")


def test_an_unknown_rev_is_a_404_quoting_upstream(world: World) -> None:
    answer = world.get("/archiver/hgmo/projects/ash/nope")
    assert answer.code == 404
    assert answer.json["error"].endswith(": unknown revision 'nope'")
    assert world.runner.calls == []


def test_storage_trouble_starts_the_work_instead_of_failing_the_request(
    world: World,
) -> None:
    """A region that cannot say whether it has the archive counts as not
    having it: the task then fails (or not) with the cause, visible in status."""
    world.backend.broken.add("us-west-2")
    with capturedLogs() as events:
        answer = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    assert answer.code == 202
    assert world.runner.calls[0].task.regions == REGIONS
    assert any("us-west-2 is unreachable" in e.get("error", "") for e in events)


def test_a_full_task_table_is_a_503_with_retry_after() -> None:
    world = World(max_tasks=1)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 202
    answer = world.get("/archiver/hgmo/projects/ash/0123456789ab")
    assert answer.code == 503
    assert answer.header("Retry-After") == "5"
    assert list(answer.json) == ["error"]
    assert len(world.runner.calls) == 1


# -- status ------------------------------------------------------------------


def status(world: World, task_id: str = ASH.task_id) -> Any:
    answer = world.get(f"/archiver/status/{task_id}")
    assert answer.code == 200
    return answer.json["result"]


def test_status_of_an_unknown_task_is_exactly_the_old_services_answer(
    world: World,
) -> None:
    assert status(world, "nobody_knows-0123456789ab.tar.gz") == UNKNOWN
    assert status(world, "a~5") == UNKNOWN


def test_status_of_a_running_task_shows_progress_and_no_urls(world: World) -> None:
    world.get(f"/archiver/hgmo/projects/ash/{REV}")
    result = status(world)
    assert result["state"] == "STARTED"
    assert result["s3_urls"] == {}
    world.runner.calls[0].progress(5 * 2**20)
    result = status(world)
    assert (result["state"], result["status"]) == (
        "PROGRESS",
        "Uploading: 5.0 MiB so far",
    )
    assert result["bytes_received"] == 5 * 2**20


def test_status_of_a_success_signs_every_regions_url_at_poll_time(world: World) -> None:
    world.get(f"/archiver/hgmo/projects/ash/{REV}")
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    first = status(world)
    assert first["state"] == "SUCCESS"
    assert (first["size"], first["sha256"]) == (13, "ab" * 32)
    assert sorted(first["s3_urls"]) == sorted(REGIONS)
    world.clock.advance(60)
    second = status(world)
    for region in REGIONS:
        assert first["s3_urls"][region] != second["s3_urls"][region]
        expires = parse_qs(urlsplit(second["s3_urls"][region]).query)["Expires"]
        assert expires == [str(int(world.clock.seconds()) + 300)]


def test_status_of_a_failure_shows_the_reason(world: World) -> None:
    from archiverd.errors import UpstreamUnavailable

    world.get(f"/archiver/hgmo/projects/ash/{REV}")
    world.runner.calls[0].deferred.errback(UpstreamUnavailable("hg.example is down"))
    result = status(world)
    assert (result["state"], result["status"]) == ("FAILURE", "hg.example is down")
    assert result["s3_urls"] == {}


def test_status_of_an_unknown_task_stored_in_every_region_is_success(
    world: World,
) -> None:
    """Another archiverd (or an earlier run) stored it: the poller is done."""
    key = "projects/ash-0123456789ab.tar.gz/some_dir"
    world.store(key)
    result = status(world, "projects_ash-0123456789ab.tar.gz_some~5Fdir")
    assert result["state"] == "SUCCESS"
    assert sorted(result["s3_urls"]) == sorted(REGIONS)
    assert world.runner.calls == []


def test_status_of_an_unknown_task_stored_in_some_regions_is_unknown(
    world: World,
) -> None:
    world.store(ASH.key, regions=("us-east-1",))
    assert status(world) == UNKNOWN


def test_status_never_signs_urls_for_keys_that_name_no_archive(world: World) -> None:
    world.store("private/credentials.json")
    assert status(world, "private_credentials.json") == UNKNOWN


# -- the files route (local-files backend) -----------------------------------


@pytest.fixture
def files_world(tmp_path: Path) -> World:
    clock = Clock()
    clock.advance(1_700_000_000)
    files = FileStorage(tmp_path, ("local",), secret="s" * 32, clock=clock.seconds)
    files.open()
    files.put("local", ASH.key, b"the archive", INFO, "0" * 64)
    return World(files=files, clock=clock)


def signed_location(world: World) -> str:
    answer = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    assert answer.code == 302
    location = answer.header("Location")
    assert location.startswith(
        f"{BASE}/archiver/files/local/projects/ash-{REV}.tar.gz?"
    )
    return location


@pytest_twisted.ensureDeferred
async def test_a_validly_signed_file_url_serves_the_file(files_world: World) -> None:
    answer = await files_world.served(signed_location(files_world))
    assert answer.code == 200
    assert answer.body == b"the archive"
    assert answer.header("Content-Type") == "application/gzip"
    assert answer.header("Content-Disposition") == 'attachment; filename="ash.tar.gz"'


def test_a_file_url_with_a_tampered_signature_is_a_403(files_world: World) -> None:
    location = signed_location(files_world)
    signature = parse_qs(urlsplit(location).query)["signature"][0]
    tampered = location.replace(
        signature, ("0" if signature[0] != "0" else "1") + signature[1:]
    )
    answer = files_world.get(tampered)
    assert answer.code == 403
    assert list(answer.json) == ["error"]


def test_a_file_url_for_another_key_is_a_403(files_world: World) -> None:
    location = signed_location(files_world)
    answer = files_world.get(location.replace(".tar.gz?", ".zip?"))
    assert answer.code == 403


def test_an_expired_file_url_is_a_403(files_world: World) -> None:
    location = signed_location(files_world)
    files_world.clock.advance(300)
    assert files_world.get(location, method="HEAD").code == 200
    files_world.clock.advance(1)
    answer = files_world.get(location)
    assert answer.code == 403
    assert answer.json == {"error": "this link has expired or is not valid"}


@pytest.mark.parametrize("expires", ["%C2%B2", "9" * 5000])
def test_a_malformed_expiry_is_a_403_not_a_500(
    files_world: World, expires: str
) -> None:
    path = f"/archiver/files/local/{ASH.key}?expires={expires}&signature=00"
    with capturedLogs():
        assert files_world.get(path).code == 403


def test_file_urls_keep_the_path_of_public_url(tmp_path: Path) -> None:
    clock = Clock()
    files = FileStorage(tmp_path, ("local",), secret="s" * 32, clock=clock.seconds)
    files.open()
    world = World(public_url="https://example.com/archiverd", files=files, clock=clock)
    accepted = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    assert accepted.header("Location").startswith("https://example.com/archiverd/")
    files.put("local", ASH.key, b"the archive", INFO, "0" * 64)
    world.runner.calls[0].deferred.callback(Outcome(11, "0" * 64))
    redirected = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    assert redirected.header("Location").startswith(
        "https://example.com/archiverd/archiver/files/local/"
    )


# -- the hit path's caches ---------------------------------------------------

CACHES = {"exists_cache_size": 100, "exists_cache_ttl": 600, "signed_url_reuse": 30}


def test_a_hit_after_a_hit_makes_no_storage_call():
    world = World(caches=CACHES)
    world.store(ASH.key)
    first = world.get(f"/archiver/hgmo/projects/ash/{REV}")
    assert first.code == 302
    calls = list(world.storage.calls)
    # Every region, once; and the archive's sha256, read once for its 302s.
    assert calls == ["exists", "exists", "signed_url", "stat"]
    sha256 = first.header(wire.SHA256_HEADER)
    assert sha256 == hashlib.sha256(b"archive bytes").hexdigest()
    for _ in range(10):
        again = world.get(f"/archiver/hgmo/projects/ash/{REV}")
        assert again.code == 302
        assert again.header("Location") == first.header("Location")
        assert again.header(wire.SHA256_HEADER) == sha256
    assert world.storage.calls == calls


def test_absence_is_never_cached():
    world = World(caches=CACHES)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 202
    world.runner.calls[0].deferred.callback(Outcome(1, "0" * 64))
    world.store(ASH.key)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 302


def test_a_known_key_is_checked_again_after_exists_cache_ttl():
    world = World(caches=CACHES)
    world.store(ASH.key)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 302
    del world.backend.objects[(REGIONS[0], ASH.key)]  # a lifecycle rule expired it
    world.clock.advance(599)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 302
    world.clock.advance(1)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 202


def test_a_signed_url_is_reused_only_while_most_of_its_validity_remains():
    world = World(caches=CACHES)
    world.store(ASH.key)
    first = world.get(f"/archiver/hgmo/projects/ash/{REV}").header("Location")
    world.clock.advance(29)
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").header("Location") == first
    world.clock.advance(1)
    later = world.get(f"/archiver/hgmo/projects/ash/{REV}").header("Location")
    assert later != first
    expires = int(parse_qs(urlsplit(later).query)["Expires"][0])
    assert expires == world.clock.seconds() + 300


def test_concurrent_cold_requests_share_one_look_at_storage():
    """A thousand clients asking at once make one round of storage calls."""
    world = World()
    held: list[Deferred[None]] = []
    inline = world.storage.call

    async def slow_call(fn: Any, *args: Any) -> Any:
        if fn.__name__ == "exists":
            held.append(Deferred())
            await held[-1]
        return await inline(fn, *args)

    world.storage.call = slow_call  # type: ignore[method-assign]
    pending = [
        world.http.get(
            BASE + f"/archiver/hgmo/projects/ash/{REV}", allow_redirects=False
        )
        for _ in range(20)
    ]
    world.http.flush()
    assert len(held) == len(REGIONS)
    for d in held:
        d.callback(None)
    world.http.flush()
    codes = {result_of(d).code for d in pending}
    assert codes == {202}
    assert len(world.runner.calls) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_hook_read_instead_of_posted_is_a_405_not_a_redirect(method: str):
    answer = World().get("/archiver/hooks/hgmo", method)
    assert answer.code == 405
    assert answer.header("Allow") == "POST"
    assert answer.header("Location") is None


# -- Dockerflow ----------------------------------------------------------------


def test_lbheartbeat_answers_whenever_the_process_serves():
    world = World()
    world.backend.broken.add(REGIONS[0])
    answer = world.get("/__lbheartbeat__")
    assert (answer.code, answer.json) == (200, {"status": "ok"})


def test_heartbeat_checks_every_region_and_upstream():
    world = World()
    answer = world.get("/__heartbeat__")
    assert answer.code == 200
    assert answer.json == {
        "status": "ok",
        "checks": {
            "storage:us-east-1": "ok",
            "storage:us-west-2": "ok",
            "upstream:hgmo": "ok",
        },
        "details": {},
    }
    assert world.hgweb.requests == ["/"]


def test_heartbeat_is_a_500_naming_the_failed_check():
    world = World()
    world.backend.broken.add("us-west-2")
    answer = world.get("/__heartbeat__")
    assert answer.code == 500
    body = answer.json
    assert body["status"] == "error"
    assert body["checks"]["storage:us-west-2"] == "error"
    assert body["checks"]["storage:us-east-1"] == "ok"
    assert "us-west-2 is unreachable" in body["details"]["storage:us-west-2"]["message"]


def test_version_names_source_version_and_commit():
    answer = World().get("/__version__")
    assert answer.code == 200
    assert set(answer.json) == {"source", "version", "commit", "build"}
    assert answer.json["version"] == __version__


# -- metrics -----------------------------------------------------------------


def _samples(world: World) -> dict[str, float]:
    answer = world.get("/metrics")
    assert answer.code == 200
    assert answer.header("Content-Type").startswith("text/plain")
    samples = {}
    for line in answer.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_hits_misses_and_tasks():
    world = World()
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 202
    world.store(ASH.key)
    other = "/archiver/hgmo/projects/ash/" + "a" * 12
    assert world.get(other).code == 202
    world.runner.calls[0].deferred.callback(Outcome(1, "0" * 64))
    assert world.get(f"/archiver/hgmo/projects/ash/{REV}").code == 302
    assert world.get("/archiver/hgmo/projects/ash/x?suffix=rar").code == 400
    samples = _samples(world)
    assert samples['archiverd_archive_requests_total{result="miss"}'] == 2
    assert samples['archiverd_archive_requests_total{result="hit"}'] == 1
    assert samples['archiverd_tasks{state="SUCCESS"}'] == 1
    assert samples['archiverd_tasks{state="STARTED"}'] == 1
    assert samples["archiverd_tasks_in_flight"] == 1
    assert samples['archiverd_task_duration_seconds_count{state="SUCCESS"}'] == 1
