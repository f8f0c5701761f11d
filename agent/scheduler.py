"""Runs every probe on its own interval and hands each result to a sink.

Timing: each probe fires every `interval`, at a fixed phase within it. At start the phases
are spread evenly with jitter: probe i of n first fires at interval * (i + u) / n with u
uniform in [0, 1), so a thousand probes with the same interval never fire in the same
millisecond, and the schedule does not drift. Timers are the event loop's own (`call_at`),
so an idle agent with ten thousand probes holds ten thousand timer handles, not tasks.

Each firing starts one task (named `probe:<name>`) in the scheduler's TaskGroup; a
semaphore bounds how many run at once. A probe never overlaps itself: its next firing is
armed when its run (and confirmation) ends, on the same phase; intervals that passed
meanwhile (a failure being confirmed, a queue behind the semaphore) are skipped and counted.
A slow probe only ever delays itself.

Confirmation: a failed run is re-probed once after `confirm_delay`; the first failure is
sent with confirmed=false, the re-probe's failures with confirmed=true (its successes as
plain successes). Every run is sent.

Reload (`update`): probes whose spec did not change keep their timer and phase; changed
and new probes start at a random phase of their (new) interval; removed probes stop.
`next_runs()` shows each probe's next firing on the wall clock (the agent exports it as
`probenet_agent_probe_next_run_timestamp_seconds`): a kept probe's value does not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from probenet.lifecycle import EnterOnce

from .errors import LifecycleError
from .probes import build_probe
from .probes.attempt import run_attempt
from .results import to_wire

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from probenet.v1 import probenet_pb2 as pb

    from .config import ProbeSpec
    from .metrics import ProbeCounters
    from .probes.base import Probe, ProbeOutcome

log = logging.getLogger(__name__)


def _inputs_changed(probe: Probe) -> bool:
    """Whether a probe's inputs outside its config (a secret file) changed since its build."""
    check = getattr(probe, "inputs_changed", None)
    return bool(check()) if check is not None else False


@dataclass(eq=False)
class ScheduledProbe:
    """One probe with its timer state."""

    spec: ProbeSpec
    probe: Probe
    due: float = 0.0  # loop time of the next firing
    due_wall: float = 0.0  # the same instant on the wall clock (unix seconds), for metrics
    handle: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    runs: int = 0
    skipped: int = 0
    removed: bool = False
    fired_at: list[float] = field(default_factory=list)  # only with record_firings

    @property
    def running(self) -> bool:
        """Whether a run (or its confirmation) is in progress."""
        return self.task is not None and not self.task.done()


