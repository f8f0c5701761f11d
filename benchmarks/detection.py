"""Detection accuracy of probenet's classifier on simulated fleets, beside peers' rules.

    .venv/bin/python benchmarks/detection.py [--quick] [--seed 1] [--regions 5]
        [--agents-per-region 2] [--probes 40] [--hours 48] [--loss 0,1,5,10]
        [--interval 30] [--timeout 5] [--param NAME=VALUE ...] [--workers 2]

A virtual clock drives the pure `Classifier` (no I/O, no sleeping): `--regions` x
`--agents-per-region` agents each run `--probes` probes every `--interval` seconds, as the
agent's scheduler does (agent/scheduler.py): each probe on a fixed phase of its interval,
spread evenly with jitter from the agent's own start time (agents start at unrelated
times); a failed run is re-probed once after `confirm_delay` (min(1 s, interval / 10)); the
first failure is sent with confirmed=false, the re-probe's result with confirmed=true if it
fails too; a run that outlasts its interval skips the firings it overran. Each agent has
its own run jitter, clock skew, network latency and batching delay; results reach the
collector in arrival order, and `tick` runs every second.

Random loss hits every run (re-probes included) independently with probability `--loss`
(so random loss yields a confirmed failure only on two losses in a row). On top of it a
schedule drawn from `--seed` injects events with known ground truth, in slots separated by
quiet gaps (several target events may share a slot, on distinct probes):

| event | what fails | truth |
| --- | --- | --- |
| global | one probe at every agent | global outage |
| regional | one probe at every agent of one region | regional outage |
| regional_multi | one probe in 2+ regions, below the 80 % global threshold | regional outage |
| slow_global, slow_regional | as above, each run hangs until the timeout | global / regional |
| flapping | one probe everywhere, down 2 intervals, up 2, 3 to 5 times | global (flapping) |
| partial_region | one probe at one of a region's agents | not an outage (the region reaches it) |
| agent_network | every probe at one agent (its own network) | not an outage |
| region_network | every probe at every agent of one region | not an outage (region isolated) |
| agent_silent | one agent sends nothing (frozen), then resumes | not an outage |

Every rule sees the same results at the same (virtual) times: probenet's classifier and six
baselines, each a few lines implementing a peer's published rule. The baselines are
APPROXIMATIONS written for this benchmark from the peers' documentation (thresholds in
each class), not the peers' code; they see only the scheduled runs (peers do not run our
one-second re-probe), except updown's re-check, which is simulated at once.

Scores per rule (records = outage records of one probe; a record "matches" a true outage
of its probe when it is open at some point in [start, end + 3 intervals]):

- false/M: records matching no true outage, per million results delivered
- missed: true outages lasting >= 3 intervals that no record matches
- detect p50 / p99: first matching record's opening - outage start, in intervals, over the
  true outages lasting >= 3 intervals; a missed outage counts as never (inf)
- scope ok: share of those detected outages whose first matching record was first published
  with the true scope (global / regional); n/a for rules without a scope
- wrong %: time a probe's published state (no record / a record and its scope) differs
  from the truth, as a % of the true outage time (flapping windows excluded)
- extra: matching records beyond the first per true outage (a re-opened or split outage)
- started_at error (probenet only, whose records say when the outage started): |started_at
  - true start| of each outage's first record, in intervals

Prints a table per loss rate, where the false records / missed outages / wrong scopes come
from (by event kind), the targets check for probenet at 5 % loss (reported, not asserted),
and as the last stdout line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import json
import math
import os
import random
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from probenet.collector.classify import Classifier
from probenet.collector.model import (
    PHASE_NAMES,
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageTransition,
    Scope,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

START = 1_800_000_000.0  # the classifier's clock = START + virtual seconds
TICK_S = 1.0  # the collector's default tick
LINGER_S = 0.05  # the agent stream's default linger (batching delay)
RUN_JITTER_S = 0.02  # event-loop lateness of a firing
DISCONNECT_AFTER_S = 30.0  # a frozen agent's stream is found dead (keepalive 20 s + 10 s)
WARMUP_INTERVALS = 6
GAP_INTERVALS = 8  # quiet time after each slot: recovery (2 up verdicts) and then some
MATCH_GRACE_INTERVALS = 3  # a record opened up to this long after an outage still matches it
SCORED_INTERVALS = 3  # outages this long or longer count for missed, latency and scope
DURATIONS_INTERVALS = (1, 2, 3, 3, 4, 5, 6, 8, 12, 20)
FLAP_HALF_INTERVALS = 2
CONNECT = PHASE_NAMES.index("connect")
DNS = PHASE_NAMES.index("dns")
RESPONSE = PHASE_NAMES.index("response")
TIMEOUT = PHASE_NAMES.index("timeout")

TARGET_KINDS = {"global": 5, "regional": 4, "regional_multi": 3, "slow_global": 2,
                "slow_regional": 2, "flapping": 2, "partial_region": 3}
FLEET_KINDS = {"agent_network": 3, "region_network": 3, "agent_silent": 2}
FLEET_SLOT_SHARE = 0.35
EVENT_KINDS = (*TARGET_KINDS, *FLEET_KINDS)


# -- the fleet and its ground truth ----------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The simulated fleet: regions x agents per region x probes, one interval."""

    regions: int
    agents_per_region: int
    probes: int
    interval_s: float = 30.0
    timeout_s: float = 5.0

    @property
    def agents(self) -> int:
        return self.regions * self.agents_per_region

    @property
    def confirm_delay_s(self) -> float:
        return min(1.0, self.interval_s / 10)  # the agent's default (agent/config.py)

    def region_of(self, agent: int) -> int:
        return agent // self.agents_per_region

    def agents_in(self, region: int) -> range:
        first = region * self.agents_per_region
        return range(first, first + self.agents_per_region)


class Failure(NamedTuple):
    """How a failing run fails: phase, reason, and how long it takes."""

    phase: int
    reason: str
    duration_s: float
    timeout_phase: int = 0


