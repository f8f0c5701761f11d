"""The event-loop lag monitor: a real loop blocked on purpose, the back-fill of a stall, the max
gauge's window, the stall log, and an exposition promtool accepts."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from probenet.collector.looplag import LAG_BUCKETS_S, LoopLagMonitor
from support.system import need_binary

LAG = "probenet_event_loop_lag_seconds"


def bucket(registry: CollectorRegistry, le: float) -> float:
    value = registry.get_sample_value(f"{LAG}_bucket", {"le": str(le)})
    assert value is not None, le
    return value


def count(registry: CollectorRegistry) -> float:
    return registry.get_sample_value(f"{LAG}_count") or 0.0


def max_gauge(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("probenet_event_loop_lag_max_seconds")
    assert value is not None
    return value


async def run_for(monitor: LoopLagMonitor, seconds: float, *, block_s: float = 0.0) -> None:
    """Run the monitor on this loop for `seconds`, blocking the loop for `block_s` midway."""
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop), name="test-loop-lag")
    await asyncio.sleep(seconds / 2)
    if block_s:
        time.sleep(block_s)  # the stall under test: nothing else runs meanwhile
    await asyncio.sleep(seconds / 2)
    stop.set()
    await asyncio.wait_for(task, timeout=5)


# -- on a real loop --------------------------------------------------------------------------


async def test_a_blocked_loop_shows_up_in_the_stall_buckets():
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.01)
    await run_for(monitor, 0.2, block_s=0.3)
    total = count(registry)
    assert total > 0
    # The wake-up due during the sleep came at least 0.3 s - one interval late.
    assert bucket(registry, 0.25) < total
    assert max_gauge(registry) >= 0.29
    # Nothing on this loop waited seconds.
    assert bucket(registry, 2.5) == total


async def test_a_quiet_loop_stays_in_the_low_buckets():
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.01)
    await run_for(monitor, 0.3)
    total = count(registry)
    assert total >= 5
    assert bucket(registry, 0.25) == total
    assert bucket(registry, 0.025) >= total / 2
    assert max_gauge(registry) < 0.25


async def test_the_monitor_stops_when_told_even_between_wake_ups():
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=60.0, window_s=60.0)
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert count(registry) == 0


# -- the arithmetic, without a clock ---------------------------------------------------------


def test_a_stall_also_counts_the_wake_ups_it_swallowed():
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.25)
    monitor.observe(1.0, now=0.0)
    # 1.0 itself, then the wake-ups due 0.25, 0.5 and 0.75 s into the stall.
    assert count(registry) == 4
    assert registry.get_sample_value(f"{LAG}_sum") == 1.0 + 0.75 + 0.5 + 0.25
    assert bucket(registry, 0.25) == 1
    assert bucket(registry, 0.5) == 2
    assert bucket(registry, 1.0) == 4


def test_a_short_lag_is_one_observation():
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.25)
    monitor.observe(0.2, now=0.0)
    monitor.observe(0.0, now=0.3)
    assert count(registry) == 2
    assert bucket(registry, 0.001) == 1


def test_the_max_gauge_covers_the_last_one_to_two_windows():
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.1, window_s=30.0)
    assert max_gauge(registry) == 0.0
    monitor.observe(0.5, now=0.0)
    monitor.observe(0.01, now=10.0)
    assert max_gauge(registry) == 0.5
    monitor.observe(0.01, now=31.0)  # a new window: 0.5 is in the previous one
    assert max_gauge(registry) == 0.5
    monitor.observe(0.02, now=62.0)  # and now two windows back
    assert max_gauge(registry) == 0.02


def test_after_a_long_absence_older_windows_are_forgotten():
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.1, window_s=30.0)
    monitor.observe(0.3, now=0.0)
    monitor.observe(0.01, now=75.0)
    assert max_gauge(registry) == 0.01


def test_stalls_are_logged_once_per_window_with_a_count(caplog):
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.1, window_s=30.0, stall_log_s=1.0)
    with caplog.at_level(logging.WARNING, logger="probenet.collector.looplag"):
        monitor.observe(1.5, now=0.0)
        monitor.observe(2.0, now=5.0)
        monitor.observe(0.5, now=10.0)  # not a stall
        monitor.observe(1.2, now=31.0)
    stalls = [r for r in caplog.records if r.getMessage() == "event loop stalled"]
    assert [(r.lag_seconds, r.stalls_since_last_log) for r in stalls] == [(1.5, 1), (1.2, 2)]


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"interval_s": 0.0}, "interval_s"),
    ({"interval_s": 1.0, "window_s": 0.5}, "window_s"),
])
def test_bad_settings_are_refused_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named):
        LoopLagMonitor(CollectorRegistry(), **kwargs)


def test_buckets_run_from_a_millisecond_to_ten_seconds():
    assert LAG_BUCKETS_S[0] == 0.001
    assert LAG_BUCKETS_S[-1] == 10.0
    assert list(LAG_BUCKETS_S) == sorted(LAG_BUCKETS_S)


def test_promtool_accepts_the_exposition(tmp_path):
    promtool = need_binary("promtool", "prometheus")
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry)
    monitor.observe(0.003, now=0.0)
    monitor.observe(0.4, now=1.0)
    page = generate_latest(registry)
    assert b"probenet_event_loop_lag_seconds_bucket" in page
    assert b"probenet_event_loop_lag_max_seconds 0.4" in page
    done = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert done.stdout + done.stderr == b""
