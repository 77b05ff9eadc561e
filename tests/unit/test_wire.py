"""archiverd.wire: what client and server agree on, in one Twisted-free place,
and the client that imports it still free of Twisted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from archiverd import wire
from archiverd.client.cli import parser
from archiverd.keys import CONTENT_TYPES, ArchiveRequest, parse_key

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Every module archiverd-fetch loads, and what they import of archiverd.
CLIENT_MODULES = (
    "archiverd.client.cli",
    "archiverd.client.fetch",
    "archiverd.client.http",
    "archiverd.client.progress",
    "archiverd.client.extract",
    "archiverd.wire",
    "archiverd.util.backoff",
)
NO_TWISTED = (
    "import sys, {modules}\n"
    "bad = [m for m in sys.modules if m == 'twisted' or m.startswith('twisted.')]\n"
    "assert not bad, sorted(bad)\n"
)


def test_the_client_imports_no_twisted() -> None:
    """archiverd-fetch runs on CI workers with only the standard library."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = NO_TWISTED.format(modules=", ".join(CLIENT_MODULES))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_server_serves_exactly_the_suffixes_the_client_offers() -> None:
    assert tuple(CONTENT_TYPES) == wire.SUFFIXES
    suffix = next(a for a in parser()._actions if a.dest == "suffix")
    assert tuple(suffix.choices or ()) == wire.SUFFIXES
    assert suffix.default == wire.SUFFIXES[0]


@pytest.mark.parametrize("suffix", wire.SUFFIXES)
def test_every_wire_suffix_names_a_key_that_parses_back(suffix: str) -> None:
    request = ArchiveRequest.parse("hgmo", "projects/ash", "42bf8560b395", suffix)
    assert parse_key(request.key) == request


def test_the_states_are_spelled_as_their_names() -> None:
    assert wire.STATES == ("PENDING", "STARTED", "PROGRESS", "SUCCESS", "FAILURE")
    assert [getattr(wire, state) for state in wire.STATES] == list(wire.STATES)


def test_redirects_are_the_statuses_with_a_location_to_follow() -> None:
    assert wire.REDIRECTS == (301, 302, 303, 307, 308)
    assert all(300 < code < 400 for code in wire.REDIRECTS)
