"""The end-to-end suite's fleet: real collector and agent processes, fault-injecting targets,
a fault table the tests edit, and a synchronous view of the collector's API.

The targets and the `Fleet` (from probenet.lab) run on an event loop in a background thread
for the whole module, so every scenario drives one fleet and the random-loss scenario can run
for minutes alongside the others. Tests stay synchronous: they edit the `FaultTable`, then
poll the collector's HTTP API with `wait_until`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import random
import signal
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from probenet.lab.fleet import AgentSeat, Fleet, FleetPlan
from probenet.lab.snapshot import AgentEntry, OutageEntry, TargetEntry, parse_entries
from probenet.lab.targets import FaultMode, FaultyTargets

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path

T = TypeVar("T")
EVERY_PROBE = "*"


@dataclass
class _Rule:
    mode: FaultMode
    regions: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    ratio: float = 1.0  # < 1: random, independent loss
    let_through: int = 0  # the next N matching requests are answered normally

    def matches(self, seat: AgentSeat) -> bool:
        return ((not self.regions or seat.region in self.regions)
                and (not self.agents or seat.id in self.agents))


class FaultTable:
    """The fault policy of the e2e targets: rules per probe, edited by the tests (thread-safe)."""

    def __init__(self, agents_by_address: Mapping[str, AgentSeat], seed: int = 20261124) -> None:
        self._agents = dict(agents_by_address)
        self._rules: dict[str, list[_Rule]] = {}
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def fail(self, probe: str, mode: FaultMode = FaultMode.ERROR, *,
             regions: Iterable[str] = (), agents: Iterable[str] = ()) -> None:
        """`probe` (or EVERY_PROBE) fails with `mode` from those regions/agents (all if empty)."""
        rule = _Rule(mode, frozenset(regions), frozenset(agents))
        with self._lock:
            self._rules.setdefault(probe, []).append(rule)

    def lose(self, probe: str, ratio: float, mode: FaultMode = FaultMode.ERROR) -> None:
        """Independent random loss of `ratio` of `probe`'s requests, at every agent."""
        with self._lock:
            self._rules.setdefault(probe, []).append(_Rule(mode, ratio=ratio))

    def let_through(self, probe: str, count: int) -> None:
        """The next `count` requests that a rule of `probe` would fail are answered normally."""
        with self._lock:
            for rule in self._rules.get(probe, []):
                rule.let_through = count

    def clear(self, probe: str) -> None:
        """Lift every rule of `probe`."""
        with self._lock:
            self._rules.pop(probe, None)

    def __call__(self, probe: str, peer: str) -> FaultMode | None:
        seat = self._agents.get(peer)
        if seat is None:
            return None
        with self._lock:
            for rule in (*self._rules.get(probe, ()), *self._rules.get(EVERY_PROBE, ())):
                if not rule.matches(seat):
                    continue
                if rule.ratio < 1.0 and self._random.random() >= rule.ratio:
                    continue
                if rule.let_through > 0:
                    rule.let_through -= 1
                    return None
                return rule.mode
        return None


@dataclass
class Latency:
    """One scenario's detection figures."""

    scenario: str
    kind: str  # global | regional | impaired
    api_seconds: float  # fault injected -> outage (or impaired agent) visible in the API
    detection_seconds: float  # detected_at - started_at of the record
    interval_s: float


@dataclass
class LatencyReport:
    """Collects every scenario's latencies; printed at the end of the session."""

    records: list[Latency] = field(default_factory=list)

    def add(self, record: Latency) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        if not self.records:
            return ["no detection latency recorded"]
        head = (f"{'scenario':<44} {'kind':<9} {'inject->API':>12} {'intervals':>10} "
                f"{'detected-started':>17}")
        out = [head]
        out.extend(f"{r.scenario:<44} {r.kind:<9} {r.api_seconds:>11.2f}s "
                   f"{r.api_seconds / r.interval_s:>10.2f} {r.detection_seconds:>16.2f}s"
                   for r in self.records)
        for kind in ("global", "regional"):
            values = [r.api_seconds / r.interval_s for r in self.records if r.kind == kind]
            if values:
                out.append(f"median {kind} detection: {statistics.median(values):.2f} probe "
                           f"intervals over {len(values)} scenarios (target: <= 2)")
        return out

    # A pytest plugin hook: the report registers itself so it prints after the test results.
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("=", "e2e detection latency")
        for line in self.lines():
            terminalreporter.write_line(line)


