"""archiverd.util.backoff: the one retry delay policy, for archiverd-fetch's
polls and retries and for the server's retries of upstream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archiverd.util.backoff import Backoff

firsts = st.floats(min_value=0.0, max_value=600.0)
#: As random.random() gives them: multiples of 2**-53 in [0, 1).
jitters = st.integers(0, 2**53 - 1).map(lambda k: k / 2**53)
steps = st.integers(min_value=1, max_value=30)


def test_backoff_doubles_to_its_cap_and_retry_after_wins() -> None:
    backoff = Backoff(0.5, 10.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff.next(3.0) == 3.0
    backoff.reset()
    assert backoff.next() == 0.5


@given(first=firsts, factor=st.floats(1.0, 1e6), n=steps)
def test_delays_double_until_the_cap_then_stay_there(
    first: float, factor: float, n: int
) -> None:
    cap = first * factor
    backoff = Backoff(first, cap=cap)
    assert [backoff.next() for _ in range(n)] == [
        min(first * 2**i, cap) for i in range(n)
    ]


@given(first=firsts, n=steps)
def test_without_a_cap_delays_double_for_ever(first: float, n: int) -> None:
    backoff = Backoff(first)
    assert [backoff.next() for _ in range(n)] == [first * 2**i for i in range(n)]


@given(first=firsts, drawn=st.lists(jitters, min_size=1, max_size=20))
def test_jitter_scales_each_delay_by_half_to_one_and_a_half(
    first: float, drawn: list[float]
) -> None:
    """Each delay is the plain one times 0.5 + jitter(), jitter() in [0, 1):
    a factor in [0.5, 1.5), though a float sum or product may round up onto
    the top (0.5 + (1 - 2**-53) is 1.5), hence the closed bound."""
    source = iter(drawn)
    backoff = Backoff(first, jitter=lambda: next(source))
    for i, j in enumerate(drawn):
        plain = first * 2**i
        delay = backoff.next()
        assert delay == plain * (0.5 + j)
        assert 0.5 * plain <= delay <= 1.5 * plain


@given(first=st.floats(0.0, 60.0), drawn=st.lists(jitters, max_size=20))
def test_the_servers_upstream_delays_are_what_they_were(
    first: float, drawn: list[float]
) -> None:
    """Source.get waited retry_backoff * 2**attempt * (0.5 + jitter()): the
    policy gives exactly those floats, drawing jitter once per delay."""
    calls: list[float] = []

    def jitter() -> float:
        calls.append(drawn[len(calls)])
        return calls[-1]

    backoff = Backoff(first, jitter=jitter)
    for attempt, j in enumerate(drawn):
        assert backoff.next() == first * 2**attempt * (0.5 + j)
    assert calls == drawn


@given(
    first=firsts,
    before=st.integers(0, 10),
    asked=st.floats(0.0, 300.0),
    jitter=jitters,
)
def test_asked_wins_as_it_is_and_the_sequence_moves_on(
    first: float, before: int, asked: float, jitter: float
) -> None:
    """A server's Retry-After is waited exactly, never jittered or capped;
    the next plain delay is the one after it, not ``first`` again."""
    backoff = Backoff(first, cap=first * 4, jitter=lambda: jitter)
    for _ in range(before):
        backoff.next()
    assert backoff.next(asked) == asked
    assert backoff.next() == min(first * 2 ** (before + 1), first * 4) * (0.5 + jitter)


@given(first=firsts, before=st.integers(0, 40), capped=st.booleans())
def test_reset_starts_again_from_first(first: float, before: int, capped: bool) -> None:
    backoff = Backoff(first, cap=first * 8 if capped else None)
    for _ in range(before):
        backoff.next()
    backoff.reset()
    assert backoff.next() == first
    assert backoff.next() == first * 2


@pytest.mark.parametrize(("first", "cap"), [(-1.0, None), (2.0, 1.0)])
def test_a_negative_first_or_a_cap_below_it_is_refused(
    first: float, cap: float | None
) -> None:
    with pytest.raises(ValueError, match="first <= cap"):
        Backoff(first, cap=cap)
