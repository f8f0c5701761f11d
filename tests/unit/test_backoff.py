"""probenet.backoff: the one capped, jittered exponential backoff (agent stream, MQTT publisher)."""

from __future__ import annotations

import math
import random

import pytest

from probenet.backoff import Backoff


def test_delays_double_from_the_initial_then_cap():
    highest = Backoff(0.2, 10.0, rand=lambda: 1.0)
    assert [highest.delay(n) for n in range(1, 11)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4,
                                                          10.0, 10.0, 10.0, 10.0]
    mqtt = Backoff(0.5, 30.0, rand=lambda: 1.0)
    assert [mqtt.delay(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0,
                                                     30.0, 30.0, 30.0]


def test_the_lowest_delay_is_half_the_ceiling():
    lowest = Backoff(0.5, 30.0, rand=lambda: 0.0)
    highest = Backoff(0.5, 30.0, rand=lambda: 1.0)
    assert [lowest.delay(n) for n in range(1, 10)] == [highest.delay(n) / 2 for n in range(1, 10)]


def test_delays_are_jittered_between_half_and_the_ceiling():
    rng = random.Random(3)
    backoff = Backoff(0.2, 10.0, rand=rng.random)
    delays = [backoff.delay(5) for _ in range(200)]
    assert all(1.6 <= d <= 3.2 for d in delays)
    assert len({round(d, 4) for d in delays}) > 150  # clients do not reconnect in lockstep
    assert min(delays) < 1.7
    assert max(delays) > 3.1


def test_the_default_jitter_is_random():
    backoff = Backoff(1.0, 1.0)
    delays = {backoff.delay(1) for _ in range(50)}
    assert len(delays) > 40
    assert all(0.5 <= d <= 1.0 for d in delays)


def test_huge_failure_counts_stay_at_the_cap():
    assert Backoff(0.2, 10.0, rand=lambda: 0.0).delay(10_000) == 5.0
    assert Backoff(0.2, 10.0, rand=lambda: 1.0).delay(10**9) == 10.0
    # Even when the cap is far above the initial delay (no overflow on the way).
    assert Backoff(1e-300, 1e300, rand=lambda: 1.0).delay(10**9) == 1e300


def test_a_count_below_one_waits_the_initial_delay():
    backoff = Backoff(0.2, 10.0, rand=lambda: 1.0)
    assert backoff.delay(0) == backoff.delay(-5) == backoff.delay(1) == 0.2


def test_longest_is_the_cap_jittered():
    assert Backoff(0.2, 10.0, rand=lambda: 1.0).longest() == 10.0
    assert Backoff(0.2, 10.0, rand=lambda: 0.0).longest() == 5.0
    assert Backoff(0.2, 10.0, rand=lambda: 0.5).longest() == 7.5


@pytest.mark.parametrize(("initial_s", "max_s"), [
    (0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (math.nan, 1.0), (1.0, math.nan), (1.0, math.inf),
])
def test_bounds_are_checked(initial_s, max_s):
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(initial_s, max_s)


def test_a_backoff_is_a_value():
    assert Backoff(0.2, 10.0) == Backoff(0.2, 10.0, rand=lambda: 0.3)
    assert Backoff(0.2, 10.0) != Backoff(0.2, 20.0)
    with pytest.raises(AttributeError):
        Backoff(0.2, 10.0).max_s = 1.0  # type: ignore[misc]