def wait_until(check: Callable[[], T | None], timeout_s: float, what: str,
               poll_s: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = check()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error, value = exc, None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}{detail}")
        time.sleep(poll_s)


class FleetHarness:
    """Targets + collector + agents on a background loop; synchronous API for the tests."""

    def __init__(self, plan: FleetPlan, workdir: Path, faults: FaultTable) -> None:
        self.plan = plan
        self.workdir = workdir
        self.faults = faults
        self.targets: FaultyTargets | None = None
        self.fleet: Fleet | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="e2e-fleet",
                                        daemon=True)
        self._stop: asyncio.Event | None = None
        self._lifetime: concurrent.futures.Future[None] | None = None
        self.started_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 90.0) -> None:
        self._thread.start()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._lifetime = asyncio.run_coroutine_threadsafe(self._live(ready), self._loop)
        try:
            ready.result(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.started_at = time.time()

    async def _live(self, ready: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            async with FaultyTargets(self.faults, tcp_probes=self.plan.tcp_probes) as targets, \
                    Fleet(self.plan, targets, self.workdir, ready_timeout_s=60) as fleet:
                self.targets, self.fleet = targets, fleet
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._lifetime is not None:
            with contextlib.suppress(Exception):  # the start already reported it
                self._lifetime.result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self._loop.close()

    def call(self, make: Callable[[Fleet], Any], timeout_s: float = 90.0) -> Any:
        """Run `make(fleet)` (a coroutine) on the fleet's loop and return its result."""
        assert self.fleet is not None
        return asyncio.run_coroutine_threadsafe(make(self.fleet), self._loop).result(timeout_s)

    def kill_agent(self, agent_id: str) -> None:
        self.call(lambda f: f.stop_agent(agent_id, signal.SIGKILL))

    def start_agent(self, agent_id: str) -> None:
        self.call(lambda f: f.start_agent(agent_id))

    def kill_collector(self) -> None:
        self.call(lambda f: f.stop_collector(signal.SIGKILL))

    def start_collector(self) -> None:
        self.call(lambda f: f.start_collector())

    # -- the collector's API, synchronously -----------------------------------------------

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.plan.http_base + path, timeout=5) as response:
            return bytes(response.read())

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def outages(self, active: bool | None = None) -> list[OutageEntry]:
        path = "/api/v1/outages" if active is None else \
            f"/api/v1/outages?active={'true' if active else 'false'}"
        return parse_entries(OutageEntry, self.get_json(path), path)

    def targets_view(self) -> dict[str, TargetEntry]:
        entries = parse_entries(TargetEntry, self.get_json("/api/v1/targets"), "/targets")
        return {t.probe: t for t in entries}

    def agents(self) -> dict[str, AgentEntry]:
        entries = parse_entries(AgentEntry, self.get_json("/api/v1/agents"), "/agents")
        return {a.id: a for a in entries}

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample of `/metrics`, or None if absent."""
        text = self.get("/metrics").decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return None

    def outage_of(self, probe: str, active: bool | None = True) -> OutageEntry | None:
        """The probe-kind record of `probe` (the open one by default)."""
        found = [o for o in self.outages(active) if o.kind == "probe" and o.probe == probe]
        return found[-1] if found else None

    def is_quiet(self) -> bool:
        """Every agent connected, fresh and healthy; every probe up; no open outage."""
        agents = self.agents()
        if set(agents) != {a.id for a in self.plan.agents}:
            return False
        if any(a.health != "ok" for a in agents.values()):
            return False
        targets = self.targets_view()
        if set(targets) != {p.name for p in self.plan.probes}:
            return False
        if any(t.state != "up" for t in targets.values()):
            return False
        return not self.outages(active=True)
