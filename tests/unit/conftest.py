"""Fixtures shared by the unit tests, and hypothesis' settings."""

from __future__ import annotations

import pytest
from fakes import FakeRunner
from hypothesis import settings
from twisted.internet.task import Clock

# Property tests assert what archiverd does, not how fast an example runs:
# on a loaded machine hypothesis' per-example deadline (200 ms) only flakes.
settings.register_profile("archiverd", deadline=None)
settings.load_profile("archiverd")


@pytest.fixture
def clock() -> Clock:
    """A clock that does not start at 0, so that times are never falsy."""
    clock = Clock()
    clock.advance(1000)
    return clock


@pytest.fixture
def runner() -> FakeRunner:
    """A runner whose every run waits for the test to finish it."""
    return FakeRunner()
