"""The centre link's reconnect back-off: it spreads lanes cut off together, and never
waits longer than reconnect_max_s, which bounds the first delivery after the network returns."""

from __future__ import annotations

import random

import pytest

from laned.uplink.link import JITTER, Backoff


def test_delays_double_from_the_minimum_and_never_pass_the_maximum() -> None:
    backoff = Backoff(1.0, 30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(40)]
    assert 1.0 * (1 - JITTER) <= delays[0] <= 1.0 * (1 + JITTER)
    assert 2.0 * (1 - JITTER) <= delays[1] <= 2.0 * (1 + JITTER)
    assert max(delays) <= 30.0  # the jitter never takes a delay past the cap
    assert min(delays[10:]) >= 30.0 * (1 - JITTER)  # at the cap, still spread downwards
    assert len({round(d, 6) for d in delays[10:]}) > 1  # lanes cut off together do not return together


def test_a_reconnect_starts_from_the_minimum_again() -> None:
    backoff = Backoff(1.0, 30.0, rng=random.Random(1))
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 1.0 * (1 + JITTER)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (5.0, 1.0), (-1.0, 2.0)])
def test_a_nonsense_range_is_refused(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="min_s <= max_s"):
        Backoff(low, high)
