"""Outage ids derived from (kind, subject, start): the same outage, the same id on both
collectors of an HA pair (issue 17).

Two independent classifiers are fed the same agents' streams in different interleavings
(each agent's results in order, as its stream guarantees; arrival times differ per
collector) and must name every record alike.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

import pytest

from probenet.collector.classify import Classifier, outage_id
from probenet.collector.model import (
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    Scope,
)
from support.classifier_fleet import CONNECT, DNS, Result

START = 1_800_000_000.0
INTERVAL_S = 10.0
PROBES = ("web", "api", "dns", "cdn", "mail", "auth", "img", "docs")
SERVICE_OF = {"web": "social", "api": "social"}
REGIONS = ("eu", "us", "ap")
AGENTS = tuple(f"{region}-{n}" for region in REGIONS for n in (1, 2))


# -- the pure function ------------------------------------------------------------------------


def test_outage_id_is_32_lowercase_hex_and_stable() -> None:
    first = outage_id(OutageKind.PROBE, "web", START + 0.123)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert outage_id(OutageKind.PROBE, "web", START + 0.123) == first
    # The contract, spelled out: sha256 of kind NUL subject NUL start in ms, 32 hex chars.
    expected = hashlib.sha256(f"probe\x00web\x00{round((START + 0.123) * 1000)}".encode())
    assert first == expected.hexdigest()[:32]


def test_outage_id_differs_by_kind_subject_and_start() -> None:
    base = outage_id(OutageKind.PROBE, "web", START)
    assert outage_id(OutageKind.SERVICE, "web", START) != base
    assert outage_id(OutageKind.PROBE, "api", START) != base
    assert outage_id(OutageKind.PROBE, "web", START + 0.001) != base
    # Sub-millisecond differences are one start (both collectors round alike).
    assert outage_id(OutageKind.PROBE, "web", START + 0.0004) == base
    # No ambiguity between a subject and the separator.
    assert (outage_id(OutageKind.REGION_ISOLATED, "", START)
            != outage_id(OutageKind.MONITORING_DEGRADED, "", START))


# -- two collectors, one stream -----------------------------------------------------------------

Fault = dict[str, tuple[int, str]]  # probe -> (phase, reason) failing at one agent


@dataclass(frozen=True)
class Batch:
    """One agent's results of one round, stamped on its own clock."""

    agent: str
    index: int
    stamp_ms: int
    results: tuple[Result, ...]


def region_of(agent: str) -> str:
    return agent.split("-", 1)[0]


def timeline(agent: str, rounds: int, faults: dict[int, Fault]) -> list[Batch]:
    """Every probe once per round; a failure is sent with its confirmed re-probe."""
    offset_ms = AGENTS.index(agent) * 1_300 + 170  # each agent probes at its own phase
    batches: list[Batch] = []
    for n in range(rounds):
        stamp = int(START * 1000) + n * int(INTERVAL_S * 1000) + offset_ms
        failing = faults.get(n, {})
        results: list[Result] = []
        for probe in PROBES:
            common = {"probe": probe, "target": f"https://{probe}.example/",
                      "service": SERVICE_OF.get(probe, ""), "timestamp_ms": stamp,
                      "interval_ms": int(INTERVAL_S * 1000)}
            if probe not in failing:
                results.append(Result(**common))  # type: ignore[arg-type]
                continue
            phase, reason = failing[probe]
            results.extend(Result(success=False, confirmed=confirmed, failed_phase=phase,
                                  reason=reason, status_code=0,
                                  **common)  # type: ignore[arg-type]
                           for confirmed in (False, True))
        batches.append(Batch(agent, n, stamp, tuple(results)))
    return batches


def run_collector(streams: dict[str, list[Batch]], rng: random.Random, *,
                  max_lag_s: float) -> list[OutageTransition]:
    """One collector: every agent's batches in order, arrival lag drawn per batch."""
    arrivals: list[tuple[float, Batch]] = []
    for batches in streams.values():
        last = 0.0
        for batch in batches:
            at = max(batch.stamp_ms / 1000 + rng.uniform(0.005, max_lag_s), last + 0.001)
            arrivals.append((at, batch))
            last = at
    arrivals.sort(key=lambda item: item[0])
    clf = Classifier(ClassificationParams())
    for agent in streams:
        clf.agent_connected(agent, region_of(agent), {"network": f"as-{agent}"}, INTERVAL_S,
                            START)
    out: list[OutageTransition] = []
    next_tick = START + 1.0
    for at, batch in arrivals:
        while next_tick <= at:  # bounded: arrivals end within the run's rounds
            clf.tick(next_tick)
            next_tick += 1.0
        clf.apply(batch.agent, batch.results, at)
        out.extend(t for t in clf.take_transitions() if isinstance(t, OutageTransition))
    # No ticks past the last arrival: agents going stale would open monitoring_degraded,
    # dated by each collector's own clock (see Classifier's docstring).
    return out


