"""A body is stored only whole and exactly as upstream sent it, by every
storage call wrapped alike (issue 10, items 1, 2, 3 and 14): one Transfer
with an upstream and a storage that live in memory."""

from __future__ import annotations

import gzip
import random

import pytest
from fakes import (
    FakeResponse,
    FakeSource,
    RecordingStorage,
    failure_of,
    result_of,
    started,
)
from test_pipeline import (
    KEY,
    PART,
    REQUEST,
    URL,
    outcome,
    states,
    transfer,
    with_headers,
)
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from archiverd.config import SourceConfig
from archiverd.errors import StorageError, UpstreamError, UpstreamUnavailable
from archiverd.ops.metrics import Metrics
from archiverd.transfer.pipeline import Transfer


def coded(response: FakeResponse, coding: str) -> FakeResponse:
    return with_headers(response, content_encoding=coding)  # type: ignore[no-any-return]


def targz(nbytes: int = 3000) -> bytes:
    """A real (tiny) .tar.gz: random bytes, so it is about ``nbytes`` long."""
    return gzip.compress(random.Random(nbytes).randbytes(nbytes), mtime=0)


def test_a_whole_archive_ended_by_closing_the_connection_is_stored() -> None:
    """Without Content-Length or chunks (HTTP/1.0), the end of the connection
    is the end of the body (PotentialDataLoss): stored once its format
    proves it whole."""
    storage = RecordingStorage(regions=("east",))
    response = FakeResponse()
    _, d = transfer(response, storage)
    body = targz()
    response.write(body)
    response.protocol.connectionLost(Failure(PotentialDataLoss()))
    assert result_of(d) == outcome(body)


@pytest.mark.parametrize("cut", [1, 10, 1500, -9, -1])
def test_a_body_closed_early_without_proof_of_length_stores_nothing(cut: int) -> None:
    """The connection closing is all a close-delimited body has to say it
    ended: a tar.gz cut anywhere (a reset mid-transfer looks the same) is
    unavailable, every upload aborted, nothing stored."""
    storage = RecordingStorage()
    response = FakeResponse()
    _, d = transfer(response, storage)
    body = targz()
    response.write(body[:cut])
    response.protocol.connectionLost(Failure(PotentialDataLoss()))
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value).startswith(
        f"hg.example closed the connection after {len(body[:cut])} bytes of {URL} "
        "with no Content-Length or last chunk, and the body is not a whole tar.gz: "
    )
    assert storage.objects == {}
    assert set(states(storage).values()) <= {"aborted"}
    assert "complete_upload" not in storage.methods()


@pytest.mark.parametrize("end", [ResponseDone, PotentialDataLoss])
def test_an_empty_body_is_no_archive_and_stores_nothing(end: type) -> None:
    """``Content-Length: 0``, or a connection closed at once."""
    storage = RecordingStorage()
    response = FakeResponse()
    _, d = transfer(response, storage)
    response.protocol.connectionLost(Failure(end()))
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        f"hg.example answered 200 with an empty body for {URL}: no archive"
    )
    assert storage.calls == []


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "identity"])
def test_a_targz_labelled_with_its_own_coding_is_stored_as_sent(coding: str) -> None:
    """No coding is undone: the stored bytes are the bytes upstream sent."""
    storage = RecordingStorage()
    body = targz()
    _, d = transfer(coded(FakeResponse(200, body), coding), storage)
    assert result_of(d) == outcome(body)
    assert storage.objects[("east", KEY)] == body


@pytest.mark.parametrize("coding", ["br", "gzip, gzip", "deflate", "bzip2"])
def test_a_coding_that_is_not_the_archives_own_stores_nothing(coding: str) -> None:
    storage = RecordingStorage()
    _, d = transfer(coded(FakeResponse(200, targz()), coding), storage)
    failure = failure_of(d, UpstreamUnavailable)
    assert str(failure.value) == (
        f"hg.example sent {URL} with Content-Encoding: {coding}, which archiverd "
        "neither asks for nor undoes: those bytes are not the tar.gz"
    )
    assert storage.calls == []


def test_a_failed_start_of_an_upload_is_a_storage_error_named_and_counted() -> None:
    """Like every other storage call (it was an "internal error", uncounted)."""
    storage = RecordingStorage()
    storage.fail_on("start_upload", "west")
    metrics = Metrics()
    response = FakeResponse()
    t = Transfer(
        FakeSource(with_headers(response)),  # type: ignore[arg-type]
        storage,  # type: ignore[arg-type]
        REQUEST,
        storage.regions,
        part_size=PART,
        window=2,
        metrics=metrics,
    )
    d = started(t.run())
    with capturedLogs():
        response.write(b"aaaabbbb")
        response.break_off()
    failure = failure_of(d, StorageError)
    assert str(failure.value) == "storage in west failed: OSError: disk on fire"
    assert metrics.storage_errors.labels("west")._value.get() == 1
    assert [u.state for u in storage.uploads.values()] == ["aborted"]


class FailingAborts(RecordingStorage):
    """Storage that is down by the time uploads are aborted."""

    async def abort_upload(self, region: str, key: str, upload_id: str) -> None:
        await super().abort_upload(region, key, upload_id)
        raise OSError("storage is down")


def test_a_failed_abort_is_counted_and_logged_without_a_traceback() -> None:
    storage = FailingAborts()
    metrics = Metrics()
    response = FakeResponse()
    t = Transfer(
        FakeSource(with_headers(response)),  # type: ignore[arg-type]
        storage,  # type: ignore[arg-type]
        REQUEST,
        storage.regions,
        part_size=PART,
        window=2,
        metrics=metrics,
    )
    d = started(t.run())
    with capturedLogs() as events:
        response.write(b"aaaabb")
        response.break_off()
    failure_of(d, UpstreamUnavailable)
    assert metrics.storage_errors.labels("east")._value.get() == 1
    assert metrics.storage_errors.labels("west")._value.get() == 1
    assert not [e for e in events if e.get("log_failure") is not None]
    assert any("could not abort" in e["log_format"] for e in events)


def test_a_refused_body_is_dropped_unread() -> None:
    """Its connection is not held open: the body is dropped at once."""
    storage = RecordingStorage()
    response = coded(FakeResponse(200), "br")
    _, d = transfer(response, storage)
    assert response.transport.calls == ["stop"]
    response.finish()
    failure_of(d, UpstreamUnavailable)


def test_a_content_length_over_max_archive_bytes_fails_before_any_byte() -> None:
    storage = RecordingStorage()
    response = with_headers(FakeResponse())
    response.length = 11
    config = SourceConfig("hgmo", max_archive_bytes=10)
    t = Transfer(
        FakeSource(response, config),  # type: ignore[arg-type]
        storage,  # type: ignore[arg-type]
        REQUEST,
        storage.regions,
        part_size=PART,
        window=2,
    )
    d = started(t.run())
    assert response.transport.calls == ["stop"]
    response.finish()
    failure = failure_of(d, UpstreamError)
    assert str(failure.value) == f"archive exceeds 10 bytes (max_archive_bytes): {URL}"
    assert storage.calls == []
