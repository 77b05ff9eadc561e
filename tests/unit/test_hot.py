"""archiverd.api.hot: hits and polls answered ahead of Klein, exactly as
Klein answers them, and long polls held at a few hundred bytes each."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import has_no_result
from test_web import ASH, REV, Answer, World
from treq.testing import StubTreq
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource

from archiverd.api.hot import SWEEP_EVERY, HotPath, route, wants_json
from archiverd.api.site import Root
from archiverd.tasks.model import Outcome

ARCHIVE = f"/archiver/hgmo/projects/ash/{REV}"
CACHES = {"exists_cache_size": 1000, "signed_url_reuse": 30}


class Counting(Resource):
    """The Klein resource, counting the requests it is handed."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.rendered = 0

    def render(self, request: Any) -> Any:
        self.rendered += 1
        return self.inner.render(request)


class Both:
    """One World served twice: through the hot path, and by Klein alone."""

    def __init__(self, world: World) -> None:
        self.world = world
        api = world.api
        self.klein = Counting(api.app.resource())
        self.hot = HotPath(api, self.klein)
        self.with_hot = StubTreq(Root(self.hot, api.hosts))
        self.klein_only = StubTreq(Root(api.app.resource(), api.hosts))

    def get(self, http: StubTreq, path: str, method: str, **headers: str) -> Answer:
        world = self.world
        world.http = http
        return world.get(path, method, **headers)

    def same(self, path: str, method: str = "GET", **headers: str) -> Answer:
        """Ask both ways; the answers (all but Date) and the counts must match."""
        before = self._counts()
        klein = self.get(self.klein_only, path, method, **headers)
        by_klein = self._counts() - before
        before = self._counts()
        hot = self.get(self.with_hot, path, method, **headers)
        assert self._counts() - before == by_klein
        assert (hot.code, hot.body) == (klein.code, klein.body)
        assert _headers(hot) == _headers(klein)
        return hot

    def _counts(self) -> Any:
        import collections

        metrics = self.world.metrics
        counts: collections.Counter[str] = collections.Counter()
        for family in (metrics.archive_requests, metrics.held):
            for sample in family.collect()[0].samples:
                if sample.name.endswith("_total"):
                    counts[f"{sample.name}{sample.labels}"] = int(sample.value)
        return counts


def _headers(answer: Answer) -> list[tuple[bytes, list[bytes]]]:
    return sorted(
        (name, values)
        for name, values in answer.headers.getAllRawHeaders()
        if name.lower() != b"date"
    )


@pytest.fixture
def both() -> Both:
    world = World(caches=CACHES, legacy_clients=("Python-urllib/2.*",))
    world.store(ASH.key)
    return Both(world)


def _finished(world: World, rev: str, outcome: Any = None) -> str:
    """A task of this daemon's, finished (SUCCESS, or FAILURE with
    ``outcome`` an exception); its id."""
    answer = world.get(f"/archiver/hgmo/projects/ash/{rev}")
    assert answer.code == 202
    call = world.runner.calls[-1]
    if isinstance(outcome, Exception):
        call.deferred.errback(outcome)
    else:
        call.deferred.callback(Outcome(13, "ab" * 32))
    return str(answer.header("Location")).rsplit("/", 1)[1]


# -- the same answers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (ARCHIVE, {}),
        (ARCHIVE + "?preferred_region=us-west-2&suffix=tar.gz", {}),
        (ARCHIVE, {"Prefer": "wait=30"}),
        (ARCHIVE, {"Accept": "*/*"}),
        (ARCHIVE, {"Accept": "application/json"}),
        (ARCHIVE, {"User-Agent": "Python-urllib/2.7"}),
        (ARCHIVE + "?subdir=a&subdir=b", {}),
        (ARCHIVE + "?suffix=tar.xz", {}),
        (f"/archiver/hgmo/projects/../etc/{REV}", {}),
        (f"/archiver/github/projects/ash/{REV}", {}),
        ("/archiver/status/a/b", {}),
        ("/archiver/status/", {}),
        ("/archiver/status/nothing-here", {}),
        ("/archiver/status/nothing-here", {"Prefer": "wait=5"}),
        (f"/archiver/hgmo/projects%2Fash/{REV}", {}),
        (f"/archiver/hgmo/projects//ash/{REV}", {}),
        (ARCHIVE + "/", {}),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_hot_path_answers_exactly_as_klein_does(
    both: Both, path: str, headers: dict[str, str], method: str
) -> None:
    both.same(path, method, **headers)
    both.same(path, method, **headers)  # again, from warm caches