def opened(transitions: list[OutageTransition]) -> list[OutageRecord]:
    return [t.record for t in transitions if t.event is OutageEvent.OPENED]


def identities(transitions: list[OutageTransition]) -> set[tuple[str, str | None, str]]:
    return {(str(r.kind), r.probe or r.service or r.region, r.id) for r in opened(transitions)}


def outage_faults(rounds: range, probes: tuple[str, ...], agents: tuple[str, ...],
                  phase: int = CONNECT, reason: str = "connect_refused",
                  ) -> dict[str, dict[int, Fault]]:
    return {agent: {n: dict.fromkeys(probes, (phase, reason)) for n in rounds}
            for agent in agents}


def merge(*fault_sets: dict[str, dict[int, Fault]]) -> dict[str, dict[int, Fault]]:
    merged: dict[str, dict[int, Fault]] = {agent: {} for agent in AGENTS}
    for faults in fault_sets:
        for agent, by_round in faults.items():
            for n, fault in by_round.items():
                merged[agent].setdefault(n, {}).update(fault)
    return merged


@pytest.mark.parametrize("seed", range(12))
def test_two_collectors_name_global_regional_and_service_outages_alike(seed: int) -> None:
    # web and api (service `social`) down everywhere; dns down in eu only.
    faults = merge(outage_faults(range(3, 8), ("web", "api"), AGENTS),
                   outage_faults(range(4, 9), ("dns",),
                                 tuple(a for a in AGENTS if region_of(a) == "eu"),
                                 phase=DNS, reason="dns_servfail"))
    streams = {agent: timeline(agent, 14, faults[agent]) for agent in AGENTS}
    rng = random.Random(seed)
    first = run_collector(streams, rng, max_lag_s=0.05)
    second = run_collector(dict(reversed(list(streams.items()))), rng, max_lag_s=3.0)

    records = {(str(r.kind), r.probe or r.service): r for r in opened(first)}
    assert set(records) >= {("probe", "web"), ("probe", "api"), ("service", "social"),
                            ("probe", "dns")}
    assert records[("probe", "web")].peak_scope is Scope.GLOBAL
    assert records[("probe", "dns")].regions == ("eu",)
    assert records[("probe", "dns")].peak_scope is Scope.REGIONAL
    assert identities(first) == identities(second)
    # Derived from the start each record shows (earliest failure, agent clock).
    for record in opened(first):
        subject = record.probe or record.service or record.region or ""
        assert record.id == outage_id(record.kind, subject, record.started_at)
    # The earliest failing observation of web: round 3 at the first agent's phase.
    assert records[("probe", "web")].started_at == streams[AGENTS[0]][3].stamp_ms / 1000


@pytest.mark.parametrize("seed", range(6))
def test_two_collectors_name_an_isolated_region_alike(seed: int) -> None:
    # ap's own network breaks: every probe fails at both its agents, others see them up.
    ap = tuple(a for a in AGENTS if region_of(a) == "ap")
    faults = merge(outage_faults(range(3, 9), PROBES, ap, reason="connect_timeout"))
    streams = {agent: timeline(agent, 14, faults[agent]) for agent in AGENTS}
    rng = random.Random(1000 + seed)
    first = run_collector(streams, rng, max_lag_s=0.05)
    second = run_collector(streams, rng, max_lag_s=3.0)

    (isolated,) = [r for r in opened(first) if r.kind is OutageKind.REGION_ISOLATED]
    assert isolated.region == "ap"
    assert identities(first) == identities(second)
    # Dated by the agents' own results: the later of the two agents' first failing
    # rounds that made them down on enough probes (both fail every probe from round 3).
    onset = max(streams[a][3].stamp_ms for a in ap) / 1000
    assert isolated.started_at == onset
    assert isolated.id == outage_id(OutageKind.REGION_ISOLATED, "ap", onset)
    assert not [r for r in opened(first) if r.kind is OutageKind.PROBE]


