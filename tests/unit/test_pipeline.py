"""archiverd.transfer.pipeline: cutting a body into parts, and one Transfer end to end
with an upstream and a storage that live in memory."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from fakes import (
    FakeBodyTransport,
    FakeResponse,
    FakeSource,
    RecordingStorage,
    failure_of,
    has_no_result,
    result_of,
    started,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from archiverd.config import SourceConfig
from archiverd.errors import (
    StorageError,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnavailable,
)
from archiverd.keys import ArchiveRequest
from archiverd.tasks.model import Outcome, State, Task
from archiverd.transfer.pipeline import Fetcher, PartCutter, Transfer

# -- PartCutter --------------------------------------------------------------


class Cutting:
    """A PartCutter on a fake transport; parts finish when the test says."""

    def __init__(self, part_size: int, window: int, *, instant: bool = False) -> None:
        self.parts: list[bytes] = []
        self.pending: list[Deferred[None]] = []
        self.progress: list[int] = []
        self.instant = instant
        self.transport = FakeBodyTransport()
        self.cutter = PartCutter(part_size, window, self._on_part, self.progress.append)
        self.cutter.makeConnection(self.transport)

    def _on_part(self, data: bytes) -> Deferred[None]:
        self.parts.append(bytes(data))  # the cutter fills it again once done
        if self.instant:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    @property
    def outstanding(self) -> int:
        return sum(1 for d in self.pending if not d.called)

    def finish_part(self, index: int = 0) -> None:
        unfinished = [d for d in self.pending if not d.called]
        unfinished[index].callback(None)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    part_size=st.integers(min_value=1, max_value=40),
)
def test_parts_are_exactly_part_size_and_rest_is_the_remainder(
    data: bytes, cuts: list[int], part_size: int
) -> None:
    """Whatever the chunking: full parts of part_size, in order, then the
    rest; sha256, byte count and progress cover every byte once."""
    cutting = Cutting(part_size, window=1000, instant=True)
    for chunk in chunked(data, cuts):
        cutting.cutter.dataReceived(chunk)
    cutting.cutter.connectionLost(Failure(ResponseDone()))

    assert all(len(part) == part_size for part in cutting.parts)
    assert len(cutting.parts) == len(data) // part_size
    assert b"".join(cutting.parts) + cutting.cutter.rest() == data
    assert len(cutting.cutter.rest()) == len(data) % part_size
    assert cutting.cutter.received == len(data)
    assert cutting.cutter.received == len(data)
    assert cutting.progress == sorted(cutting.progress)
    assert cutting.progress[-1:] == ([len(data)] if data else [])
    assert result_of(cutting.cutter.finished) is None


def test_transport_pauses_at_window_unfinished_parts_and_resumes_after_one() -> None:
    cutting = Cutting(part_size=4, window=2)
    cutting.cutter.dataReceived(b"aaaa")
    assert cutting.transport.calls == []
    cutting.cutter.dataReceived(b"bb")
    cutting.cutter.dataReceived(b"bb")
    assert cutting.transport.calls == ["pause"]
    cutting.finish_part(1)
    assert cutting.transport.calls == ["pause", "resume"]
    cutting.finish_part(0)
    assert cutting.transport.calls == ["pause", "resume"]


@settings(max_examples=200)
@given(
    window=st.integers(min_value=1, max_value=4),
    part_size=st.integers(min_value=1, max_value=8),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=8), max_size=40),
    seed=st.randoms(use_true_random=False),
)
def test_never_more_than_window_plus_one_parts_outstanding(
    window: int, part_size: int, chunk_sizes: list[int], seed: random.Random
) -> None:
    """Paused exactly while window parts are unfinished. A transport may
    deliver one chunk already on its way after pauseProducing (chunks are
    at most a part): still never more than window+1 parts in memory."""
    chunks = [bytes([i % 256]) * min(n, part_size) for i, n in enumerate(chunk_sizes)]
    cutting = Cutting(part_size, window)
    transport = cutting.transport
    since_pause = 0
    most = 0
    while chunks or cutting.outstanding:
        may_send = chunks and (not transport.paused or since_pause == 0)
        if may_send and (not cutting.outstanding or seed.random() < 0.6):
            was_paused = transport.paused
            cutting.cutter.dataReceived(chunks.pop(0))
            since_pause = since_pause + 1 if was_paused else 0
        else:
            cutting.finish_part(seed.randrange(cutting.outstanding))
            if not transport.paused:
                since_pause = 0
        most = max(most, cutting.outstanding)
        assert transport.paused == (cutting.outstanding >= window)
    assert most <= window + 1
    assert "stop" not in transport.calls


def test_stop_drops_the_connection_once_and_cuts_no_more_parts() -> None:
    cutting = Cutting(part_size=4, window=10, instant=True)
    cutting.cutter.dataReceived(b"aaaab")
    cutting.cutter.stop()
    cutting.cutter.stop()
    cutting.cutter.dataReceived(b"bbbcccc")
    assert cutting.transport.calls == ["stop"]
    assert cutting.parts == [b"aaaa"]
    assert cutting.cutter.rest() == b""


def test_stop_after_the_body_ended_leaves_the_transport_alone() -> None:
    cutting = Cutting(part_size=4, window=10, instant=True)
    cutting.cutter.connectionLost(Failure(ResponseDone()))
    cutting.cutter.stop()
    assert cutting.transport.calls == []


def test_a_part_finishing_after_stop_does_not_resume_the_transport() -> None:
    cutting = Cutting(part_size=1, window=1)
    cutting.cutter.dataReceived(b"a")
    cutting.cutter.stop()
    cutting.finish_part()
    assert cutting.transport.calls == ["pause", "stop"]


# -- Transfer ----------------------------------------------------------------

PART = 4
REQUEST = ArchiveRequest.parse("hgmo", "projects/ash", "42bf8560b395")
KEY = REQUEST.key
URL = "https://hg.example/projects/ash/archive/42bf8560b395.tar.gz"


def with_headers(response: Any, **headers: str) -> Any:
    """A fake response with the headers a real one always has."""
    if not hasattr(response, "headers"):
        response.headers = Headers()
    for name, value in headers.items():
        response.headers.setRawHeaders(name.replace("_", "-"), [value])
    return response


def transfer(
    response: FakeResponse | Deferred[FakeResponse],
    storage: RecordingStorage,
    window: int = 2,
    progress: list[int] | None = None,
) -> tuple[Transfer, Deferred[Outcome]]:
    if isinstance(response, Deferred):
        response.addCallback(with_headers)
    else:
        with_headers(response)
    t = Transfer(
        FakeSource(response),  # type: ignore[arg-type]
        storage,  # type: ignore[arg-type]
        REQUEST,
        storage.regions,
        part_size=PART,
        window=window,
        on_progress=(progress.append if progress is not None else lambda n: None),
    )
    return t, started(t.run())


def outcome(body: bytes) -> Outcome:
    return Outcome(len(body), hashlib.sha256(body).hexdigest())


def states(storage: RecordingStorage) -> dict[str, str]:
    return {upload_id: u.state for upload_id, u in storage.uploads.items()}


@pytest.mark.parametrize("body", [b"a", b"abc"])
def test_a_body_smaller_than_a_part_is_one_put_per_region(body: bytes) -> None:
    storage = RecordingStorage()
    _, d = transfer(FakeResponse(200, body), storage)
    assert result_of(d) == outcome(body)
    assert storage.calls == [("put", "east", len(body)), ("put", "west", len(body))]
    assert storage.objects == {("east", KEY): body, ("west", KEY): body}


def test_a_large_body_is_one_multipart_upload_in_every_region() -> None:
    """Parts go to every region; nothing is completed until every region
    has every part; each completion lists the parts in order."""
    storage = RecordingStorage()
    storage.hold_parts = True
    response = FakeResponse()
    progress: list[int] = []
    _, d = transfer(response, storage, window=10, progress=progress)
    body = b"0123456789"
    response.write(body)
    response.finish()
    assert sorted(storage.methods()) == sorted(
        ["start_upload"] * 2 + ["upload_part"] * 6
    )
    # Let the parts finish last-first, region by region.
    for held in sorted(storage.held, key=lambda h: (-h.number, h.region)):
        assert "complete_upload" not in storage.methods()
        has_no_result(d)
        storage.release(held)
    assert result_of(d) == outcome(body)
    completions = [c for c in storage.calls if c[0] == "complete_upload"]
    expected = [(1, "etag-1"), (2, "etag-2"), (3, "etag-3")]
    assert completions == [
        ("complete_upload", "east", expected),
        ("complete_upload", "west", expected),
    ]
    assert storage.objects == {("east", KEY): body, ("west", KEY): body}
    assert "put" not in storage.methods()
    assert progress[-1] == len(body)


def test_parts_carry_their_number_and_offset() -> None:
    storage = RecordingStorage(regions=("east",))
    response = FakeResponse()
    _, d = transfer(response, storage)
    response.write(b"0123456789")
    response.finish()
    result_of(d)
    parts = [c[1:] for c in storage.calls if c[0] == "upload_part"]
    assert parts == [("east", 1, 0, 4), ("east", 2, 4, 4), ("east", 3, 8, 2)]


def test_upstream_is_paused_while_window_parts_are_stored() -> None:
    storage = RecordingStorage()
    storage.hold_parts = True
    response = FakeResponse()
    _, d = transfer(response, storage, window=2)
    response.write(b"aaaa")
    assert response.transport.calls == []
    response.write(b"bbbb")
    assert response.transport.calls == ["pause"]
    # Part 1 is only done once it is stored in both regions.
    storage.release(storage.held[0])
    assert response.transport.calls == ["pause"]
    storage.release(storage.held[1])
    assert response.transport.calls == ["pause", "resume"]
    response.finish()
    storage.release_all()
    assert result_of(d) == outcome(b"aaaabbbb")


def test_a_failed_part_in_one_region_aborts_every_upload_and_completes_none() -> None:
    storage = RecordingStorage()
    storage.fail_on("upload_part", "west", 2)
    response = FakeResponse()
    _, d = transfer(response, storage)
    with capturedLogs() as events:
        response.write(b"aaaabbbbcc")
        # The failure stops the download; the connection then goes away.
        assert "stop" in response.transport.calls
        response.break_off()
    failure = failure_of(d, StorageError)
    assert str(failure.value) == "storage in west failed: OSError: disk on fire"
    assert sorted(states(storage).values()) == ["aborted", "aborted"]
    assert "complete_upload" not in storage.methods()
    assert storage.objects == {}
    assert any("storing" in e["log_format"] for e in events)


def test_a_failed_put_in_one_region_is_a_storage_error() -> None:
    storage = RecordingStorage()
    storage.fail_on("put", "east", error=StorageError("east is full"))
    _, d = transfer(FakeResponse(200, b"ab"), storage)
    assert str(failure_of(d, StorageError).value) == "east is full"


def test_a_failed_completion_aborts_only_the_uploads_not_completed() -> None:
    storage = RecordingStorage()
    storage.fail_on("complete_upload", "west")
    response = FakeResponse()
    _, d = transfer(response, storage)
    response.write(b"aaaabbbb")
    response.finish()
    failure_of(d, StorageError)
    by_region = {u.region: u.state for u in storage.uploads.values()}
    assert by_region == {"east": "completed", "west": "aborted"}


def test_a_body_that_breaks_off_is_unavailable_and_aborts_every_upload() -> None:
    storage = RecordingStorage()
    response = FakeResponse()
    _, d = transfer(response, storage)
    response.write(b"aaaabb")
    response.break_off()
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        f"hg.example broke off after 6 bytes of {URL}: "
        "ConnectionLost: Connection to the other side was lost in a non-clean "
        "fashion: peer reset."
    )
    assert sorted(states(storage).values()) == ["aborted", "aborted"]
    assert storage.objects == {}


def test_a_body_that_breaks_off_before_any_part_leaves_no_upload() -> None:
    storage = RecordingStorage()
    response = FakeResponse()
    _, d = transfer(response, storage)
    response.write(b"ab")
    response.break_off()
    failure_of(d, UpstreamUnavailable)
    assert storage.calls == []


def test_cancelling_the_run_aborts_every_upload() -> None:
    storage = RecordingStorage()
    response = FakeResponse()
    _, d = transfer(response, storage)
    response.write(b"aaaabb")
    d.cancel()
    failure_of(d, CancelledError)
    assert "stop" in response.transport.calls
    assert sorted(states(storage).values()) == ["aborted", "aborted"]
    assert "complete_upload" not in storage.methods()


def test_cancelling_waits_for_parts_in_flight_before_aborting() -> None:
    """A cancel while the body is still arriving: the aborts wait for the
    part being stored."""
    storage = RecordingStorage()
    storage.hold_parts = True
    response = FakeResponse()
    _, d = transfer(response, storage, window=4)
    response.write(b"aaaab")
    d.cancel()
    assert "abort_upload" not in storage.methods()
    storage.release_all()
    failure_of(d, CancelledError)
    for upload in storage.uploads.values():
        assert upload.state == "aborted"
        assert upload.running_at_abort == set()


def _cancel_after_the_body_ended() -> tuple[RecordingStorage, Deferred[Outcome]]:
    """A transfer cancelled (stopService) while its last parts are stored."""
    storage = RecordingStorage()
    storage.hold_parts = True
    response = FakeResponse()
    _, d = transfer(response, storage, window=4)
    response.write(b"aaaabbbb")
    response.finish()
    with capturedLogs():
        d.cancel()
        storage.release_all()
    return storage, d


def test_cancelling_after_the_body_ended_waits_for_parts_before_aborting() -> None:
    """Every abort comes after the part uploads of its upload have returned
    (S3 may otherwise keep a part that lands after the abort)."""
    storage, d = _cancel_after_the_body_ended()
    failure_of(d)
    for upload in storage.uploads.values():
        assert upload.state == "aborted"
        assert upload.running_at_abort == set()


def test_cancelling_after_the_body_ended_is_a_cancellation_not_a_failure() -> None:
    _, d = _cancel_after_the_body_ended()
    failure_of(d, CancelledError)


def test_cancelling_while_waiting_for_upstream_touches_no_storage() -> None:
    storage = RecordingStorage()
    waiting: Deferred[Any] = Deferred()
    _, d = transfer(waiting, storage)
    d.cancel()
    failure_of(d, CancelledError)
    assert storage.calls == []


@pytest.mark.parametrize("code", [403, 404, 410])
def test_an_upstream_refusal_is_reported_and_stores_nothing(code: int) -> None:
    storage = RecordingStorage()
    _, d = transfer(FakeResponse(code, b"nope"), storage)
    failure = failure_of(d, UpstreamRefused)
    assert failure.value.code == code
    assert storage.calls == []


def test_an_upstream_error_status_is_unavailable_and_its_body_is_dropped() -> None:
    storage = RecordingStorage()
    response = FakeResponse(503)
    _, d = transfer(response, storage)
    assert response.transport.calls == ["stop"]
    response.finish()
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == f"hg.example answered 503 for {URL}"
    assert storage.calls == []


# -- limits: size, idleness, total time ---------------------------------------


def limited(
    storage: RecordingStorage, clock: Clock, window: int = 2, **limits: Any
) -> tuple[FakeResponse, Deferred[Outcome]]:
    response = with_headers(FakeResponse())
    config = SourceConfig(
        "hgmo", "https://hg.example/{repo}/archive/{rev}.{suffix}", **limits
    )
    t = Transfer(
        FakeSource(response, config),  # type: ignore[arg-type]
        storage,  # type: ignore[arg-type]
        REQUEST,
        storage.regions,
        part_size=PART,
        window=window,
        clock=clock,
    )
    return response, started(t.run())


def test_a_body_longer_than_max_archive_bytes_is_refused_and_aborted() -> None:
    storage = RecordingStorage()
    response, d = limited(storage, Clock(), max_archive_bytes=10)
    response.write(b"aaaabbbb")
    response.write(b"cc")
    assert response.transport.calls == []
    response.write(b"d")
    assert response.transport.calls == ["stop"]
    response.break_off()
    failure = failure_of(d, UpstreamError)
    assert str(failure.value) == (
        f"archive exceeds 10 bytes (max_archive_bytes): {URL}"
    )
    assert sorted(states(storage).values()) == ["aborted", "aborted"]


def test_no_byte_for_idle_timeout_is_unavailable_and_aborted() -> None:
    storage = RecordingStorage()
    clock = Clock()
    response, d = limited(storage, clock, idle_timeout=30.0)
    response.write(b"aaaab")
    clock.advance(29)
    response.write(b"b")  # a byte restarts the wait
    clock.advance(29)
    assert response.transport.calls == []
    clock.advance(1)
    assert response.transport.calls == ["stop"]
    response.break_off()
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        f"no bytes from hg.example for 30s (idle_timeout) after 6 bytes of {URL}"
    )
    assert sorted(states(storage).values()) == ["aborted", "aborted"]
    assert clock.getDelayedCalls() == []


def test_time_paused_while_storage_catches_up_is_not_idleness() -> None:
    storage = RecordingStorage()
    storage.hold_parts = True
    clock = Clock()
    response, d = limited(storage, clock, window=1, idle_timeout=30.0)
    response.write(b"aaaa")
    assert response.transport.calls == ["pause"]
    clock.advance(300)
    storage.release_all()
    assert response.transport.calls == ["pause", "resume"]
    clock.advance(29)
    response.write(b"bb")
    response.finish()
    storage.release_all()
    assert result_of(d) == outcome(b"aaaabb")
    assert clock.getDelayedCalls() == []


def test_a_fetch_longer_than_total_timeout_is_unavailable_and_aborted() -> None:
    storage = RecordingStorage()
    clock = Clock()
    response = with_headers(FakeResponse())
    config = SourceConfig("hgmo", total_timeout=600.0, idle_timeout=3600.0)
    fetcher = Fetcher(
        {"hgmo": FakeSource(response, config)},  # type: ignore[dict-item]
        storage,  # type: ignore[arg-type]
        part_size=PART,
        window=2,
        clock=clock,
    )
    task = Task(REQUEST, URL, storage.regions, clock.seconds())
    progress: list[int] = []
    d = started(fetcher(task, progress.append))
    for _ in range(5):
        response.write(b"aaaa")
        clock.advance(100)
    assert progress == [4, 8, 12, 16, 20]
    clock.advance(100)
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        "fetching https://hg.example/projects/ash/archive/42bf8560b395.tar.gz "
        "took longer than 600s (total_timeout)"
    )
    assert "stop" in response.transport.calls
    assert sorted(states(storage).values()) == ["aborted", "aborted"]
    assert clock.getDelayedCalls() == []


def test_while_upstream_is_retried_the_status_says_so_and_then_stops() -> None:
    storage = RecordingStorage()
    clock = Clock()
    answer: Deferred[FakeResponse] = Deferred()
    source = FakeSource(answer)
    source.retries = [
        "Retrying: cannot reach hg.example (DNS lookup failed); attempt 2 of 4, "
        "next in 5 s"
    ]
    fetcher = Fetcher(
        {"hgmo": source},  # type: ignore[dict-item]
        storage,  # type: ignore[arg-type]
        part_size=PART,
        window=2,
        clock=clock,
    )
    task = Task(REQUEST, URL, storage.regions, clock.seconds(), "hg.example")
    task.state = State.STARTED
    d = started(fetcher(task, lambda received: None))
    assert task.status == source.retries[0]
    response = with_headers(FakeResponse())
    answer.callback(response)
    assert task.status == "Downloading archive from hg.example"
    response.write(b"abc")
    response.finish()
    storage.release_all()
    assert result_of(d) == outcome(b"abc")


def test_a_body_smaller_than_a_part_never_allocates_a_part() -> None:
    """Many small archives at once must not each cost a whole part of memory."""
    import tracemalloc

    parts: list[bytes] = []
    tracemalloc.start()
    try:
        cutter = PartCutter(
            64 * 1024 * 1024,
            4,
            lambda p: parts.append(p) or succeed(None),
            lambda received: None,
        )
        cutter.makeConnection(FakeBodyTransport())
        for _ in range(16):
            cutter.dataReceived(b"x" * 1024)
        rest = cutter.rest()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rest == b"x" * 16 * 1024 and parts == []
    assert peak < 1024 * 1024, peak


# -- a rev asked for by name ---------------------------------------------------

NAMED = ArchiveRequest.parse("hgmo", "projects/ash", "default").with_rev("ab" * 20)


def _named(response: FakeResponse, storage: RecordingStorage) -> tuple[Any, Any]:
    with_headers(response)
    source = FakeSource(response)
    t = Transfer(
        source,  # type: ignore[arg-type]
        storage,  # type: ignore[arg-type]
        NAMED,
        storage.regions,
        part_size=PART,
        window=2,
        on_progress=lambda n: None,
    )
    return source, t


def test_a_name_is_fetched_by_name_and_made_visible_once_confirmed() -> None:
    storage = RecordingStorage()
    response = FakeResponse()
    source, t = _named(response, storage)
    source.confirmation = Deferred()
    d = started(t.run())
    response.write(b"0123456789")
    response.finish()
    assert source.requested == [
        "https://hg.example/projects/ash/archive/default.tar.gz"
    ]
    assert source.confirmed == [NAMED]
    has_no_result(d)
    assert "complete_upload" not in storage.methods()
    source.confirmation.callback(None)
    assert result_of(d).size == 10
    assert storage.objects == {
        ("east", NAMED.key): b"0123456789",
        ("west", NAMED.key): b"0123456789",
    }


def test_a_name_that_moved_during_the_fetch_stores_nothing() -> None:
    storage = RecordingStorage()
    response = FakeResponse()
    source, t = _named(response, storage)
    source.confirmation = UpstreamUnavailable("default moved; ask again")
    d = started(t.run())
    response.write(b"0123456789")
    response.finish()
    failure_of(d, UpstreamUnavailable)
    assert storage.objects == {}
    assert "complete_upload" not in storage.methods()
    assert set(states(storage).values()) <= {"aborted"}


def test_a_changeset_id_is_not_confirmed() -> None:
    storage = RecordingStorage()
    response = FakeResponse(200, b"abc")
    with_headers(response)
    source = FakeSource(response)
    t = Transfer(
        source,  # type: ignore[arg-type]
        storage,  # type: ignore[arg-type]
        REQUEST,
        storage.regions,
        part_size=PART,
        window=2,
        on_progress=lambda n: None,
    )
    assert result_of(started(t.run())).size == 3
    assert source.confirmed == []