def test_a_hit_and_a_poll_never_reach_klein(both: Both) -> None:
    world = both.world
    task_id = _finished(world, "0123456789ab")
    both.same(f"/archiver/status/{task_id}")  # signs its URLs (Klein)
    before = both.klein.rendered
    assert both.same(ARCHIVE).code == 302
    assert both.same(f"/archiver/status/{task_id}").json["result"]["state"] == (
        "SUCCESS"
    )
    assert both.same(f"/archiver/status/{task_id}", Prefer="wait=10").code == 200
    assert both.klein.rendered == before


@pytest.mark.parametrize(
    "accept",
    ["text/html", "text/html,application/xhtml+xml,*/*;q=0.8", "TEXT/HTML;q=0.1"],
)
def test_a_request_that_may_want_the_page_goes_to_klein(
    both: Both, accept: str
) -> None:
    before = both.klein.rendered
    both.same(ARCHIVE, Accept=accept)
    assert both.klein.rendered == before + 1


def test_polls_of_failed_tasks_answer_old_and_new_clients_as_klein_does(
    both: Both,
) -> None:
    from archiverd.errors import UpstreamRefused, UpstreamUnavailable

    world = both.world
    refused = UpstreamRefused("hg.mozilla.org", 404, "https://hg/x", "gone")
    permanent = _finished(world, "1123456789ab", refused)
    transient = _finished(world, "2123456789ab", UpstreamUnavailable("down"))
    old = {"User-Agent": "Python-urllib/2.7"}
    before = both.klein.rendered
    assert both.same(f"/archiver/status/{permanent}", **old).code == 200
    assert both.same(f"/archiver/status/{transient}", **old).code == 503
    assert both.same(f"/archiver/status/{permanent}").code == 200
    assert both.klein.rendered == before


def test_route_takes_only_paths_klein_splits_the_same_way() -> None:
    assert route(b"/archiver/hgmo/a/b/c") == ("archive", "hgmo", "a/b", "c")
    assert route(b"/archiver/status/x_y.tar.gz") == ("status", "x_y.tar.gz")
    for path in (
        b"/archiver/hgmo/a",
        b"/archiver/hgmo/a/b/",
        b"/archiver/hgmo//a/b",
        b"/archiver/hgmo/a%2Fb/c",
        b"/archiver/files/r/a/b",
        b"/archiver/status/a/b",
        "/archiver/hgmo/é/b".encode(),
        b"/archiver/",
        b"/__heartbeat__",
    ):
        assert route(path) is None, path


def test_only_accept_values_without_html_are_answered_here() -> None:
    assert wants_json(None)
    assert wants_json([b"*/*"]) and wants_json([b"application/json"])
    assert not wants_json([b"application/json", b"text/html"])
    assert not wants_json([b"text/HTML;q=0.1, application/json"])


# -- long polls held in the hot path ----------------------------------------------


def _running(world: World) -> str:
    answer = world.get(f"/archiver/hgmo/projects/ash/{'3' * 12}")
    assert answer.code == 202
    return str(answer.header("Location")).rsplit("/", 1)[1]