def test_reopened_probe_gets_a_new_id() -> None:
    faults = merge(outage_faults(range(2, 5), ("web",), AGENTS),
                   outage_faults(range(9, 12), ("web",), AGENTS))
    streams = {agent: timeline(agent, 16, faults[agent]) for agent in AGENTS}
    transitions = run_collector(streams, random.Random(7), max_lag_s=0.5)
    first, second = [r for r in opened(transitions) if r.probe == "web"]
    assert first.id != second.id
    resolved = [t.record for t in transitions
                if t.event is OutageEvent.RESOLVED and t.record.probe == "web"]
    assert [r.id for r in resolved] == [first.id, second.id]
    assert second.started_at == streams[AGENTS[0]][9].stamp_ms / 1000


# -- a new record never starts before, nor takes the id of, the subject's last one -----------


class Driver:
    """One classifier, three single-agent regions, one probe; every `now` chosen by the test."""

    def __init__(self, skews_s: dict[str, float]) -> None:
        self.clf = Classifier(ClassificationParams())
        self.skews = skews_s
        self.transitions: list[OutageTransition] = []
        for agent in skews_s:
            self.clf.agent_connected(agent, agent, {}, INTERVAL_S, START)

    def send(self, agent: str, at: float, *, up: bool) -> None:
        common = {"probe": "web", "target": "https://web.example/",
                  "timestamp_ms": round((START + at + self.skews[agent]) * 1000),
                  "interval_ms": int(INTERVAL_S * 1000)}
        if up:
            batch = [Result(**common)]  # type: ignore[arg-type]
        else:
            batch = [Result(success=False, confirmed=c, failed_phase=CONNECT,
                            reason="connect_refused", status_code=0,
                            **common) for c in (False, True)]  # type: ignore[arg-type]
        self.clf.apply(agent, batch, START + at)
        self.collect()

    def tick(self, at: float) -> None:
        self.clf.tick(START + at)
        self.collect()

    def collect(self) -> None:
        self.transitions.extend(t for t in self.clf.take_transitions()
                                if isinstance(t, OutageTransition))

    def records(self, event: OutageEvent) -> list[OutageRecord]:
        return [t.record for t in self.transitions if t.event is event]


@pytest.mark.parametrize("eu_skew_s", [0.0, 30.0])
def test_a_new_record_starts_no_earlier_than_the_last_one_ended(eu_skew_s: float) -> None:
    # eu's agent opens a regional record; it resolves at +30 s. Then us's agent, whose clock
    # is 30 s behind, fails with stamps from before that end: the new record is clamped to
    # it. With eu's clock 30 s ahead, the first record's start (its id) is +30 s too: the
    # clamped start would give the same id, so it moves on by 1 ms.
    drive = Driver({"eu": eu_skew_s, "us": -30.0, "ap": 0.0})
    for at in (0.0, 10.0, 20.0, 30.0, 40.0, 50.0):
        drive.send("us", at + 0.1, up=True)
        drive.send("ap", at + 0.2, up=True)
    drive.send("eu", 0.0, up=False)
    drive.send("eu", 10.0, up=False)  # a lone agent's second failure: eu is down
    drive.tick(20.5)  # the regional record's scope hold runs out: it opens
    drive.send("eu", 21.0, up=True)
    drive.send("eu", 30.0, up=True)  # the second up: eu recovers, the record resolves
    drive.send("eu", 40.0, up=True)
    drive.send("eu", 50.0, up=True)
    (first,) = [r for r in drive.records(OutageEvent.RESOLVED) if r.probe == "web"]
    assert first.ended_at == START + 30.0
    first_start = START + eu_skew_s  # eu's first failure, on its own clock
    assert first.id == outage_id(OutageKind.PROBE, "web", first_start)

    # us fails at +59.9 and +69.9, stamped +29.9 and +39.9 on its clock: its streak began
    # before the first record ended.
    for at in (59.9, 69.9):
        drive.send("eu", at - 0.2, up=True)
        drive.send("ap", at - 0.1, up=True)
        drive.send("us", at, up=False)
    opened_records = [r for r in drive.records(OutageEvent.OPENED) if r.probe == "web"]
    assert len(opened_records) == 2, opened_records
    second = opened_records[1]
    assert second.regions == ("us",)
    assert second.id != first.id
    expected_start = first.ended_at
    assert expected_start is not None
    if eu_skew_s:
        expected_start += 0.001  # the clamped start gave the first record's id
    assert second.started_at == pytest.approx(expected_start, abs=1e-6)
    assert second.id == outage_id(OutageKind.PROBE, "web", expected_start)