class Scheduler:
    """Fires probes on their intervals; an async context manager (enter once)."""

    def __init__(self, specs: Sequence[ProbeSpec], *, sink: Callable[[pb.ProbeResult], None],
                 source_address: str | None = None, max_concurrent: int = 512,
                 confirm_failures: bool = True, counters: ProbeCounters | None = None,
                 build: Callable[[ProbeSpec], Probe] | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, record_firings: bool = False) -> None:
        """Build every probe now (ProbeBuildError names the first that cannot be built).

        `sink` receives every result; `build` replaces the probe registry (tests).
        """
        self.sink = sink
        self.source_address = source_address
        self.confirm_failures = confirm_failures
        self.counters = counters
        self._build = build or (lambda spec: build_probe(spec, source_address=source_address))
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._record_firings = record_firings
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.probes: dict[str, ScheduledProbe] = {
            spec.name: ScheduledProbe(spec, self._build(spec)) for spec in specs}
        self._tasks: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifecycle = EnterOnce("Scheduler", LifecycleError)
        self._stopped = False
        self.in_flight = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start every probe's timer, spread evenly with jitter."""
        self._lifecycle.enter()
        self._loop = asyncio.get_running_loop()
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        now = self._loop.time()
        entries = list(self.probes.values())
        count = len(entries)
        for index, entry in enumerate(entries):
            fraction = (index + self._rng.random()) / count
            self._arm(entry, now + entry.spec.interval * fraction)
        log.info("scheduler started", extra={"probes": count})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop firing and cancel runs in progress (idempotent)."""
        self.stop()
        if not self._lifecycle.leave():
            return
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        for entry in self.probes.values():
            if entry.task is not None:
                entry.task.cancel()
        await tasks.__aexit__(None, None, None)

    def stop(self) -> None:
        """Stop firing new runs (runs in progress go on)."""
        self._stopped = True
        for entry in self.probes.values():
            if entry.handle is not None:
                entry.handle.cancel()
                entry.handle = None

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for runs in progress to end; True if they all did."""
        pending = [e.task for e in self.probes.values() if e.task is not None and
                   not e.task.done()]
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        return not still

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, entry: ScheduledProbe, due: float) -> None:
        assert self._loop is not None
        entry.due = due
        # Computed once per arming, so a kept probe shows exactly the same value.
        entry.due_wall = self._wall_clock() + (due - self._loop.time())
        entry.handle = self._loop.call_at(due, self._fire, entry)

    def _fire(self, entry: ScheduledProbe) -> None:
        entry.handle = None
        if self._stopped or entry.removed or self._tasks is None:
            return
        if self._record_firings:
            assert self._loop is not None
            entry.fired_at.append(self._loop.time())
        if entry.running:  # a replaced probe's old run is still going: try next interval
            self._rearm(entry)
            return
        # The next firing is armed when this run (and its confirmation) ends: a probe has a
        # timer or a run, never both, so an overloaded agent does not churn timers.
        entry.task = self._tasks.create_task(self._run(entry), name=f"probe:{entry.spec.name}")

    def _rearm(self, entry: ScheduledProbe) -> None:
        """Arm the next firing on the probe's phase; count the intervals it missed."""
        loop = self._loop
        if loop is None or self._stopped or entry.removed or entry.handle is not None:
            return
        interval = entry.spec.interval
        due = entry.due + interval
        now = loop.time()
        if due <= now:  # the run outlasted its interval (or the loop stalled)
            missed = int((now - due) // interval) + 1
            due += interval * missed
            entry.skipped += missed
            if self.counters is not None:
                self.counters.skipped.labels(entry.spec.kind).inc(missed)
            log.debug("probe run outlasted its interval", extra={
                "probe": entry.spec.name, "missed": missed})
        self._arm(entry, due)

    # -- runs ------------------------------------------------------------------------------

    async def _attempt(self, entry: ScheduledProbe) -> tuple[list[ProbeOutcome], int]:
        async with self._semaphore:
            started_ms = int(self._wall_clock() * 1000)
            self.in_flight += 1
            try:
                outcomes = await run_attempt(entry.probe, entry.spec.timeout,
                                             probe_name=entry.spec.name)
            finally:
                self.in_flight -= 1
        return outcomes, started_ms

    def _emit(self, entry: ScheduledProbe, outcomes: list[ProbeOutcome], started_ms: int, *,
              confirmed: bool) -> None:
        spec = entry.spec
        counters = self.counters
        for outcome in outcomes:
            if counters is not None:
                counters.count(spec.kind, outcome.success, outcome.failed_phase,
                               outcome.reason)
            try:
                self.sink(to_wire(spec, outcome, confirmed=confirmed, timestamp_ms=started_ms))
            except Exception:
                log.exception("result sink failed", extra={"probe": spec.name})

    async def _run(self, entry: ScheduledProbe) -> None:
        try:
            outcomes, started_ms = await self._attempt(entry)
            entry.runs += 1
            self._emit(entry, outcomes, started_ms, confirmed=False)
            if not self.confirm_failures or all(o.success for o in outcomes):
                return
            await asyncio.sleep(entry.spec.confirm_delay)
            if entry.removed or self._stopped:
                return
            outcomes, started_ms = await self._attempt(entry)
            entry.runs += 1
            self._emit(entry, outcomes, started_ms, confirmed=True)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one probe take the TaskGroup down
            log.exception("probe run failed", extra={"probe": entry.spec.name})
        finally:
            self._rearm(entry)

    # -- reload ----------------------------------------------------------------------------

    def update(self, specs: Sequence[ProbeSpec]) -> dict[str, int]:
        """Apply a reloaded probe list; return counts of kept/changed/added/removed probes.

        Every new or changed probe is built before anything changes: on ProbeBuildError the
        running schedule is left as it was.
        """
        loop = self._loop
        built: dict[str, Probe] = {}
        for spec in specs:
            old = self.probes.get(spec.name)
            if old is None or not old.spec.same_probe(spec) or _inputs_changed(old.probe):
                built[spec.name] = self._build(spec)
        counts = {"kept": 0, "changed": 0, "added": 0, "removed": 0}
        wanted = {spec.name for spec in specs}
        for name in [n for n in self.probes if n not in wanted]:
            entry = self.probes.pop(name)
            entry.removed = True
            if entry.handle is not None:
                entry.handle.cancel()
            counts["removed"] += 1
        for spec in specs:
            old = self.probes.get(spec.name)
            if spec.name not in built:
                counts["kept"] += 1
                continue
            entry = ScheduledProbe(spec, built[spec.name])
            if old is not None:
                counts["changed"] += 1
                old.removed = True
                if old.handle is not None:
                    old.handle.cancel()
                entry.task = old.task  # never overlap the old run
            else:
                counts["added"] += 1
            self.probes[spec.name] = entry
            if loop is not None and not self._stopped:
                self._arm(entry, loop.time() + spec.interval * self._rng.random())
        return counts

    def next_runs(self) -> dict[str, float]:
        """Each probe's next (or current) firing, unix seconds; 0 before the scheduler runs."""
        return {name: entry.due_wall for name, entry in self.probes.items()}

    def set_max_concurrent(self, max_concurrent: int) -> None:
        """Change the concurrency bound for runs that start from now on."""
        if max_concurrent != self.max_concurrent:
            self.max_concurrent = max_concurrent
            self._semaphore = asyncio.Semaphore(max_concurrent)

    # -- one-off runs (benchmarks, `probenet check --probe` style tools) --------------------

    async def run_now(self, name: str) -> None:
        """Run one probe right away (with confirmation), outside its schedule."""
        entry = self.probes[name]
        with contextlib.suppress(asyncio.CancelledError):
            await self._run(entry)
