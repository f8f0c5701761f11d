"""Event-loop lag: how late the collector's event loop runs work that is due.

Everything the collector does (ingest and acks, classification ticks, the HTTP API, the
metrics page) shares one event loop, so one long callback delays all of it. The monitor
asks the loop to wake it every `interval_s` and records how late each wake-up came:

- `probenet_event_loop_lag_seconds` (histogram, 1 ms to 10 s): the lag of each wake-up,
  plus the wake-ups a stall swallowed (see `LoopLagMonitor.observe`), so that a quantile
  reads as "the share of time the loop answered later than X", not "the share of samples";
- `probenet_event_loop_lag_max_seconds` (gauge): the longest lag of the last 30 to 60 s,
  so that a dashboard shows the length of single stalls between two scrapes.

A stall of a second or more is also logged (at most once per window, with a count).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from prometheus_client import Gauge, Histogram

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INTERVAL_S = 0.1
WINDOW_S = 30.0
STALL_LOG_S = 1.0
# Back-filled observations of one stall stop after this much lag: a minute-long stall is
# recorded in full (600 observations at 100 ms, about a millisecond), a longer one is capped.
BACKFILL_LIMIT_S = 60.0


class LoopLagMonitor:
    """Measures the event loop's lag into metrics on `registry` while `run` runs.

    `interval_s`: how often the loop is asked to wake the monitor (the resolution of the
    measurement, and its cost: one timer per interval). `window_s`: the max gauge shows the
    longest lag of the last one to two windows; stalls are logged at most once per window.
    """

    def __init__(self, registry: CollectorRegistry, *, interval_s: float = INTERVAL_S,
                 window_s: float = WINDOW_S, stall_log_s: float = STALL_LOG_S) -> None:
        """Register the histogram and the gauge on `registry`; nothing runs until `run`."""
        if not interval_s > 0:
            raise ValueError(f"LoopLagMonitor: interval_s must be > 0, not {interval_s!r}")
        if not window_s >= interval_s:
            raise ValueError(f"LoopLagMonitor: window_s must be >= interval_s ({interval_s}),"
                             f" not {window_s!r}")
        self.interval_s = interval_s
        self.window_s = window_s
        self.stall_log_s = stall_log_s
        self._backfill_limit = max(1, int(BACKFILL_LIMIT_S / interval_s))
        self._histogram = Histogram(
            "probenet_event_loop_lag_seconds",
            "How late the collector's event loop ran work that was due, sampled every "
            f"{interval_s:g} s (stalls counted for every sample they delayed).",
            buckets=LAG_BUCKETS_S, registry=registry)
        self._max_gauge = Gauge(
            "probenet_event_loop_lag_max_seconds",
            "The longest event-loop lag of the last one to two windows "
            f"of {window_s:g} s.", registry=registry)
        self._max_gauge.set_function(self.max_lag_s)
        self._window_start: float | None = None
        self._window_max = 0.0
        self._previous_max = 0.0
        self._stalls_unlogged = 0
        self._next_log_at = float("-inf")

    async def run(self, stop: asyncio.Event) -> None:
        """Wake every `interval_s` and observe each wake-up's lag, until `stop` is set."""
        loop = asyncio.get_running_loop()
        log.debug("event-loop lag monitor started", extra={"interval_seconds": self.interval_s})
        while not stop.is_set():
            due = loop.time() + self.interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await stop.wait()
            if stop.is_set():
                return
            now = loop.time()
            # A timer may fire up to the clock's resolution early: that is no lag.
            self.observe(max(0.0, now - due), now)

    def observe(self, lag_s: float, now: float) -> None:
        """Record one wake-up `lag_s` late, at monotonic time `now`.

        A stall of length L swallows the wake-ups that were due during it: had they run,
        they would have been L - interval, L - 2 x interval, ... late. Those are recorded too
        (HdrHistogram's correction for coordinated omission), down to one interval and up to
        BACKFILL_LIMIT_S; otherwise a 3 s stall every 15 s would be one sample in 150 and
        invisible to a p99, while the loop was unavailable a fifth of the time.
        """
        self._rotate(now)
        self._window_max = max(self._window_max, lag_s)
        self._histogram.observe(lag_s)
        missed = lag_s - self.interval_s
        for _ in range(self._backfill_limit):
            if missed < self.interval_s:
                break
            self._histogram.observe(missed)
            missed -= self.interval_s
        if lag_s >= self.stall_log_s:
            self._log_stall(lag_s, now)

    def max_lag_s(self) -> float:
        """The longest lag observed in the current and the previous window."""
        return max(self._window_max, self._previous_max)

    def _rotate(self, now: float) -> None:
        if self._window_start is None:
            self._window_start = now
            return
        elapsed = now - self._window_start
        if elapsed < self.window_s:
            return
        # The window that just ended becomes the previous one, unless the loop was away for
        # more than a whole window (then nothing was observed in the one before `now`).
        self._previous_max = self._window_max if elapsed < 2 * self.window_s else 0.0
        self._window_max = 0.0
        self._window_start = now

    def _log_stall(self, lag_s: float, now: float) -> None:
        self._stalls_unlogged += 1
        if now < self._next_log_at:
            return
        log.warning("event loop stalled", extra={
            "lag_seconds": round(lag_s, 3), "stalls_since_last_log": self._stalls_unlogged})
        self._stalls_unlogged = 0
        self._next_log_at = now + self.window_s
