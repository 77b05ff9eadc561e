"""One checksum per part: a Transfer has each part's checksum computed once
and hands it to every region's upload_part (botocore computed a CRC32 per
region before: 3 regions cost three)."""

from __future__ import annotations

from fakes import FakeResponse, RecordingStorage, result_of
from test_pipeline import PART, outcome, transfer


def test_each_part_is_checksummed_once_and_sent_to_every_region() -> None:
    storage = RecordingStorage(regions=("east", "west", "north"))
    response = FakeResponse()
    _, d = transfer(response, storage, window=10)
    body = b"x" * (3 * PART + 1)  # three full parts and a rest
    response.write(body)
    response.finish()
    assert result_of(d) == outcome(body)
    assert storage.checksummed == [PART, PART, PART, 1]
    by_part: dict[int, set[str | None]] = {}
    for _region, number, checksum in storage.checksums:
        by_part.setdefault(number, set()).add(checksum)
    assert by_part == {1: {"crc-1"}, 2: {"crc-2"}, 3: {"crc-3"}, 4: {"crc-4"}}
    assert len(storage.checksums) == 4 * 3  # every part in every region


def test_an_archive_smaller_than_a_part_needs_no_part_checksum() -> None:
    storage = RecordingStorage(regions=("east", "west", "north"))
    _, d = transfer(FakeResponse(200, b"abc"), storage)
    assert result_of(d) == outcome(b"abc")
    assert storage.checksummed == []
