"""Fixtures shared by the unit tests of the task service."""

from __future__ import annotations

import pytest
from fakes import FakeRunner
from twisted.internet.task import Clock


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
