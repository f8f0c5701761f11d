"""Reconnect backoff of the collector stream: exponential, capped, jittered."""

from __future__ import annotations

import random

from probenet.agent.stream import backoff_delay


def test_backoff_grows_exponentially_then_caps():
    highest = [backoff_delay(n, 0.2, 10.0, rng=lambda: 1.0) for n in range(10)]
    assert highest[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4]
    assert highest[6:] == [10.0] * 4


def test_backoff_is_jittered_between_half_and_the_cap():
    rng = random.Random(3)
    delays = [backoff_delay(4, 0.2, 10.0, rng=rng.random) for _ in range(200)]
    assert all(1.6 <= d <= 3.2 for d in delays)
    assert len({round(d, 4) for d in delays}) > 150  # clients do not reconnect in lockstep


def test_backoff_survives_huge_attempt_counts():
    assert backoff_delay(10_000, 0.2, 10.0, rng=lambda: 0.0) == 5.0
