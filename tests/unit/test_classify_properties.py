"""Properties of the classifier over random fleets and random fault sequences (hypothesis)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probenet.collector.classify import Classifier, target_state
from probenet.collector.model import (
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    RegionVerdict,
    Scope,
    TargetChange,
    TargetState,
    Transition,
)
from support.classifier_fleet import CONNECT, DNS, PROBES, TLS, Down, Fleet, faults

if TYPE_CHECKING:
    from collections.abc import Iterable

REGIONS = ("eu", "us", "ap", "sa", "af")
PHASES = ((CONNECT, "connect_refused"), (DNS, "dns_servfail"), (TLS, "tls_handshake"))
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

fleets = st.dictionaries(st.sampled_from(REGIONS), st.integers(1, 3), min_size=2, max_size=5)
multi_agent_fleets = st.dictionaries(st.sampled_from(REGIONS), st.integers(2, 3), min_size=2,
                                     max_size=5)
verdict_lists = st.lists(st.sampled_from(list(RegionVerdict)), max_size=8)


def shuffled(rng: random.Random, items: Iterable[str]) -> tuple[str, ...]:
    out = list(items)
    rng.shuffle(out)
    return tuple(out)


class Ledger:
    """Replays transitions and checks every invariant of the outage records on the way."""

    def __init__(self) -> None:
        self.open: dict[str, OutageRecord] = {}
        self.seen: set[str] = set()
        self.opened_probe_records = 0
        self.peak = Scope.REGIONAL
        self.states: set[TargetState] = set()

    def feed(self, transitions: Iterable[Transition]) -> None:
        for transition in transitions:
            if isinstance(transition, TargetChange):
                self.states.add(transition.view.state)
                continue
            self.check(transition)

    def check(self, transition: OutageTransition) -> None:
        record = transition.record
        assert record.started_at <= record.detected_at, record
        if record.ended_at is not None:
            assert record.detected_at <= record.ended_at, record
        assert transition.at >= record.detected_at
        if record.peak_scope is Scope.GLOBAL and record.kind in (OutageKind.PROBE,
                                                                 OutageKind.SERVICE):
            self.peak = Scope.GLOBAL
        if record.scope is Scope.GLOBAL:
            assert record.peak_scope is Scope.GLOBAL
        if transition.event is OutageEvent.OPENED:
            assert record.id not in self.seen, "an id is never reused"
            assert record.ended_at is None
            self.seen.add(record.id)
            if record.kind is OutageKind.PROBE:
                self.opened_probe_records += 1
            self.open[record.id] = record
        elif transition.event is OutageEvent.RESOLVED:
            assert record.id in self.open, "only an open record resolves"
            if self.open[record.id].flapping:
                # Held open by flapping: it ends when the probe last turned up.
                assert record.ended_at is not None
                assert record.ended_at <= transition.at
                assert not record.flapping
            else:
                assert record.ended_at == transition.at
            del self.open[record.id]
        else:
            assert record.id in self.open, "only an open record changes"
            assert record.ended_at is None
            self.open[record.id] = record
        self.check_unique(self.open.values())

    @staticmethod
    def check_unique(records: Iterable[OutageRecord]) -> None:
        """Never two open records for one probe, service or region; one degraded at most."""
        keys = [(r.kind, r.probe or r.service or r.region) for r in records]
        assert len(keys) == len(set(keys)), keys


def run_checked(fleet: Fleet, ledger: Ledger) -> None:
    fleet.transitions.extend(fleet.clf.take_transitions())
    ledger.feed(fleet.transitions)
    fleet.transitions.clear()
    ledger.check_unique(fleet.clf.open_outages())
    assert {r.id for r in fleet.clf.open_outages()} == set(ledger.open)


# -- pure state function --------------------------------------------------------------------


@given(verdicts=verdict_lists)
def test_one_down_region_is_never_global(verdicts: list[RegionVerdict]) -> None:
    ups_and_unknowns = [v for v in verdicts if v is not RegionVerdict.DOWN]
    state = target_state([*ups_and_unknowns, RegionVerdict.DOWN], ClassificationParams())
    assert state is not TargetState.GLOBAL_OUTAGE


@given(verdicts=verdict_lists)
def test_adding_an_up_region_never_raises_the_scope(verdicts: list[RegionVerdict]) -> None:
    params = ClassificationParams()
    before = target_state(verdicts, params)
    after = target_state([*verdicts, RegionVerdict.UP], params)
    if after is TargetState.GLOBAL_OUTAGE:
        assert before is TargetState.GLOBAL_OUTAGE
    if before is TargetState.UP:
        assert after is TargetState.UP
    if before is TargetState.REGIONAL_OUTAGE:
        assert after is TargetState.REGIONAL_OUTAGE


# -- whole classifier -----------------------------------------------------------------------


@SETTINGS
@given(regions=fleets, seed=st.integers(0, 2**32), rounds=st.integers(4, 16))
def test_one_region_can_never_produce_a_global_outage(regions: dict[str, int], seed: int,
                                                      rounds: int) -> None:
    rng = random.Random(seed)
    fleet = Fleet(regions)
    ledger = Ledger()
    sick = rng.choice(sorted(regions))
    sick_agents = [a for a in fleet.agents if fleet.region_of[a] == sick]
    fleet.rounds(2)
    run_checked(fleet, ledger)
    for _ in range(rounds):
        downs = [Down(tuple(rng.sample(PROBES, rng.randint(1, len(PROBES)))),
                      agents=tuple(rng.sample(sick_agents, rng.randint(1, len(sick_agents)))),
                      phase=rng.choice(PHASES)[0])
                 for _ in range(rng.randint(0, 2))]
        silent = [a for a in fleet.agents if rng.random() < 0.1]
        fleet.round(*downs, silent=silent, order=shuffled(rng, fleet.agents))
        run_checked(fleet, ledger)
    assert TargetState.GLOBAL_OUTAGE not in ledger.states
    assert ledger.peak is Scope.REGIONAL


@SETTINGS
@given(regions=fleets, seed=st.integers(0, 2**32), rounds=st.integers(3, 12),
       extra=st.integers(1, 3))
def test_adding_an_up_region_never_raises_the_scope_of_a_fleet(
        regions: dict[str, int], seed: int, rounds: int, extra: int) -> None:
    # Impairment off: an extra region that sees probes up would (rightly) change who counts.
    params = ClassificationParams(impaired_min_probes=10_000)
    rng = random.Random(seed)
    plain = Fleet(regions, params=params)
    wider = Fleet({**regions, "zz": extra}, params=params)
    rank = {TargetState.UP: 0, TargetState.REGIONAL_OUTAGE: 1, TargetState.GLOBAL_OUTAGE: 2}
    for _ in range(rounds + 2):
        downs = [Down(tuple(rng.sample(PROBES, rng.randint(1, 3))),
                      regions=tuple(rng.sample(sorted(regions), rng.randint(1, len(regions)))))
                 for _ in range(rng.randint(0, 2))]
        silent = [a for a in plain.agents if rng.random() < 0.1]
        fault = faults(*downs, region_of=wider.region_of)
        # The extra region's agents report last, in the same time slots, so the shared
        # agents see the same history at the same moments (timing matters: alibis, streaks
        # that began together).
        slots = len(wider.agents)
        plain.round(fault=fault, silent=silent, slots=slots)
        wider.round(fault=fault, silent=silent, order=wider.agents, slots=slots)
        for probe in PROBES:
            if plain.clf.target(probe) is None:
                continue  # every agent of the plain fleet was silent so far
            narrow, wide = plain.state(probe), wider.state(probe)
            if narrow is not TargetState.UNKNOWN:
                assert rank[wide] <= rank[narrow], (probe, narrow, wide)
            wide_verdicts = wider.verdicts(probe)
            assert wide_verdicts.pop("zz") is not RegionVerdict.DOWN
            assert wide_verdicts == plain.verdicts(probe)


@SETTINGS
@given(regions=fleets, seed=st.integers(0, 2**32), broken_rounds=st.integers(1, 6),
       probe_count=st.integers(3, 6))
def test_an_impaired_agents_results_never_open_an_outage(
        regions: dict[str, int], seed: int, broken_rounds: int, probe_count: int) -> None:
    rng = random.Random(seed)
    probes = PROBES[:probe_count]
    fleet = Fleet(regions, probes=probes)
    ledger = Ledger()
    broken = rng.choice(fleet.agents)
    fleet.rounds(2)
    run_checked(fleet, ledger)
    phase, reason = rng.choice(PHASES)
    for _ in range(broken_rounds):
        # Agents report in a different order every round; the broken one fails everything.
        fleet.probes_of = {a: shuffled(rng, probes) for a in fleet.agents}
        fleet.round(Down(agents=(broken,), phase=phase, reason=reason),
                    order=shuffled(rng, fleet.agents))
        run_checked(fleet, ledger)
    assert ledger.seen == set(), f"{broken} broken: {ledger.open}"
    impaired = {a.id for a in fleet.clf.agents() if a.impaired}
    assert impaired <= {broken}
    if broken_rounds >= 2:
        assert impaired == {broken}
    fleet.rounds(3)
    run_checked(fleet, ledger)
    assert not any(a.impaired for a in fleet.clf.agents())
    assert ledger.seen == set()


@SETTINGS
@given(regions=multi_agent_fleets, seed=st.integers(0, 2**32), rounds=st.integers(5, 25),
       loss=st.floats(0.0, 0.08))
def test_random_independent_loss_opens_no_outage(regions: dict[str, int], seed: int,
                                                 rounds: int, loss: float) -> None:
    rng = random.Random(seed)
    fleet = Fleet(regions)
    fleet.rounds(2)
    fleet.transitions.clear()
    ledger = Ledger()
    last_confirmed = -10
    for n in range(rounds):
        noise = {a: [p for p in PROBES if rng.random() < loss] for a in fleet.agents}
        downs: list[Down] = []
        # A rare confirmed failure, at one agent at a time (it recovers before the next).
        if n - last_confirmed >= 2 and rng.random() < 0.3:
            last_confirmed = n
            downs.append(Down((rng.choice(PROBES),), agents=(rng.choice(fleet.agents),)))
        fleet.round(*downs, noise=noise, order=shuffled(rng, fleet.agents))
        run_checked(fleet, ledger)
    assert ledger.seen == set()
    assert ledger.states <= {TargetState.UP}
    assert not any(a.impaired for a in fleet.clf.agents())


@dataclass(frozen=True)
class Chaos:
    """A random scenario: fleet, faults (from `seed`), clock skew, maybe a restart."""

    regions: dict[str, int]
    seed: int
    rounds: int
    services: dict[str, str]
    skew_s: float
    restart_at: int | None
    flap_window_s: float


chaos = st.builds(
    Chaos,
    regions=fleets,
    seed=st.integers(0, 2**32),
    rounds=st.integers(4, 30),
    services=st.dictionaries(st.sampled_from(PROBES), st.sampled_from(("s1", "s2")), max_size=4),
    skew_s=st.sampled_from((0.0, 2.0, 120.0, -86_400.0)),
    restart_at=st.one_of(st.none(), st.integers(1, 20)),
    flap_window_s=st.sampled_from((60.0, 1800.0)),
)


@SETTINGS
@given(scenario=chaos)
def test_records_are_consistent_under_random_faults(scenario: Chaos) -> None:
    """Check the record invariants under random faults, across a restart too.

    started_at <= detected_at <= ended_at; never two open records for one probe, service or
    region; ids never reused; only open records change; everything resolves once healed.
    """
    regions = scenario.regions
    rng = random.Random(scenario.seed)
    params = ClassificationParams(flap_window_s=scenario.flap_window_s)
    skew_s = scenario.skew_s
    agent_ids = [f"{r}-{n}" for r in regions for n in range(1, regions[r] + 1)]
    fleet = Fleet(regions, params=params, services=scenario.services,
                  networks={a: f"as{i % 2}" for i, a in enumerate(agent_ids)})
    fleet.skew = {a: rng.uniform(-1, 1) * skew_s for a in fleet.agents}
    ledger = Ledger()
    fleet.rounds(2)
    run_checked(fleet, ledger)
    for n in range(scenario.rounds):
        if n == scenario.restart_at:
            records = fleet.clf.open_outages()
            clf = Classifier(params)
            clf.restore(records, fleet.now)
            for agent in fleet.agents:
                clf.agent_connected(agent, fleet.region_of[agent], {}, fleet.interval_s,
                                    fleet.now)
            fleet.clf = clf
            run_checked(fleet, ledger)
        downs = []
        for _ in range(rng.randint(0, 3)):
            phase, reason = rng.choice(PHASES)
            if rng.random() < 0.2:  # a broken agent
                downs.append(Down(agents=(rng.choice(fleet.agents),), phase=phase,
                                  reason=reason))
            else:
                downs.append(Down(tuple(rng.sample(PROBES, rng.randint(1, 4))),
                                  regions=tuple(rng.sample(sorted(regions),
                                                           rng.randint(1, len(regions)))),
                                  phase=phase, reason=reason))
        silent = [a for a in fleet.agents if rng.random() < 0.15]
        noise = {a: [p for p in PROBES if rng.random() < 0.05] for a in fleet.agents}
        fleet.round(*downs, silent=silent, noise=noise, order=shuffled(rng, fleet.agents))
        run_checked(fleet, ledger)
    # Everything heals: every record resolves (flapping ones once the window has passed).
    fleet.rounds(int(params.flap_window_s / fleet.interval_s) + 4)
    run_checked(fleet, ledger)
    assert fleet.clf.open_outages() == []
    assert ledger.open == {}
    assert all(v.state is TargetState.UP for v in fleet.clf.targets())
    assert not fleet.clf.monitoring_degraded
    assert not any(a.impaired or a.stale for a in fleet.clf.agents())
