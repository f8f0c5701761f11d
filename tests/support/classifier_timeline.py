"""A fleet on a timeline for the classifier: every probe run at its own moment.

Unlike `classifier_fleet.Fleet` (one batch per agent per round, one stamp), `Timeline` runs
each (agent, probe) pair on its own schedule: a phase inside the interval, a run every
interval, a failure re-probed after `confirm_delay_s` (the confirmed result), results
stamped when they run and delivered after a per-agent delay, in delivery order, one batch
per (agent, delivery moment). The classifier ticks once a second. A fault is a function of
(agent, probe, time). This is what arrival order looks like from real agents.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from probenet.collector.classify import Classifier
from probenet.collector.model import (
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    Transition,
)
from support.classifier_fleet import CONNECT, START, Result

Fault = Callable[[str, str, float], bool]  # (agent, probe, run time) -> fails


def no_fault(_agent: str, _probe: str, _at: float) -> bool:
    return False


@dataclass
class Timeline:
    """`regions` maps a region to its agent count; every agent runs every probe."""

    regions: Mapping[str, int]
    probes: Sequence[str] = ("web", "api", "dns", "cdn", "mail", "auth")
    interval_s: float = 1.0
    confirm_delay_s: float = 0.1
    seed: int = 0
    params: ClassificationParams = field(default_factory=ClassificationParams)
    max_delivery_s: float = 0.08
    services: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.clf = Classifier(self.params)
        self.now = START
        self.region_of = {f"{region}-{i}": region for region, count in self.regions.items()
                          for i in range(1, count + 1)}
        self.phase = {(agent, probe): rng.random() * self.interval_s
                      for agent in self.region_of for probe in self.probes}
        self.delay = {agent: rng.random() * self.max_delivery_s for agent in self.region_of}
        self.transitions: list[Transition] = []
        self._next_run = {pair: self.now + offset for pair, offset in self.phase.items()}
        self._late: list[tuple[float, int, str, list[Result]]] = []
        for agent, region in self.region_of.items():
            self.clf.agent_connected(agent, region, {"network": f"net-{agent}"},
                                     self.interval_s, self.now)
        self._collect()

    def run(self, seconds: float, fault: Fault = no_fault) -> None:
        """Let `seconds` pass with `fault` in force: runs, deliveries and ticks in order."""
        end = self.now + seconds
        events = self._late
        order = len(events) and max(e[1] for e in events) + 1
        for (agent, probe), first_run in self._next_run.items():
            run_at = first_run
            while run_at < end:
                delivered_at, results = self._run_pair(agent, probe, run_at, fault)
                heapq.heappush(events, (delivered_at, order, agent, results))
                order += 1
                run_at += self.interval_s
            self._next_run[agent, probe] = run_at
        next_tick = int(self.now) + 1.0
        while events and events[0][0] < end:
            delivered_at, _, agent, results = heapq.heappop(events)
            while next_tick <= delivered_at:
                self._tick(next_tick)
                next_tick += 1.0
            self.now = delivered_at
            self.clf.apply(agent, results, delivered_at)
            self._collect()
        while next_tick <= end:
            self._tick(next_tick)
            next_tick += 1.0
        # Results still in flight at `end` are delivered first thing in the next run.
        self._late = events
        self.now = end

    def _run_pair(self, agent: str, probe: str, at: float,
                  fault: Fault) -> tuple[float, list[Result]]:
        common = {"probe": probe, "target": f"https://{probe}.example/",
                  "service": self.services.get(probe, ""),
                  "interval_ms": round(self.interval_s * 1000)}
        delivered = at + self.delay[agent]
        if not fault(agent, probe, at):
            return delivered, [Result(timestamp_ms=round(at * 1000), **common)]
        first = Result(success=False, failed_phase=CONNECT, reason="connect_timeout",
                       status_code=0, timestamp_ms=round(at * 1000), **common)
        again = at + self.confirm_delay_s
        if fault(agent, probe, again):
            second = Result(success=False, confirmed=True, failed_phase=CONNECT,
                            reason="connect_timeout", status_code=0,
                            timestamp_ms=round(again * 1000), **common)
        else:
            second = Result(timestamp_ms=round(again * 1000), **common)
        return again + self.delay[agent], [first, second]

    def _tick(self, at: float) -> None:
        self.now = at
        self.clf.tick(at)
        self._collect()

    def _collect(self) -> None:
        self.transitions.extend(self.clf.take_transitions())

    # -- reading ----------------------------------------------------------------------------

    def records(self, event: OutageEvent = OutageEvent.OPENED,
                kinds: Sequence[OutageKind] = (OutageKind.PROBE,)) -> list[OutageRecord]:
        """Records of `kinds` as they were at `event`, in order."""
        return [t.record for t in self.transitions if isinstance(t, OutageTransition)
                and t.event is event and t.record.kind in kinds]

    def opened_at(self, kind: OutageKind = OutageKind.PROBE) -> list[tuple[float, OutageRecord]]:
        """(time, record) of every opening of `kind`."""
        return [(t.at, t.record) for t in self.transitions if isinstance(t, OutageTransition)
                and t.event is OutageEvent.OPENED and t.record.kind is kind]