FAST_TARGET = Failure(CONNECT, "connect_refused", 0.05)
NETWORK_FAST = Failure(DNS, "dns_unreachable", 0.01)


@dataclass(frozen=True)
class Event:
    """One injected event: who fails what, when, and what it truly is.

    `probe` None: every probe (network loss, silence). `truth`: the scope of a true outage,
    None for an event that is not an outage.
    """

    eid: int
    kind: str
    start: float
    end: float
    agents: frozenset[int]
    probe: int | None
    truth: Scope | None
    failure: Failure = FAST_TARGET
    flap_half_s: float = 0.0
    regions: tuple[int, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def failing_at(self, t: float) -> bool:
        """Within the event (and, when flapping, in a down half-period)."""
        if not self.start <= t < self.end:
            return False
        return not self.flap_half_s or int((t - self.start) // self.flap_half_s) % 2 == 0


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _target_event(eid: int, kind: str, probe: int, start: float, *, shape: Shape,
                  rng: random.Random) -> Event:
    """One probe's event: the regions (or agent) it hits, its failure mode and length."""
    interval = shape.interval_s
    duration = rng.choice(DURATIONS_INTERVALS) * interval
    every = tuple(range(shape.regions))
    max_multi = math.ceil(0.8 * shape.regions) - 1  # below the global threshold
    truth: Scope | None = Scope.REGIONAL
    flap_half = 0.0
    if kind in {"global", "slow_global", "flapping"}:
        regions, truth = every, Scope.GLOBAL
    elif kind == "regional_multi" and max_multi >= 2:
        regions = tuple(sorted(rng.sample(every, rng.randint(2, max_multi))))
    else:
        regions = (rng.randrange(shape.regions),)
    agents = frozenset(a for r in regions for a in shape.agents_in(r))
    if kind == "partial_region":
        agents, truth = frozenset({rng.choice(sorted(agents))}), None
    if kind == "flapping":
        flap_half = FLAP_HALF_INTERVALS * interval
        duration = (2 * rng.randint(3, 5) - 1) * flap_half
    failure = FAST_TARGET
    if kind.startswith("slow_"):
        failure = Failure(TIMEOUT, "timeout", shape.timeout_s, RESPONSE)
    return Event(eid, kind, start, start + duration, agents, probe, truth, failure,
                 flap_half, regions)


def _fleet_event(eid: int, kind: str, start: float, shape: Shape,
                 rng: random.Random) -> Event:
    """An agent's or a region's network loss, or an agent going silent: no outage."""
    duration = rng.randint(3, 20) * shape.interval_s
    region = rng.randrange(shape.regions)
    if kind == "region_network":
        agents = frozenset(shape.agents_in(region))
    else:
        agents = frozenset({rng.choice(list(shape.agents_in(region)))})
    # An agent without a network fails fast (no route, no resolver) or hangs to the timeout.
    slow = Failure(CONNECT, "connect_timeout", shape.timeout_s, CONNECT)
    failure = NETWORK_FAST if rng.random() < 0.5 else slow
    return Event(eid, kind, start, start + duration, agents, None, None, failure,
                 regions=(region,))


def make_events(shape: Shape, duration_s: float, seed: int) -> list[Event]:
    """The event schedule: slots of events, each slot followed by a quiet gap."""
    rng = random.Random(f"events-{seed}")
    interval = shape.interval_s
    target_kinds = dict(TARGET_KINDS)
    if shape.agents_per_region < 2:
        del target_kinds["partial_region"]  # one agent per region: nothing partial about it
    per_slot = max(1, min(4, shape.probes // 10))
    flap_reserve = ClassificationParams().flap_window_s + GAP_INTERVALS * interval
    free_at = [0.0] * shape.probes  # a probe may take a new event from then on
    events: list[Event] = []
    eid = itertools.count(1)
    t = WARMUP_INTERVALS * interval
    while True:
        if rng.random() < FLEET_SLOT_SHARE:
            batch = [_fleet_event(next(eid), _weighted(rng, FLEET_KINDS), t, shape, rng)]
        else:
            free = [p for p in range(shape.probes) if free_at[p] <= t]
            chosen = rng.sample(free, min(len(free), rng.randint(1, per_slot)))
            batch = [_target_event(next(eid), _weighted(rng, target_kinds), p,
                                   t + rng.random() * interval, shape=shape, rng=rng)
                     for p in chosen]
        if not batch:
            t += GAP_INTERVALS * interval
            continue
        slot_end = max(e.end for e in batch) + GAP_INTERVALS * interval
        if slot_end > duration_s - GAP_INTERVALS * interval:
            return events
        for event in batch:
            if event.kind == "flapping" and event.probe is not None:
                free_at[event.probe] = event.end + flap_reserve
        events.extend(batch)
        t = slot_end


class World:
    """What a probe run from an agent at a time yields: the events, then random loss."""

    def __init__(self, shape: Shape, events: Sequence[Event], loss: float) -> None:
        self.shape = shape
        self.loss = loss
        self.events = list(events)
        self._buckets: dict[int, list[Event]] = {}  # by interval index, for a quick look-up
        for event in events:
            first = int(event.start // shape.interval_s)
            last = int(event.end // shape.interval_s)
            for index in range(first, last + 1):
                self._buckets.setdefault(index, []).append(event)

    def events_at(self, t: float) -> list[Event]:
        return self._buckets.get(int(t // self.shape.interval_s), [])

    def failure(self, agent: int, probe: int, t: float, rng: random.Random) -> Failure | None:
        """The failure of a run started at `t`, or None if it succeeds."""
        for event in self.events_at(t):
            if (event.probe is None or event.probe == probe) and agent in event.agents and (
                    event.kind != "agent_silent" and event.failing_at(t)):
                return event.failure
        if self.loss and rng.random() < self.loss:
            # A lost packet: the connection attempt gives up some time before the timeout.
            lasted = 0.2 + rng.random() * max(0.0, self.shape.timeout_s - 0.2)
            return Failure(CONNECT, "connect_timeout", lasted, CONNECT)
        return None

    def silent(self, agent: int, t: float) -> bool:
        return any(e.kind == "agent_silent" and agent in e.agents and e.start <= t < e.end
                   for e in self.events_at(t))


# -- rules -------------------------------------------------------------------------------------


class Result(NamedTuple):
    """A probenet.v1.ProbeResult look-alike (the attributes ResultLike names)."""

    probe: str
    target: str
    kind: str
    service: str
    success: bool
    confirmed: bool
    failed_phase: int
    timeout_phase: int
    reason: str
    duration_seconds: float
    status_code: int
    timestamp_ms: int
    interval_ms: int


@dataclass
class Record:
    """One outage record of one probe, as a rule published it (virtual seconds)."""

    probe: int
    opened: float
    scopes: list[tuple[float, Scope | None]]  # (since, scope); the first at `opened`
    closed: float | None = None
    started: float | None = None  # the record's own `started_at`, for rules that give one


class Rule:
    """A detection rule fed the fleet's results; it opens and closes per-probe records."""

    name = ""
    summary = ""
    has_scope = False

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.records: list[Record] = []
        self._open: dict[int, Record] = {}

    def open(self, probe: int, now: float, scope: Scope | None = None) -> None:
        if probe not in self._open:
            record = Record(probe, now, [(now, scope)])
            self._open[probe] = record
            self.records.append(record)

    def close(self, probe: int, now: float) -> None:
        record = self._open.pop(probe, None)
        if record is not None:
            record.closed = now

    def deliver(self, agent: int, probe: int, result: Result, scheduled: bool,
                now: float) -> None:
        """One result, as it reaches the collector (`scheduled`: not a re-probe)."""

    def tick(self, now: float) -> None:
        """The collector's periodic tick."""

    def connection(self, agent: int, connected: bool, now: float) -> None:
        """An agent's stream ended or came back."""


class Probenet(Rule):
    """probenet's classifier, through its public API only."""

    name = "probenet"
    summary = "collector/classify.py, default ClassificationParams"
    has_scope = True

    def __init__(self, shape: Shape, params: ClassificationParams | None = None) -> None:
        super().__init__(shape)
        self.clf = Classifier(params or ClassificationParams())
        self.agent_ids = [f"r{shape.region_of(a)}-a{a}" for a in range(shape.agents)]
        self._by_record: dict[str, Record] = {}
        self.side_records: list[tuple[str, str | None, float]] = []  # (kind, region, opened)
        self.health_changes = 0
        for agent, agent_id in enumerate(self.agent_ids):
            self.clf.agent_connected(agent_id, f"r{shape.region_of(agent)}",
                                     {"network": f"net-{agent}"}, shape.interval_s, START)

    def deliver(self, agent: int, probe: int, result: Result,  # noqa: ARG002 - Rule's
                scheduled: bool, now: float) -> None:  # noqa: ARG002 - signature
        clf = self.clf
        clf.apply(self.agent_ids[agent], (result,), START + now)
        taken = clf.take_transitions()
        if taken:
            self._absorb(taken)

    def tick(self, now: float) -> None:
        self.clf.tick(START + now)
        self._absorb(self.clf.take_transitions())
        self.health_changes += len(self.clf.take_health_changes())  # drained, as the log does

    def connection(self, agent: int, connected: bool, now: float) -> None:
        agent_id = self.agent_ids[agent]
        if connected:
            region = f"r{self.shape.region_of(agent)}"
            self.clf.agent_connected(agent_id, region, {"network": f"net-{agent}"},
                                     self.shape.interval_s, START + now)
        else:
            self.clf.agent_disconnected(agent_id, START + now)
        self._absorb(self.clf.take_transitions())

    def _absorb(self, transitions: Iterable[object]) -> None:
        for transition in transitions:
            if not isinstance(transition, OutageTransition):
                continue
            record, at = transition.record, transition.at - START
            if record.kind is not OutageKind.PROBE:
                if transition.event is OutageEvent.OPENED:
                    self.side_records.append((str(record.kind), record.region, at))
                continue
            if transition.event is OutageEvent.OPENED:
                mine = Record(int(record.probe[1:]), at, [(at, record.scope)],
                              started=record.started_at - START)
                self._by_record[record.id] = mine
                self.records.append(mine)
                continue
            mine = self._by_record[record.id]
            if transition.event is OutageEvent.RESOLVED:
                mine.closed = at
                del self._by_record[record.id]
            elif record.scope is not mine.scopes[-1][1]:
                mine.scopes.append((at, record.scope))


class UptimeKuma(Rule):
    """APPROXIMATION of Uptime Kuma: one vantage point, down after retries fail in a row."""

    name = "Uptime Kuma ~"
    summary = "one place (agent 0); down after 1 check + 1 retry fail; up on a success"
    RETRIES = 1

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self._fails = [0] * shape.probes

    def deliver(self, agent: int, probe: int, result: Result, scheduled: bool,
                now: float) -> None:
        if agent != 0 or not scheduled:
            return
        if result.success:
            self._fails[probe] = 0
            self.close(probe, now)
            return
        self._fails[probe] += 1
        if self._fails[probe] > self.RETRIES:
            self.open(probe, now)


class GrafanaSM(Rule):
    """APPROXIMATION of Grafana Synthetic Monitoring's low-sensitivity default alert."""

    name = "Grafana SM ~"
    summary = ">= 25 % of the check's runs (all probes) failed over the last 5 minutes"
    WINDOW_S = 300.0
    SHARE = 0.25

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self._runs: list[deque[tuple[float, bool]]] = [deque() for _ in range(shape.probes)]
        self._failed = [0] * shape.probes

    def deliver(self, agent: int, probe: int, result: Result,  # noqa: ARG002 - Rule's
                scheduled: bool, now: float) -> None:
        if not scheduled:
            return
        runs = self._runs[probe]
        runs.append((now, result.success))
        self._failed[probe] += not result.success
        while runs[0][0] <= now - self.WINDOW_S:
            self._failed[probe] -= not runs.popleft()[1]
        if self._failed[probe] >= self.SHARE * len(runs):
            self.open(probe, now)
        else:
            self.close(probe, now)


class ThousandEyes(Rule):
    """APPROXIMATION of ThousandEyes: "local problem" agents left out, N agents x 2 rounds."""

    name = "ThousandEyes ~"
    summary = ("agent with >= 80 % of its tests failing 2 rounds = local problem, left out; "
               "alert when >= 2 other agents fail 2 rounds in a row")
    LOCAL_SHARE = 0.8
    MIN_AGENTS = 2

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self._last_failed = [[False] * shape.probes for _ in range(shape.agents)]
        self._twice = [[False] * shape.probes for _ in range(shape.agents)]
        self._n_twice = [0] * shape.agents
        self._local = [False] * shape.agents

    def deliver(self, agent: int, probe: int, result: Result, scheduled: bool,
                now: float) -> None:
        if not scheduled:
            return
        failed = not result.success
        twice = failed and self._last_failed[agent][probe]
        self._last_failed[agent][probe] = failed
        if twice != self._twice[agent][probe]:
            self._twice[agent][probe] = twice
            self._n_twice[agent] += 1 if twice else -1
        self._local[agent] = self._n_twice[agent] >= self.LOCAL_SHARE * self.shape.probes
        failing = sum(1 for a in range(self.shape.agents)
                      if self._twice[a][probe] and not self._local[a])
        if failing >= self.MIN_AGENTS:
            self.open(probe, now)
        else:
            self.close(probe, now)


class Catchpoint(Rule):
    """APPROXIMATION of Catchpoint's recommendation: alert when 50 % of nodes fail."""

    name = "Catchpoint ~"
    summary = "latest run failed at >= 50 % of the agents"
    SHARE = 0.5

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self._failed = [[False] * shape.probes for _ in range(shape.agents)]
        self._n_failed = [0] * shape.probes

    def deliver(self, agent: int, probe: int, result: Result, scheduled: bool,
                now: float) -> None:
        if not scheduled:
            return
        failed = not result.success
        if failed != self._failed[agent][probe]:
            self._failed[agent][probe] = failed
            self._n_failed[probe] += 1 if failed else -1
        if self._n_failed[probe] >= self.SHARE * self.shape.agents:
            self.open(probe, now)
        else:
            self.close(probe, now)


class Updown(Rule):
    """APPROXIMATION of updown.io: one location; a failure is re-checked from another."""

    name = "updown ~"
    summary = ("one place (agent 0); a failure re-checked at once from an agent of another "
               "region, down if that fails too; up on a success")

    def __init__(self, shape: Shape, world: World, seed: int) -> None:
        super().__init__(shape)
        self._world = world
        self._rng = random.Random(f"updown-{seed}")
        self._others = [a for a in range(shape.agents) if shape.region_of(a) != 0]

    def deliver(self, agent: int, probe: int, result: Result, scheduled: bool,
                now: float) -> None:
        if agent != 0 or not scheduled:
            return
        if result.success:
            self.close(probe, now)
            return
        other = self._rng.choice(self._others)
        failure = self._world.failure(other, probe, now, self._rng)
        if failure is not None:
            self.open(probe, now + failure.duration_s)


class Route53(Rule):
    """APPROXIMATION of Route 53: healthy while > 18 % of checkers say healthy."""

    name = "Route 53 ~"
    summary = ("each agent a checker, flipping after 3 checks in a row (failure threshold); "
               "down when <= 18 % of checkers say healthy")
    THRESHOLD = 3
    HEALTHY_SHARE = 0.18

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self._healthy = [[True] * shape.probes for _ in range(shape.agents)]
        self._streak = [[0] * shape.probes for _ in range(shape.agents)]
        self._n_healthy = [shape.agents] * shape.probes

    def deliver(self, agent: int, probe: int, result: Result, scheduled: bool,
                now: float) -> None:
        if not scheduled:
            return
        healthy = self._healthy[agent]
        streak = self._streak[agent]
        if result.success == healthy[probe]:
            streak[probe] = 0
            return
        streak[probe] += 1
        if streak[probe] >= self.THRESHOLD:
            streak[probe] = 0
            healthy[probe] = result.success
            self._n_healthy[probe] += 1 if result.success else -1
            if self._n_healthy[probe] > self.HEALTHY_SHARE * self.shape.agents:
                self.close(probe, now)
            else:
                self.open(probe, now)


def make_rules(shape: Shape, world: World, seed: int,
               params: ClassificationParams | None = None) -> list[Rule]:
    """probenet first, then the baselines."""
    return [Probenet(shape, params), UptimeKuma(shape), GrafanaSM(shape), ThousandEyes(shape),
            Catchpoint(shape), Updown(shape, world, seed), Route53(shape)]


# -- the simulation ----------------------------------------------------------------------------


@dataclass
class SimStats:
    results: int = 0
    runs: int = 0
    reprobes: int = 0
    skipped: int = 0
    ticks: int = 0


class FleetSim:
    """Agents firing probes on their phases; results delivered in arrival order to the rules."""

    def __init__(self, shape: Shape, world: World, rules: Sequence[Rule], seed: int) -> None:
        self.shape = shape
        self.world = world
        self.rules = list(rules)
        self.rng = random.Random(f"fleet-{seed}-{world.loss}")
        phases = random.Random(f"phases-{seed}")  # the same schedule at every loss rate
        n = shape.probes
        interval = shape.interval_s
        # The scheduler's spread: probe i of n first fires at interval * (i + u) / n after
        # the agent started; agents started at unrelated times.
        started = [phases.random() * interval for _ in range(shape.agents)]
        self.order = sorted(((started[a] + interval * (p + phases.random()) / n) % interval,
                             a, p) for a in range(shape.agents) for p in range(n))
        self.skew_s = [phases.uniform(-0.05, 0.05) for _ in range(shape.agents)]
        self.latency_s = [phases.uniform(0.01, 0.15) for _ in range(shape.agents)]
        self.run_s = [phases.uniform(0.03, 0.3) for _ in range(shape.agents)]
        self.busy_until = [[0.0] * n for _ in range(shape.agents)]
        self.names = [f"p{p:03d}" for p in range(n)]
        self.targets = [f"https://{name}.example/" for name in self.names]
        self.interval_ms = round(interval * 1000)
        self.heap: list[tuple[float, int, int, int, Result, bool]] = []
        self.seq = itertools.count()
        self.next_tick = TICK_S
        self.controls = self._connection_changes(world)
        self.stats = SimStats()

    @staticmethod
    def _connection_changes(world: World) -> deque[tuple[float, int, bool]]:
        """A frozen agent's stream is found dead after a while; it reconnects on resuming."""
        changes: list[tuple[float, int, bool]] = []
        for event in world.events:
            if event.kind == "agent_silent":
                for agent in event.agents:
                    changes.append((event.start + DISCONNECT_AFTER_S, agent, False))
                    changes.append((event.end, agent, True))
        return deque(sorted(changes))

    def run(self, duration_s: float) -> SimStats:
        interval = self.shape.interval_s
        for k in range(int(duration_s // interval)):
            base = k * interval
            for offset, agent, probe in self.order:
                due = base + offset
                self.advance(due)
                self.fire(agent, probe, due)
        # Results still in flight arrive (a run and its re-probe end within two timeouts).
        self.advance(duration_s + 2 * (self.shape.timeout_s + self.shape.confirm_delay_s) + 1)
        return self.stats

    def advance(self, until: float) -> None:
        """Deliver results, connection changes and ticks due up to `until`, in time order."""
        heap = self.heap
        controls = self.controls
        while True:
            t_result = heap[0][0] if heap else math.inf
            t_control = controls[0][0] if controls else math.inf
            t = min(t_result, t_control, self.next_tick)
            if t > until:
                return
            if t == self.next_tick:
                self.next_tick += TICK_S
                self.stats.ticks += 1
                for rule in self.rules:
                    rule.tick(t)
            elif t == t_control:
                _, agent, connected = controls.popleft()
                for rule in self.rules:
                    rule.connection(agent, connected, t)
            else:
                _, _, agent, probe, result, scheduled = heapq.heappop(heap)
                self.stats.results += 1
                for rule in self.rules:
                    rule.deliver(agent, probe, result, scheduled, t)

    def fire(self, agent: int, probe: int, due: float) -> None:
        """One scheduled firing: the run, and its re-probe if it failed."""
        if due < self.busy_until[agent][probe]:
            self.stats.skipped += 1  # the previous run (or its confirmation) overran
            return
        if self.world.silent(agent, due):
            return
        rng = self.rng
        start = due + rng.random() * RUN_JITTER_S
        failure = self.world.failure(agent, probe, start, rng)
        done = self._send(agent, probe, start, failure, confirmed=False, scheduled=True)
        if failure is not None:
            again = done + self.shape.confirm_delay_s
            failure = self.world.failure(agent, probe, again, rng)
            done = self._send(agent, probe, again, failure, confirmed=True, scheduled=False)
            self.stats.reprobes += 1
        self.busy_until[agent][probe] = done
        self.stats.runs += 1

    def _send(self, agent: int, probe: int, start: float, failure: Failure | None, *,
              confirmed: bool, scheduled: bool) -> float:
        """Queue one run's result for delivery; returns when the run ended."""
        stamp = int((START + start + self.skew_s[agent]) * 1000)
        if failure is None:
            duration = self.run_s[agent]
            result = Result(self.names[probe], self.targets[probe], "http", "", True, False,
                            0, 0, "", duration, 200, stamp, self.interval_ms)
        else:
            duration = failure.duration_s
            result = Result(self.names[probe], self.targets[probe], "http", "", False,
                            confirmed, failure.phase, failure.timeout_phase, failure.reason,
                            duration, 0, stamp, self.interval_ms)
        done = start + duration
        arrival = done + self.latency_s[agent] + self.rng.random() * LINGER_S
        heapq.heappush(self.heap, (arrival, next(self.seq), agent, probe, result, scheduled))
        return done


# -- scoring -----------------------------------------------------------------------------------


@dataclass
class Score:
    """One rule's figures on one trace."""

    rule: str
    records: int = 0
    false_records: int = 0
    false_per_million: float = 0.0
    false_by_kind: dict[str, int] = field(default_factory=dict)
    scored_outages: int = 0
    missed: int = 0
    missed_by_kind: dict[str, int] = field(default_factory=dict)
    latency_intervals: list[float] = field(default_factory=list)
    scope_latency_intervals: list[float] = field(default_factory=list)
    detect_p50: float = math.inf
    detect_p99: float = math.inf
    scope_p99: float | None = None
    scope_right_pct: float | None = None
    scope_wrong_by_kind: dict[str, int] = field(default_factory=dict)
    wrong_state_pct: float = 0.0
    wrong_s_by_kind: dict[str, float] = field(default_factory=dict)
    extra_records: int = 0
    extra_by_kind: dict[str, int] = field(default_factory=dict)
    # Records that give a start (probenet's started_at): |started - true start| in intervals.
    start_error_p50: float | None = None
    start_error_p99: float | None = None
    start_off_by_over_1: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()
               if k not in {"latency_intervals", "scope_latency_intervals"}}
        for key in ("detect_p50", "detect_p99", "scope_p99"):
            out[key] = _finite(out[key])
        return out


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a percentile that falls on a missed outage is null."""
    return None if value is None or math.isinf(value) else round(value, 3)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (inf when it falls on a missed outage; inf when empty)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _closed(record: Record, end_s: float) -> float:
    return record.closed if record.closed is not None else end_s


def _matches(record: Record, event: Event, grace_s: float, end_s: float) -> bool:
    return (record.probe == event.probe and record.opened < event.end + grace_s
            and _closed(record, end_s) > event.start)


def _blame(probe: int, t: float, events: Sequence[Event], grace_s: float) -> str:
    """The kind of event around `t` on that probe (its own or fleet-wide).

    "no_event" when none is: random loss, or a record opened long after its outage.
    """
    for event in events:
        if (event.probe is None or event.probe == probe) and (
                event.start <= t < event.end + grace_s):
            return event.kind
    return "no_event"


def _blame_time(probe: int, t: float, events: Sequence[Event], grace_s: float,
                shown: Record | None) -> str:
    """Like `_blame`, but a record left open past the true outage it was opened for (e.g.
    held by flapping) is blamed on that outage, as "<kind>_after"."""
    if shown is not None:
        origin = next((e for e in events if e.truth is not None and e.probe == probe
                       and e.start <= shown.opened < e.end + grace_s), None)
        if origin is not None and t >= origin.end + grace_s:
            return f"{origin.kind}_after"
    return _blame(probe, t, events, grace_s)


def _scope_at(record: Record, t: float) -> Scope | None:
    scope = record.scopes[0][1]
    for since, value in record.scopes:
        if since > t:
            break
        scope = value
    return scope


def _reached_scope(records: Sequence[Record], truth: Scope) -> float:
    """When a record first showed the true scope (inf: never)."""
    return min((since for r in records for since, scope in r.scopes if scope is truth),
               default=math.inf)


def _bump(counts: dict[str, int], kind: str, by: int = 1) -> None:
    counts[kind] = counts.get(kind, 0) + by


def score_rule(rule_name: str, records: Sequence[Record], *, has_scope: bool,
               events: Sequence[Event], shape: Shape, end_s: float, results: int) -> Score:
    """Score one rule's records against the events' ground truth."""
    grace = MATCH_GRACE_INTERVALS * shape.interval_s
    score = Score(rule_name, records=len(records))
    matched: set[int] = set()
    start_errors: list[float] = []
    for event in (e for e in events if e.truth is not None):
        mine = sorted((r for r in records if _matches(r, event, grace, end_s)),
                      key=lambda r: r.opened)
        matched.update(id(r) for r in mine)
        if len(mine) > 1:
            score.extra_records += len(mine) - 1
            _bump(score.extra_by_kind, event.kind, len(mine) - 1)
        if event.duration_s >= SCORED_INTERVALS * shape.interval_s:
            _score_outage(score, event, mine, shape.interval_s, has_scope=has_scope,
                          start_errors=start_errors)
    for record in records:
        if id(record) not in matched:
            score.false_records += 1
            _bump(score.false_by_kind, _blame(record.probe, record.opened, events, grace))
    score.false_per_million = score.false_records / max(1, results) * 1e6
    if start_errors:
        score.start_error_p50 = round(percentile(start_errors, 0.50), 3)
        score.start_error_p99 = round(percentile(start_errors, 0.99), 3)
        score.start_off_by_over_1 = sum(1 for e in start_errors if e > 1.0)
    score.detect_p50 = percentile(score.latency_intervals, 0.50)
    score.detect_p99 = percentile(score.latency_intervals, 0.99)
    if has_scope:
        detected = score.scored_outages - score.missed
        wrong = sum(score.scope_wrong_by_kind.values())
        score.scope_right_pct = 100.0 * (detected - wrong) / detected if detected else None
        score.scope_p99 = percentile(score.scope_latency_intervals, 0.99)
    wrong_s, truth_s = wrong_state_time(records, has_scope, events, shape, end_s)
    score.wrong_s_by_kind = {k: round(v, 1) for k, v in wrong_s.items()}
    score.wrong_state_pct = 100.0 * sum(wrong_s.values()) / truth_s if truth_s else 0.0
    return score


def _score_outage(score: Score, event: Event, mine: Sequence[Record], interval: float, *,
                  has_scope: bool, start_errors: list[float]) -> None:
    """One true outage lasting >= SCORED_INTERVALS: missed, or its latency and first scope."""
    score.scored_outages += 1
    if not mine:
        score.missed += 1
        _bump(score.missed_by_kind, event.kind)
        score.latency_intervals.append(math.inf)
        score.scope_latency_intervals.append(math.inf)
        return
    first = mine[0]
    score.latency_intervals.append(max(0.0, first.opened - event.start) / interval)
    if first.started is not None:
        start_errors.append(abs(first.started - event.start) / interval)
    if has_scope and event.truth is not None:
        reached = _reached_scope(mine, event.truth)
        score.scope_latency_intervals.append(max(0.0, reached - event.start) / interval)
        # A record already open when the outage began (left open by an earlier one) shows
        # the scope it has at the onset.
        if _scope_at(first, max(first.opened, event.start)) is not event.truth:
            _bump(score.scope_wrong_by_kind, event.kind)


def wrong_state_time(records: Sequence[Record], has_scope: bool, events: Sequence[Event],
                     shape: Shape, end_s: float) -> tuple[dict[str, float], float]:
    """Seconds each probe's published state differed from the truth, by event kind.

    Returns (wrong seconds by the kind of event around them, total true outage seconds).
    Flapping windows (start to end + grace) are left out of both.
    """
    grace = MATCH_GRACE_INTERVALS * shape.interval_s
    by_probe: dict[int, list[Record]] = {}
    for record in records:
        by_probe.setdefault(record.probe, []).append(record)
    wrong: dict[str, float] = {}
    truth_total = 0.0
    for probe in range(shape.probes):
        mine = by_probe.get(probe, [])
        related = [e for e in events if e.probe is None or e.probe == probe]
        outages = [e for e in related if e.truth is not None and e.kind != "flapping"]
        excluded = [(e.start, e.end + grace) for e in related if e.kind == "flapping"]
        truth_total += sum(e.duration_s for e in outages)
        cuts = {0.0, end_s}
        for e in related:
            cuts.update((e.start, e.end, e.end + grace))
        for r in mine:
            cuts.update(since for since, _ in r.scopes)
            cuts.add(_closed(r, end_s))
        ordered = sorted(c for c in cuts if 0.0 <= c <= end_s)
        for t0, t1 in itertools.pairwise(ordered):
            mid = (t0 + t1) / 2
            if any(a <= mid < b for a, b in excluded):
                continue
            truth = next((e.truth for e in outages if e.start <= mid < e.end), None)
            shown = next((r for r in mine if r.opened <= mid < _closed(r, end_s)), None)
            if shown is None:
                bad = truth is not None
            else:
                bad = truth is None or (has_scope and _scope_at(shown, mid) is not truth)
            if bad:
                kind = _blame_time(probe, mid, related, grace, shown)
                wrong[kind] = wrong.get(kind, 0.0) + (t1 - t0)
    return wrong, truth_total


def isolation_seen(side_records: Sequence[tuple[str, str | None, float]],
                   events: Sequence[Event], shape: Shape) -> tuple[int, int]:
    """(region_network events with a region_isolated record for that region, all of them)."""
    grace = MATCH_GRACE_INTERVALS * shape.interval_s
    losses = [e for e in events if e.kind == "region_network"]
    seen = 0
    for event in losses:
        region = f"r{event.regions[0]}"
        if any(kind == str(OutageKind.REGION_ISOLATED) and name == region
               and event.start <= at < event.end + grace for kind, name, at in side_records):
            seen += 1
    return seen, len(losses)


# -- one run per loss rate ---------------------------------------------------------------------


def run_trace(shape: Shape, hours: float, loss_pct: float, seed: int,
              params: ClassificationParams | None = None) -> dict[str, Any]:
    """Simulate one trace at one loss rate, feed every rule, score them all."""
    duration_s = hours * 3600
    events = make_events(shape, duration_s, seed)
    world = World(shape, events, loss_pct / 100)
    rules = make_rules(shape, world, seed, params)
    started = time.process_time()
    stats = FleetSim(shape, world, rules, seed).run(duration_s)
    cpu_s = time.process_time() - started
    scores = [score_rule(r.name, r.records, has_scope=r.has_scope, events=events, shape=shape,
                         end_s=duration_s, results=stats.results) for r in rules]
    probenet = rules[0]
    assert isinstance(probenet, Probenet)
    isolated, region_losses = isolation_seen(probenet.side_records, events, shape)
    kinds = {k: sum(1 for e in events if e.kind == k) for k in EVENT_KINDS}
    return {
        "loss_pct": loss_pct,
        "results": stats.results,
        "runs": stats.runs,
        "reprobes": stats.reprobes,
        "skipped_runs": stats.skipped,
        "ticks": stats.ticks,
        "cpu_s": round(cpu_s, 1),
        "events": len(events),
        "events_by_kind": kinds,
        "true_outages": sum(1 for e in events if e.truth is not None),
        "scored_outages": scores[0].scored_outages,
        "region_isolated_records": sum(1 for k, _, _ in probenet.side_records
                                       if k == str(OutageKind.REGION_ISOLATED)),
        "monitoring_degraded_records": sum(1 for k, _, _ in probenet.side_records
                                           if k == str(OutageKind.MONITORING_DEGRADED)),
        "agent_health_changes": probenet.health_changes,
        "region_losses_isolated": isolated,
        "region_losses": region_losses,
        "rules": {s.rule: s.to_json() for s in scores},
        "summaries": {r.name: r.summary for r in rules},
    }


# -- output ------------------------------------------------------------------------------------


def _lat(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def print_run(run: dict[str, Any], interval_s: float) -> None:
    """The table for one loss rate, then where the errors come from."""
    print(f"\nloss {run['loss_pct']:g} %: {run['results']:,} results, {run['events']} events, "
          f"{run['true_outages']} true outages ({run['scored_outages']} lasting >= "
          f"{SCORED_INTERVALS} intervals of {interval_s:g} s); {run['cpu_s']} s CPU")
    header = (f"  {'rule':16} {'false/M':>8} {'false':>6} {'missed':>7} {'p50':>6} "
              f"{'p99':>6} {'scope ok':>9} {'scope p99':>9} {'wrong %':>8} {'extra':>6}")
    print(header)
    for name, s in run["rules"].items():
        scope_p99 = "n/a" if s["scope_right_pct"] is None else _lat(s["scope_p99"])
        missed = f"{s['missed']}/{s['scored_outages']}"
        print(f"  {name:16} {s['false_per_million']:8.2f} {s['false_records']:6d} "
              f"{missed:>7} {_lat(s['detect_p50']):>6} {_lat(s['detect_p99']):>6} "
              f"{_pct(s['scope_right_pct']):>9} {scope_p99:>9} "
              f"{s['wrong_state_pct']:7.1f}% {s['extra_records']:6d}")
    print("  where they come from (event kind: count):")
    for name, s in run["rules"].items():
        parts = []
        if s["false_by_kind"]:
            parts.append("false " + _kinds(s["false_by_kind"]))
        if s["missed_by_kind"]:
            parts.append("missed " + _kinds(s["missed_by_kind"]))
        if s["scope_wrong_by_kind"]:
            parts.append("first scope wrong " + _kinds(s["scope_wrong_by_kind"]))
        if s["start_error_p99"] is not None:
            parts.append(f"started_at error p50 {s['start_error_p50']:.2f} p99 "
                         f"{s['start_error_p99']:.2f} iv, > 1 iv off in "
                         f"{s['start_off_by_over_1']}")
        if s["extra_by_kind"]:
            parts.append("extra " + _kinds(s["extra_by_kind"]))
        top = sorted(s["wrong_s_by_kind"].items(), key=lambda kv: -kv[1])[:3]
        if top:
            parts.append("wrong time " + ", ".join(
                f"{k} {v / interval_s:.0f} iv" for k, v in top))
        print(f"    {name:16} {'; '.join(parts) or '-'}")
    print(f"  probenet side records: region_isolated {run['region_isolated_records']} "
          f"(isolated in {run['region_losses_isolated']} of {run['region_losses']} region "
          f"network losses), monitoring_degraded {run['monitoring_degraded_records']}")


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def targets_check(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """probenet's targets at this loss rate: per target, pass or not and the figures."""
    rules = run["rules"]
    pn = rules["probenet"]
    p50, p99, scope = pn["detect_p50"], pn["detect_p99"], pn["scope_right_pct"]
    checks = {
        "0 false outages per million results": (
            pn["false_records"] == 0, f"{pn['false_per_million']:.2f}/M"),
        f"0 missed outages lasting >= {SCORED_INTERVALS} intervals": (
            pn["missed"] == 0, f"{pn['missed']} of {pn['scored_outages']}"),
        "detection p50 <= 1.5 intervals": (p50 is not None and p50 <= 1.5, _lat(p50)),
        "detection p99 <= 2.5 intervals": (p99 is not None and p99 <= 2.5, _lat(p99)),
        "first scope right >= 99 %": (scope is not None and scope >= 99.0, _pct(scope)),
    }
    for name, s in rules.items():
        if name != "probenet":
            checks[f"better than {name} (fewer false outages, p99 as good)"] = _beats(pn, s)
    return {k: {"pass": ok, "figures": detail} for k, (ok, detail) in checks.items()}


def _beats(pn: dict[str, Any], other: dict[str, Any]) -> tuple[bool, str]:
    """Fewer false outages at an equal or better p99 (a p99 of None: a missed outage).

    Nothing is fewer than 0: against a baseline with no false outage either, probenet passes
    only with a strictly better p99 (it dominates; the figures say so).
    """
    p99, theirs = pn["detect_p99"], other["detect_p99"]
    as_fast = p99 is not None and (theirs is None or p99 <= theirs)
    faster = p99 is not None and (theirs is None or p99 < theirs)
    mine_false, their_false = pn["false_records"], other["false_records"]
    detail = (f"false {mine_false} vs {their_false}, p99 {_lat(p99)} vs {_lat(theirs)}")
    if mine_false == their_false == 0:
        return faster, detail + " (both 0 false: a strictly better p99 needed)"
    return mine_false < their_false and as_fast, detail


def print_targets(checks: dict[str, dict[str, Any]], loss_pct: float) -> None:
    print(f"\ntargets for probenet at {loss_pct:g} % loss (reported, not asserted):")
    for label, check in checks.items():
        print(f"  {'PASS' if check['pass'] else 'FAIL'}  {label}: {check['figures']}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short run: 4 regions x 2 agents x 20 probes, 8 simulated hours")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--regions", type=int, default=5)
    parser.add_argument("--agents-per-region", type=int, default=2)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--hours", type=float, default=48.0, help="simulated hours per trace")
    parser.add_argument("--loss", default="0,1,5,10", help="random loss rates, in percent")
    parser.add_argument("--interval", type=float, default=30.0, help="probe interval, seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="probe timeout, seconds")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a ClassificationParams field for probenet (repeatable), e.g. "
                             "scope_hold_intervals=0.5")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes (one trace per loss rate each)")
    args = parser.parse_args(argv)
    if args.quick:
        args.regions, args.agents_per_region, args.probes, args.hours = 4, 2, 20, 8.0
    if args.regions < 2 or args.agents_per_region < 1 or args.probes < 3:
        parser.error("needs >= 2 regions, >= 1 agent per region and >= 3 probes")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    shape = Shape(args.regions, args.agents_per_region, args.probes, args.interval,
                  args.timeout)
    losses = [float(x) for x in args.loss.split(",") if x.strip()]
    started = time.monotonic()
    print(f"detection: {shape.regions} regions x {shape.agents_per_region} agents x "
          f"{shape.probes} probes every {shape.interval_s:g} s (timeout {shape.timeout_s:g} s, "
          f"re-probe after {shape.confirm_delay_s:g} s), {args.hours:g} simulated hours per "
          f"trace, seed {args.seed}; loss {', '.join(f'{x:g}' for x in losses)} %")
    print("baselines are approximations of the peers' published rules (~), written for this "
          "benchmark:")
    for rule in make_rules(shape, World(shape, [], 0.0), args.seed)[1:]:
        print(f"  {rule.name:16} {rule.summary}")
    params = classification_params(args.param)
    if args.param:
        print(f"probenet with {', '.join(args.param)}")
    jobs = [(shape, args.hours, loss, args.seed, params) for loss in losses]
    if args.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(args.workers, len(jobs))) as pool:
            runs = list(pool.map(_run_job, jobs))
    else:
        runs = [_run_job(job) for job in jobs]
    for run in runs:
        print_run(run, shape.interval_s)
    at5 = next((run for run in runs if run["loss_pct"] == 5.0), None)
    checks = targets_check(at5) if at5 is not None else None
    if checks is not None:
        print_targets(checks, 5.0)
    else:
        print("\ntargets: not checked (5 % loss not in --loss)")
    wall_s = time.monotonic() - started
    print(f"\n{sum(r['results'] for r in runs):,} results in {wall_s:.0f} s wall")
    figures = {
        "config": {"regions": shape.regions, "agents_per_region": shape.agents_per_region,
                   "params": dataclasses.asdict(params),
                   "probes": shape.probes, "interval_s": shape.interval_s,
                   "timeout_s": shape.timeout_s, "confirm_delay_s": shape.confirm_delay_s,
                   "hours": args.hours, "seed": args.seed, "loss_pct": losses,
                   "quick": args.quick},
        "runs": {f"loss_{run['loss_pct']:g}": run for run in runs},
        "targets_at_5pct": checks,
        "total_results": sum(r["results"] for r in runs),
        "wall_s": round(wall_s, 1),
    }
    print(json.dumps(figures))


def _run_job(job: tuple[Shape, float, float, int, ClassificationParams]) -> dict[str, Any]:
    shape, hours, loss, seed, params = job
    return run_trace(shape, hours, loss, seed, params)


def classification_params(settings: Sequence[str]) -> ClassificationParams:
    """ClassificationParams with `NAME=VALUE` overrides (to tune a rule on the same traces)."""
    defaults = ClassificationParams()
    changes: dict[str, Any] = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        current = getattr(defaults, name.strip(), None)
        if current is None or not value:
            raise SystemExit(f"--param {setting!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(f.name for f in dataclasses.fields(defaults))}")
        changes[name.strip()] = type(current)(value)
    return dataclasses.replace(defaults, **changes)


if __name__ == "__main__":
    main()