def test_held_polls_of_one_task_share_one_waiter_and_all_get_its_end() -> None:
    world = World(caches=CACHES)
    task_id = _running(world)
    [call] = world.runner.calls
    waiting = [
        world.start(f"/archiver/status/{task_id}", Prefer="wait=30")
        for _ in range(1000)
    ]
    has_no_result(waiting[0])
    assert len(call.task.waiters) == 1  # Klein held each with its own
    world.clock.advance(1)
    call.deferred.callback(Outcome(13, "ab" * 32))
    answers = [world.answer(d) for d in waiting]
    assert {a.code for a in answers} == {200}
    assert {a.json["result"]["state"] for a in answers} == {"SUCCESS"}
    assert {a.header("Preference-Applied") for a in answers} == {"wait=30"}
    assert call.task.waiters == []


def test_a_held_poll_is_answered_at_its_deadline_and_the_task_goes_on() -> None:
    world = World(caches=CACHES)
    task_id = _running(world)
    early = world.start(f"/archiver/status/{task_id}", Prefer="wait=5")
    late = world.start(f"/archiver/status/{task_id}", Prefer="wait=20")
    world.clock.advance(4.9)
    has_no_result(early)
    world.clock.advance(0.1)
    answer = world.answer(early)
    assert answer.code == 200 and answer.header("Preference-Applied") == "wait=5"
    assert answer.json["result"]["state"] in ("PENDING", "STARTED")
    has_no_result(late)
    world.clock.advance(15)
    assert world.answer(late).code == 200
    assert not world.runner.calls[0].cancelled
    assert world.clock.getDelayedCalls() == [] or all(
        c.getTime() > world.clock.seconds() + 3600
        for c in world.clock.getDelayedCalls()
    )


def test_an_old_clients_poll_is_held_for_tasks_hold() -> None:
    world = World(caches=CACHES, hold=5, legacy_clients=("Python-urllib/2.*",))
    world.api.hold = 0  # new requests are not held; old clients' polls are
    task_id = _running(world)
    world.api.hold = 5
    old = {"User-Agent": "Python-urllib/2.7"}
    d = world.start(f"/archiver/status/{task_id}", **old)
    world.clock.advance(4.9)
    has_no_result(d)
    world.clock.advance(0.1)
    assert world.answer(d).code == 200


def test_a_held_poll_whose_client_leaves_costs_nothing_further() -> None:
    world = World(caches=CACHES)
    task_id = _running(world)
    [call] = world.runner.calls
    root = world.api.resource()
    world.http = StubTreq(root)
    hot = root._inner
    assert isinstance(hot, HotPath)
    d = world.start(f"/archiver/status/{task_id}", Prefer="wait=30")
    has_no_result(d)
    assert len(hot._polls) == 1 and len(call.task.waiters) == 1
    d.cancel()  # the client hangs up
    d.addErrback(lambda failure: failure.trap(ResponseNeverReceived))
    world.http.flush()
    world.clock.advance(SWEEP_EVERY)
    assert len(hot._polls) == 0 and call.task.waiters == []
    assert world.clock.getDelayedCalls() == []  # no timer, no sweep left


def test_answered_polls_leave_no_request_behind_until_their_deadline() -> None:
    world = World(caches=CACHES)
    task_id = _running(world)
    other = world.get(f"/archiver/hgmo/projects/ash/{'4' * 12}")
    other_id = str(other.header("Location")).rsplit("/", 1)[1]
    root = world.api.resource()
    world.http = StubTreq(root)
    polls = root._inner._polls
    waiting = [
        world.start(f"/archiver/status/{task_id}", Prefer="wait=60") for _ in range(3)
    ]
    still = world.start(f"/archiver/status/{other_id}", Prefer="wait=90")
    world.runner.calls[0].deferred.callback(Outcome(13, "ab" * 32))
    assert {world.answer(d).code for d in waiting} == {200}
    assert len(polls) == 1
    assert [p.request is None for _, _, p in sorted(polls._deadlines)] == [
        True,
        True,
        True,
        False,
    ]
    world.clock.advance(90)
    assert world.answer(still).code == 200
    assert polls._deadlines == [] and world.clock.getDelayedCalls() == []
