"""The classifier, row by row of DESIGN.md's classification table, on a small fake fleet.

`Fleet` is the scenario helper (also used by test_classify_properties.py): agents in regions
report every probe once per round, in time order; a failing pair sends a first (unconfirmed)
failure and then the confirmed re-probe, as a real agent does. After each round the clock
moves one interval on and `tick` runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from probenet.collector.classify import Classifier, PairSample, phase_name, target_state
from probenet.collector.model import (
    PHASE_NAMES,
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    RegionVerdict,
    Scope,
    TargetState,
)
from support.classifier_fleet import (
    CONNECT,
    DNS,
    DOWN,
    GLOBAL,
    PROBES,
    REGIONAL,
    START,
    TLS,
    UNKNOWN,
    UP,
    Down,
    Fleet,
    Result,
    summary,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(frozen=True)
class Case:
    """A scenario: rounds of faults, then the expected states, verdicts and open records."""

    name: str
    regions: Mapping[str, int]
    rounds: Sequence[Sequence[Down]]
    states: Mapping[str, TargetState] = field(default_factory=dict)
    verdicts: Mapping[str, Mapping[str, RegionVerdict]] = field(default_factory=dict)
    outages: Sequence[tuple[str, str | None, str, tuple[str, ...]]] = ()
    impaired: frozenset[str] = frozenset()
    networks: Mapping[str, str] = field(default_factory=dict)
    warmup: int = 2


WEB = ("web",)
BROKEN_EU1 = Down(agents=("eu-1",), phase=DNS, reason="dns_timeout")

CASES = [
    Case(
        name="global: down in every reporting region",
        regions={"eu": 2, "us": 2, "ap": 2},
        rounds=[[Down(WEB)]] * 2,
        states={"web": GLOBAL, "api": TargetState.UP},
        verdicts={"web": {"eu": DOWN, "us": DOWN, "ap": DOWN}},
        outages=[("probe", "web", "global", ("ap", "eu", "us"))],
    ),
    Case(
        name="global: 4 of 5 regions is the 80% threshold",
        regions={"a": 2, "b": 2, "c": 2, "d": 2, "e": 2},
        rounds=[[Down(WEB, regions=("a", "b", "c", "d"))]] * 2,
        states={"web": GLOBAL},
        outages=[("probe", "web", "global", ("a", "b", "c", "d"))],
    ),
    Case(
        name="regional: down in one region, up in the others",
        regions={"eu": 2, "us": 2, "ap": 2},
        rounds=[[Down(WEB, regions=("eu",))]] * 2,
        states={"web": REGIONAL},
        verdicts={"web": {"eu": DOWN, "us": UP, "ap": UP}},
        outages=[("probe", "web", "regional", ("eu",))],
    ),
    Case(
        name="regional: 3 of 5 regions is below the global threshold",
        regions={"a": 2, "b": 2, "c": 2, "d": 2, "e": 2},
        rounds=[[Down(WEB, regions=("a", "b", "c"))]] * 2,
        states={"web": REGIONAL},
        outages=[("probe", "web", "regional", ("a", "b", "c"))],
    ),
    Case(
        name="unknown: one reporting region is never an outage",
        regions={"eu": 3},
        rounds=[[Down(WEB)]] * 3,
        states={"web": TargetState.UNKNOWN, "api": TargetState.UNKNOWN},
        verdicts={"web": {"eu": DOWN}},
    ),
    Case(
        name="lone agent: one confirmed failure alone is not enough",
        regions={"eu": 1, "us": 2, "ap": 2},
        rounds=[[Down(WEB, regions=("eu",))]],
        states={"web": TargetState.UP},
        verdicts={"web": {"eu": UP, "us": UP, "ap": UP}},
    ),
    Case(
        name="lone agent: two confirmed failures in a row are",
        regions={"eu": 1, "us": 2, "ap": 2},
        rounds=[[Down(WEB, regions=("eu",))]] * 2,
        states={"web": REGIONAL},
        verdicts={"web": {"eu": DOWN, "us": UP, "ap": UP}},
        outages=[("probe", "web", "regional", ("eu",))],
    ),
    Case(
        name="lone agents: one confirmed failure each, corroborated by another region",
        regions={"eu": 1, "us": 1},
        rounds=[[Down(WEB)]],
        states={"web": GLOBAL},
        verdicts={"web": {"eu": DOWN, "us": DOWN}},
        outages=[("probe", "web", "global", ("eu", "us"))],
    ),
    Case(
        name="lone agent: corroborated by a larger region's majority",
        regions={"eu": 1, "us": 2, "ap": 2},
        rounds=[[Down(WEB, regions=("eu", "us"))]],
        states={"web": REGIONAL},
        verdicts={"web": {"eu": DOWN, "us": DOWN, "ap": UP}},
        outages=[("probe", "web", "regional", ("eu", "us"))],
    ),
    Case(
        name="tie is up: one of two agents down",
        regions={"eu": 2, "us": 2},
        rounds=[[Down(WEB, agents=("eu-1",))]] * 3,
        states={"web": TargetState.UP},
        verdicts={"web": {"eu": UP, "us": UP}},
    ),
    Case(
        name="tie is up: two of four agents down",
        regions={"eu": 4, "us": 2},
        rounds=[[Down(WEB, agents=("eu-1", "eu-2"))]] * 3,
        states={"web": TargetState.UP},
        verdicts={"web": {"eu": UP, "us": UP}},
    ),
    Case(
        name="strict majority is down: two of three agents",
        regions={"eu": 3, "us": 2},
        rounds=[[Down(WEB, agents=("eu-1", "eu-2"))]] * 2,
        states={"web": REGIONAL},
        verdicts={"web": {"eu": DOWN, "us": UP}},
        outages=[("probe", "web", "regional", ("eu",))],
    ),
    Case(
        name="impaired agent: left out, its region falls back to its other agent",
        regions={"eu": 2, "us": 2, "ap": 2},
        rounds=[[BROKEN_EU1]] * 3,
        states=dict.fromkeys(PROBES, TargetState.UP),
        verdicts={p: {"eu": UP, "us": UP, "ap": UP} for p in PROBES},
        impaired=frozenset({"eu-1"}),
    ),
    Case(
        name="impaired agent: the region's other agent still reports a real regional outage",
        regions={"eu": 2, "us": 2, "ap": 2},
        rounds=[[BROKEN_EU1], [BROKEN_EU1], [BROKEN_EU1, Down(WEB, agents=("eu-2",))],
                [BROKEN_EU1, Down(WEB, agents=("eu-2",))]],
        states={"web": REGIONAL, "api": TargetState.UP},
        verdicts={"web": {"eu": DOWN, "us": UP, "ap": UP}},
        outages=[("probe", "web", "regional", ("eu",))],
        impaired=frozenset({"eu-1"}),
    ),
    Case(
        name="lone impaired agent: its region goes unknown, no outage",
        regions={"eu": 1, "us": 1, "ap": 1},
        rounds=[[BROKEN_EU1]] * 4,
        states=dict.fromkeys(PROBES, TargetState.UP),
        verdicts={p: {"eu": UNKNOWN, "us": UP, "ap": UP} for p in PROBES},
        impaired=frozenset({"eu-1"}),
    ),
    Case(
        name="isolated region: every agent impaired, distinct networks: one region event",
        regions={"eu": 2, "us": 2, "ap": 2},
        networks={"eu-1": "as1", "eu-2": "as2"},
        rounds=[[Down(regions=("eu",))]] * 4,
        states=dict.fromkeys(PROBES, TargetState.UP),
        verdicts={p: {"eu": UNKNOWN, "us": UP, "ap": UP} for p in PROBES},
        outages=[("region_isolated", "eu", "regional", ("eu",))],
        impaired=frozenset({"eu-1", "eu-2"}),
    ),
    Case(
        name="not isolated: every agent impaired but on one network",
        regions={"eu": 2, "us": 2, "ap": 2},
        networks={"eu-1": "as1", "eu-2": "as1"},
        rounds=[[Down(regions=("eu",))]] * 4,
        states=dict.fromkeys(PROBES, TargetState.UP),
        verdicts={p: {"eu": UNKNOWN, "us": UP, "ap": UP} for p in PROBES},
        impaired=frozenset({"eu-1", "eu-2"}),
    ),
    Case(
        name="not impaired: fewer than 3 probes down",
        regions={"eu": 1, "us": 1, "ap": 1},
        rounds=[[Down(("web", "api"), regions=("eu",))]] * 2,
        states={"web": REGIONAL, "api": REGIONAL, "dns": TargetState.UP},
        outages=[("probe", "api", "regional", ("eu",)), ("probe", "web", "regional", ("eu",))],
    ),
    Case(
        name="not impaired: the other regions see those probes down too (a real outage)",
        regions={"eu": 1, "us": 1, "ap": 1},
        rounds=[[Down(("web", "api", "dns", "cdn"))]] * 2,
        states={"web": GLOBAL, "cdn": GLOBAL, "mail": TargetState.UP},
        outages=[("probe", p, "global", ("ap", "eu", "us")) for p in ("api", "cdn", "dns", "web")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_classification_table(case: Case) -> None:
    fleet = Fleet(case.regions, networks=case.networks)
    fleet.rounds(case.warmup)
    assert not fleet.events(), "a healthy fleet opens nothing"
    for downs in case.rounds:
        fleet.round(*downs)
    for probe, state in case.states.items():
        assert fleet.state(probe) is state, probe
    for probe, verdicts in case.verdicts.items():
        assert fleet.verdicts(probe) == verdicts, probe
    kinds = {OutageKind.PROBE: 0, OutageKind.SERVICE: 1, OutageKind.REGION_ISOLATED: 2}
    got = sorted((summary(r) for r in fleet.open()), key=lambda s: (kinds[OutageKind(s[0])], s[1]))
    assert got == sorted(case.outages, key=lambda s: (kinds[OutageKind(s[0])], s[1]))
    impaired = {a.id for a in fleet.clf.agents() if a.impaired}
    assert impaired == case.impaired
    # Opened once each: no record was opened and closed along the way.
    assert len(fleet.events(OutageEvent.OPENED)) == len(case.outages)
    assert not fleet.clf.monitoring_degraded


def test_isolated_region_resolves_when_its_agents_recover() -> None:
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2}, networks={"eu-1": "as1", "eu-2": "as2"})
    fleet.rounds(2)
    fleet.rounds(4, Down(regions=("eu",)))
    assert fleet.clf.isolated_regions() == {"eu"}
    (record,) = fleet.open()
    assert record.kind is OutageKind.REGION_ISOLATED
    assert record.probe is None
    assert record.region == "eu"
    fleet.rounds(3)
    assert fleet.clf.isolated_regions() == frozenset()
    assert not fleet.open()
    resolved = fleet.events(OutageEvent.RESOLVED)
    assert [t.record.id for t in resolved] == [record.id]
    assert fleet.events(kind=OutageKind.PROBE) == []
    assert not any(a.impaired for a in fleet.clf.agents())


def test_impairment_waits_until_other_regions_see_those_probes_up() -> None:
    # us reports nothing at first: eu-1's failures cannot be told from an outage yet.
    fleet = Fleet({"eu": 2, "us": 2})
    fleet.round(silent=("us-1", "us-2"))
    fleet.round(BROKEN_EU1, silent=("us-1", "us-2"))
    assert not fleet.agent("eu-1")["impaired"]
    fleet.round(BROKEN_EU1)  # us now sees every probe up: eu-1 is the problem
    assert fleet.agent("eu-1")["impaired"]
    fleet.rounds(2)  # eu-1 heals: fewer than half of its probes down
    assert not fleet.agent("eu-1")["impaired"]
    assert not fleet.events()


def test_lone_broken_agent_opens_nothing_whatever_the_reporting_order() -> None:
    # The worst order: the others report before eu-1 in its first broken round (their ups
    # predate its failures: no evidence yet) and after it in the second, when its failures
    # are confirmed twice. eu-1 is a suspect by then: its word alone opens nothing.
    fleet = Fleet({"eu": 1, "us": 1, "ap": 1})
    fleet.rounds(2)
    fleet.round(BROKEN_EU1, order=("us-1", "ap-1", "eu-1"))
    fleet.round(BROKEN_EU1, order=("eu-1", "us-1", "ap-1"))
    assert fleet.events() == []
    assert fleet.agent("eu-1")["impaired"]
    fleet.rounds(3, BROKEN_EU1 )
    assert fleet.events() == []
    assert all(fleet.verdicts(p)["eu"] is UNKNOWN for p in PROBES)


def test_agent_impaired_by_an_outage_that_spreads_is_released() -> None:
    # dns, cdn and mail fail at eu-1 first; us and ap still see them up afterwards, so eu-1
    # is (rightly, so far) impaired. Then the outage reaches everyone: not eu-1's network.
    fleet = Fleet({"eu": 1, "us": 1, "ap": 1})
    fleet.rounds(2)
    three = Down(("dns", "cdn", "mail"), agents=("eu-1",))
    fleet.rounds(2, three)
    assert fleet.agent("eu-1")["impaired"]
    assert fleet.open() == []
    everywhere = Down(("dns", "cdn", "mail"))
    fleet.rounds(2, everywhere)
    assert not fleet.agent("eu-1")["impaired"]
    fleet.rounds(1, everywhere)
    for probe in ("dns", "cdn", "mail"):
        assert fleet.verdicts(probe) == {"eu": DOWN, "us": DOWN, "ap": DOWN}
        assert fleet.state(probe) is GLOBAL
    assert sorted(r.probe or "" for r in fleet.open()) == ["cdn", "dns", "mail"]


def test_agent_released_from_impairment_must_confirm_its_failures_again() -> None:
    # eu-1 (alone in eu) heals probe by probe: its remaining failures, carried over from
    # the impaired time, are not firm until confirmed again: nothing opens on the way.
    fleet = Fleet({"eu": 1, "us": 1, "ap": 1})
    fleet.rounds(2)
    fleet.rounds(3, BROKEN_EU1)
    assert fleet.agent("eu-1")["impaired"]
    fleet.round(Down(("mail", "auth"), agents=("eu-1",)))
    assert not fleet.agent("eu-1")["impaired"]
    assert fleet.open() == []
    fleet.round()
    assert fleet.open() == []
    assert fleet.events() == []


# -- stale and disconnected agents ------------------------------------------------------------


def test_stale_agent_is_left_out() -> None:
    # eu-2 goes silent while eu-1 sees web down: a tie (up) until eu-2 is stale, then eu-1
    # is the region's only fresh agent and its repeated confirmed failures make eu down.
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2})
    fleet.rounds(2)
    web_eu1 = Down(WEB, agents=("eu-1",))
    fleet.rounds(2, web_eu1, silent=("eu-2",))
    assert fleet.verdicts("web")["eu"] is UP
    assert not fleet.agent("eu-2")["stale"]
    fleet.rounds(2, web_eu1, silent=("eu-2",))
    assert fleet.agent("eu-2")["stale"]
    assert fleet.verdicts("web")["eu"] is DOWN
    assert fleet.state("web") is REGIONAL
    (record,) = fleet.open()
    assert record.regions == ("eu",)


def test_stale_lone_agent_makes_its_region_unknown_and_staleness_clears_on_results() -> None:
    fleet = Fleet({"eu": 1, "us": 1, "ap": 1})
    fleet.rounds(2)
    fleet.rounds(4, silent=("eu-1",))
    assert fleet.agent("eu-1")["stale"]
    assert fleet.verdicts("api") == {"eu": UNKNOWN, "us": UP, "ap": UP}
    fleet.round()
    assert not fleet.agent("eu-1")["stale"]
    assert fleet.verdicts("api") == {"eu": UP, "us": UP, "ap": UP}
    assert not fleet.events()


def test_disconnected_agent_counts_until_stale() -> None:
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2})
    fleet.rounds(2)
    fleet.clf.agent_disconnected("eu-2", fleet.now)
    assert fleet.agent("eu-2")["connected"] is False
    assert fleet.agent("eu-2")["stale"] is False
    web_eu1 = Down(WEB, agents=("eu-1",))
    fleet.round(web_eu1, silent=("eu-2",))
    fleet.round(web_eu1, silent=("eu-2",))
    # eu-2's last verdict (up) still counts: a tie is up.
    assert fleet.verdicts("web")["eu"] is UP
    fleet.rounds(2, web_eu1, silent=("eu-2",))
    assert fleet.agent("eu-2")["stale"] is True
    assert fleet.verdicts("web")["eu"] is DOWN
    # It reconnects and reports: counted again, the tie is back.
    fleet.connect("eu-2")
    assert fleet.agent("eu-2")["connected"] is True
    fleet.round(web_eu1)
    assert fleet.agent("eu-2")["stale"] is False
    assert fleet.verdicts("web")["eu"] is DOWN  # down regions still need 2 ups
    fleet.round(web_eu1)
    assert fleet.verdicts("web")["eu"] is UP


def test_stale_pair_is_left_out_when_the_agent_stops_running_that_probe() -> None:
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2})
    fleet.rounds(2)
    # eu-2 keeps reporting, but no longer runs web: its web verdict (up) ages out.
    fleet.probes_of["eu-2"] = ("api", "dns", "cdn", "mail", "auth")
    web_eu1 = Down(WEB, agents=("eu-1",))
    fleet.rounds(2, web_eu1)
    assert fleet.verdicts("web")["eu"] is UP  # eu-2's last web verdict is still fresh
    fleet.rounds(2, web_eu1)
    assert fleet.agent("eu-2")["stale"] is False
    assert fleet.verdicts("web")["eu"] is DOWN  # eu-1 alone, 4 confirmed failures
    assert fleet.verdicts("api")["eu"] is UP
    (record,) = fleet.open()
    assert (record.probe, record.regions) == ("web", ("eu",))


# -- recovery hysteresis ----------------------------------------------------------------------


def test_recovery_needs_two_consecutive_up_verdicts() -> None:
    fleet = Fleet({"eu": 1, "us": 1, "ap": 1})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB, regions=("eu",)))
    (record,) = fleet.open()
    assert fleet.verdicts("web")["eu"] is DOWN
    fleet.round()
    assert fleet.verdicts("web")["eu"] is DOWN, "one up result is not a recovery"
    assert fleet.open() == [record]
    fleet.round(Down(WEB, regions=("eu",)))  # fails again: the count starts over
    fleet.round()
    assert fleet.verdicts("web")["eu"] is DOWN
    fleet.round()
    assert fleet.verdicts("web")["eu"] is UP
    assert fleet.state("web") is TargetState.UP
    assert not fleet.open()
    (resolved,) = fleet.events(OutageEvent.RESOLVED)
    assert resolved.record.id == record.id
    assert resolved.record.ended_at == resolved.at
    assert len(fleet.events(OutageEvent.OPENED)) == 1


def test_region_gone_unknown_keeps_its_down_memory() -> None:
    fleet = Fleet({"eu": 1, "us": 1, "ap": 1})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB, regions=("eu",)))
    fleet.rounds(4, silent=("eu-1",))  # eu-1 goes stale: eu unknown, record stays open
    assert fleet.verdicts("web")["eu"] is UNKNOWN
    fleet.round()  # back, web up: still needs a second up
    assert fleet.verdicts("web")["eu"] is DOWN
    fleet.round()
    assert fleet.verdicts("web")["eu"] is UP


def test_open_record_stays_open_while_the_state_is_unknown() -> None:
    fleet = Fleet({"eu": 1, "us": 1})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB))
    (record,) = fleet.open()
    assert record.scope is Scope.GLOBAL
    fleet.rounds(4, Down(WEB), silent=("us-1",))  # us stale: one region reports: unknown
    assert fleet.state("web") is TargetState.UNKNOWN
    assert fleet.open() == [record]
    assert not fleet.events(OutageEvent.RESOLVED)


# -- monitoring degraded ----------------------------------------------------------------------


def test_monitoring_degraded_blocks_new_outages_then_lets_them_open() -> None:
    fleet = Fleet({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})
    fleet.rounds(2)
    quiet = ("c-1", "d-1", "e-1")
    fleet.rounds(4, silent=quiet)
    assert fleet.clf.monitoring_degraded
    (degraded,) = fleet.open()
    assert degraded.kind is OutageKind.MONITORING_DEGRADED
    assert degraded.scope is Scope.GLOBAL
    fleet.rounds(3, Down(WEB, regions=("a",)), silent=quiet)
    assert fleet.state("web") is REGIONAL
    assert fleet.open(OutageKind.PROBE) == [], "no outage on degraded evidence"
    fleet.round(Down(WEB, regions=("a",)))  # the others come back
    assert not fleet.clf.monitoring_degraded
    (probe_record,) = fleet.open(OutageKind.PROBE)
    assert probe_record.probe == "web"
    assert probe_record.regions == ("a",)
    events = [(t.event, t.record.kind) for t in fleet.events()]
    assert events == [
        (OutageEvent.OPENED, OutageKind.MONITORING_DEGRADED),
        (OutageEvent.RESOLVED, OutageKind.MONITORING_DEGRADED),
        (OutageEvent.OPENED, OutageKind.PROBE),
    ]


def test_existing_outage_keeps_updating_and_resolves_while_degraded() -> None:
    fleet = Fleet({"a": 2, "b": 2, "c": 2, "d": 2, "e": 2})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB, regions=("a",)))
    (record,) = fleet.open()
    quiet = ("c-1", "c-2", "d-1", "d-2", "e-1", "e-2")
    fleet.rounds(4, Down(WEB, regions=("a", "b")), silent=quiet)
    assert fleet.clf.monitoring_degraded
    updated = fleet.open(OutageKind.PROBE)[0]
    assert updated.id == record.id
    assert updated.regions == ("a", "b")
    assert updated.scope is Scope.GLOBAL  # a and b are the only regions reporting
    fleet.rounds(2, silent=quiet)
    assert fleet.open(OutageKind.PROBE) == []


# -- flapping ---------------------------------------------------------------------------------


def test_flapping_is_reported_once_and_holds_one_record() -> None:
    params = ClassificationParams(flap_window_s=600.0)
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2}, params=params)
    fleet.rounds(2)
    web_eu = Down(WEB, regions=("eu",))
    for _ in range(6):  # 12 state changes, 20-30 s apart: well inside the window
        fleet.rounds(2, web_eu)  # a region alone needs 2 confirmed failures in a row
        fleet.rounds(2)
    assert fleet.clf.flapping_probes() == {"web"}
    assert fleet.clf.target("web").flapping  # type: ignore[union-attr]
    flags = [c.view.flapping for c in fleet.target_changes("web")]
    assert flags.count(True) >= 1
    assert sum(1 for a, b in itertools.pairwise([False, *flags]) if b and not a) == 1
    opened = fleet.events(OutageEvent.OPENED)
    # Changes 1..4 open and resolve twice; the 5th change makes it flapping: a third record
    # opens and stays open through every later recovery.
    assert len(opened) == 3
    assert len(fleet.events(OutageEvent.RESOLVED)) == 2
    held = fleet.open()
    assert [r.id for r in held] == [opened[-1].record.id]
    assert fleet.state("web") is TargetState.UP
    # Quiet long enough for the changes to leave the window: flapping clears, record resolves.
    fleet.rounds(int(600 / fleet.interval_s) + 2)
    assert fleet.clf.flapping_probes() == frozenset()
    assert not fleet.open()
    assert fleet.events(OutageEvent.RESOLVED)[-1].record.id == opened[-1].record.id


def test_a_flapping_record_tells_the_truth_while_held_open() -> None:
    params = ClassificationParams(flap_window_s=600.0)
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2}, params=params)
    fleet.rounds(2)
    web_eu = Down(WEB, regions=("eu",))
    for _ in range(6):
        fleet.rounds(2, web_eu)
        fleet.rounds(2)
    (held,) = fleet.open()
    # Up everywhere now: held open because it flaps, and it says so; nothing is down now.
    assert (held.flapping, held.regions, held.regions_ever) == (True, (), ("eu",))
    fleet.rounds(2, web_eu)  # down again while flapping: the record names the region again
    (again,) = fleet.open()
    assert (again.id, again.flapping, again.regions) == (held.id, True, ("eu",))
    fleet.rounds(2)
    last_up = max(c.at for c in fleet.target_changes("web")
                  if c.view.state is TargetState.UP)
    fleet.rounds(int(600 / fleet.interval_s) + 2)
    resolved = fleet.events(OutageEvent.RESOLVED)[-1]
    assert resolved.record.id == held.id
    # Flapping ends after a sixth of the window without a change (not the whole window),
    # and the record ends when the probe last turned up, not when the flapping died down.
    assert 100 <= resolved.at - last_up < 200
    assert resolved.record.ended_at == last_up
    assert not resolved.record.flapping


# -- scope changes inside one record ----------------------------------------------------------


def test_scope_escalates_and_falls_inside_one_record() -> None:
    fleet = Fleet({"a": 2, "b": 2, "c": 2, "d": 2, "e": 2})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB, regions=("a",)))
    (first,) = fleet.open()
    assert (first.scope, first.peak_scope, first.regions) == (Scope.REGIONAL, Scope.REGIONAL,
                                                              ("a",))
    fleet.rounds(2, Down(WEB, regions=("a", "b", "c", "d")))
    (second,) = fleet.open()
    assert second.id == first.id
    assert (second.scope, second.peak_scope) == (Scope.GLOBAL, Scope.GLOBAL)
    assert second.regions == ("a", "b", "c", "d")
    fleet.rounds(3, Down(WEB, regions=("a",)))
    (third,) = fleet.open()
    assert third.id == first.id
    assert (third.scope, third.peak_scope) == (Scope.REGIONAL, Scope.GLOBAL)
    assert third.regions == ("a",)
    assert third.regions_ever == ("a", "b", "c", "d")
    scope_events = [(t.record.scope, t.record.id) for t in
                    fleet.events(OutageEvent.SCOPE_CHANGED)]
    assert scope_events == [(Scope.GLOBAL, first.id), (Scope.REGIONAL, first.id)]
    assert len(fleet.events(OutageEvent.OPENED)) == 1
    fleet.rounds(2)
    (resolved,) = fleet.events(OutageEvent.RESOLVED)
    assert resolved.record.id == first.id
    assert resolved.record.peak_scope is Scope.GLOBAL


# -- service records --------------------------------------------------------------------------


def test_service_record_for_two_probes_of_one_service() -> None:
    services = {"web": "social", "photos": "social", "chat": "social"}
    probes = ("web", "photos", "chat", "mail")
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2}, probes=probes, services=services)
    fleet.rounds(2)
    fleet.rounds(2, Down(("web",), phase=TLS, reason="tls_handshake"))
    assert fleet.open(OutageKind.SERVICE) == [], "one probe of a service is not a service outage"
    fleet.rounds(2, Down(("web", "photos"), phase=TLS, reason="tls_handshake"))
    (service,) = fleet.open(OutageKind.SERVICE)
    assert service.service == "social"
    assert service.probe is None
    assert service.probes == ("photos", "web")
    assert service.scope is Scope.GLOBAL
    assert service.regions == ("ap", "eu", "us")
    assert (service.phase, service.reason) == ("tls", "tls_handshake")
    web = next(r for r in fleet.open(OutageKind.PROBE) if r.probe == "web")
    assert service.started_at == web.started_at
    # A third probe joins: extended, never shrunk.
    fleet.rounds(2, Down(("web", "photos", "chat"), phase=TLS, reason="tls_handshake"))
    (service,) = fleet.open(OutageKind.SERVICE)
    assert service.probes == ("chat", "photos", "web")
    fleet.rounds(2, Down(("chat",), phase=TLS, reason="tls_handshake"))
    (service,) = fleet.open(OutageKind.SERVICE)
    assert service.probes == ("chat", "photos", "web")
    assert {r.probe for r in fleet.open(OutageKind.PROBE)} == {"chat"}
    fleet.rounds(2)
    assert not fleet.open()
    service_events = [t.event for t in fleet.events(kind=OutageKind.SERVICE)]
    assert service_events[0] is OutageEvent.OPENED
    assert service_events[-1] is OutageEvent.RESOLVED
    assert service_events.count(OutageEvent.OPENED) == 1
    # The service resolves after its last probe.
    kinds = [(t.event, t.record.kind) for t in fleet.events(OutageEvent.RESOLVED)]
    assert kinds[-1] == (OutageEvent.RESOLVED, OutageKind.SERVICE)


def test_the_motivating_case_four_services_of_one_provider_down_everywhere() -> None:
    # Every agent runs 6 probes, 4 of them the provider's: a real global outage of most of
    # each agent's probes must not be mistaken for broken agents, and must be fast.
    services = dict.fromkeys(("web", "photos", "chat", "threads"), "social")
    probes = ("web", "photos", "chat", "threads", "bank", "news")
    fleet = Fleet({"eu": 1, "us": 2, "ap": 1, "sa": 3}, probes=probes, services=services)
    fleet.rounds(3)
    onset = fleet.now
    social = Down(("web", "photos", "chat", "threads"), phase=DNS, reason="dns_servfail")
    fleet.round(social)
    assert fleet.now - onset <= 2 * fleet.interval_s
    assert not any(a.impaired for a in fleet.clf.agents())
    records = fleet.open(OutageKind.PROBE)
    assert sorted(r.probe or "" for r in records) == ["chat", "photos", "threads", "web"]
    for record in records:
        assert record.scope is Scope.GLOBAL
        assert record.regions == ("ap", "eu", "sa", "us")
        assert (record.phase, record.reason) == ("dns", "dns_servfail")
        assert onset <= record.started_at <= record.detected_at <= onset + fleet.interval_s
    (service,) = fleet.open(OutageKind.SERVICE)
    assert service.probes == ("chat", "photos", "threads", "web")
    assert (service.scope, service.phase, service.reason) == (Scope.GLOBAL, "dns",
                                                              "dns_servfail")
    fleet.rounds(3, social)
    assert len(fleet.events(OutageEvent.OPENED)) == 5
    assert not any(a.impaired for a in fleet.clf.agents())
    assert fleet.state("bank") is TargetState.UP


# -- phase, reason, times ---------------------------------------------------------------------


def test_phase_and_reason_are_the_most_seen_among_failing_results() -> None:
    fleet = Fleet({"eu": 3, "us": 3, "ap": 3})
    fleet.rounds(2)
    by_agent = {"eu-1": (CONNECT, "connect_refused"), "eu-2": (DNS, "dns_servfail"),
                "eu-3": (DNS, "dns_servfail"), "us-1": (DNS, "dns_servfail"),
                "us-2": (DNS, "dns_servfail"), "us-3": (CONNECT, "connect_refused"),
                "ap-1": (DNS, "dns_servfail"), "ap-2": (TLS, "tls_handshake"),
                "ap-3": (DNS, "dns_servfail")}

    def fault(agent: str, probe: str) -> tuple[int, str] | None:
        return by_agent[agent] if probe == "web" else None

    fleet.round(fault=fault)
    fleet.round(fault=fault)
    (record,) = fleet.open()
    assert (record.phase, record.reason) == ("dns", "dns_servfail")

    # The failure changes: once the new one is seen more, the record follows.
    def connect_fault(agent: str, probe: str) -> tuple[int, str] | None:
        return (CONNECT, "connect_refused") if probe == "web" else None

    fleet.rounds(1)
    for _ in range(4):
        fleet.round(fault=connect_fault)
    (record,) = fleet.open()
    assert (record.phase, record.reason) == ("connect", "connect_refused")
    assert OutageEvent.UPDATED in [t.event for t in fleet.events()]


def test_started_at_is_the_first_failure_on_the_agent_clock_and_never_after_detection() -> None:
    fleet = Fleet({"eu": 2, "us": 2}, clock_skew_s={"eu-1": -3.0})
    fleet.rounds(2)
    first_failure_round = fleet.now
    fleet.rounds(2, Down(WEB))
    (record,) = fleet.open()
    assert record.started_at <= record.detected_at
    # eu-1's clock is 3 s behind and it reported first: its first failure is the earliest.
    expected = first_failure_round + fleet.interval_s / 5 - 3.0
    assert record.started_at == pytest.approx(expected, abs=0.002)
    assert record.detected_at > first_failure_round


def test_started_at_is_clamped_when_an_agent_clock_runs_ahead() -> None:
    fleet = Fleet({"eu": 1, "us": 1}, clock_skew_s={"eu-1": 30.0, "us-1": 30.0})
    fleet.rounds(2)
    fleet.round(Down(WEB))
    (record,) = fleet.open()
    assert record.started_at <= record.detected_at


def test_wildly_wrong_agent_clock_falls_back_to_the_collector_clock() -> None:
    fleet = Fleet({"eu": 1, "us": 1}, clock_skew_s={"eu-1": -86_400.0, "us-1": -86_400.0})
    fleet.rounds(2)
    before = fleet.now
    fleet.round(Down(WEB))
    (record,) = fleet.open()
    assert before <= record.started_at <= record.detected_at


# -- restore after a restart ------------------------------------------------------------------


def _restarted(fleet: Fleet, **kwargs: object) -> Fleet:
    """A new collector process: a fresh classifier adopting the open records."""
    records = fleet.open()
    clf = Classifier(fleet.params)
    clf.restore(records, fleet.now)
    assert clf.take_transitions() == []
    regions: dict[str, int] = {}
    for region in fleet.region_of.values():
        regions[region] = regions.get(region, 0) + 1
    restarted = Fleet(regions, fleet.probes, interval_s=fleet.interval_s, params=fleet.params,
                      networks=fleet.networks, services=fleet.services, start=fleet.now,
                      classifier=clf, **kwargs)  # type: ignore[arg-type]
    assert restarted.open() == records
    return restarted


def test_restore_keeps_the_id_and_closes_only_on_evidence() -> None:
    # One agent per region: a recovery takes two rounds (two up results from the region).
    fleet = Fleet({"eu": 1, "us": 1, "ap": 1})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB, regions=("eu",)))
    (record,) = fleet.open()
    after = _restarted(fleet)
    assert after.state("web") is TargetState.UNKNOWN
    after.rounds(3, silent=after.agents)  # nobody reports: nothing is known, stays open
    assert after.open(OutageKind.PROBE) == [record]
    after.round()  # first up: not yet a recovery
    assert [r.id for r in after.open(OutageKind.PROBE)] == [record.id]
    after.round()
    assert after.open(OutageKind.PROBE) == []
    (resolved,) = after.events(OutageEvent.RESOLVED, kind=OutageKind.PROBE)
    assert resolved.record.id == record.id
    assert not after.events(OutageEvent.OPENED, kind=OutageKind.PROBE)


def test_restore_continues_the_same_record_when_the_fault_persists() -> None:
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2, "sa": 2, "af": 2})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB, regions=("eu",)))
    (record,) = fleet.open()
    after = _restarted(fleet)
    after.rounds(2, Down(WEB, regions=("eu", "us", "ap", "sa")))
    (continued,) = after.open(OutageKind.PROBE)
    assert continued.id == record.id
    assert continued.scope is Scope.GLOBAL
    assert continued.detected_at == record.detected_at
    assert continued.regions_ever == ("ap", "eu", "sa", "us")
    assert not after.events(OutageEvent.OPENED, kind=OutageKind.PROBE)


def test_restore_service_and_isolated_records() -> None:
    services = {"web": "social", "photos": "social"}
    probes = ("web", "photos", "mail", "dns", "cdn", "api")
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2}, probes=probes, services=services,
                  networks={"eu-1": "as1", "eu-2": "as2"})
    fleet.rounds(2)
    fleet.rounds(4, Down(("web", "photos"), regions=("us", "ap")), Down(regions=("eu",)))
    kinds = sorted(str(r.kind) for r in fleet.open())
    assert kinds == ["probe", "probe", "region_isolated", "service"]
    before = {r.id for r in fleet.open()}
    after = _restarted(fleet)
    # Nothing reported yet: everything stays open (no evidence of recovery).
    after.rounds(1, silent=after.agents)
    assert {r.id for r in after.open()} == before
    # The fault persists: same records, nothing new opened.
    after.rounds(4, Down(("web", "photos"), regions=("us", "ap")), Down(regions=("eu",)))
    assert {r.id for r in after.open()} == before
    assert not after.events(OutageEvent.OPENED)
    # Everything recovers: everything resolves, once each.
    after.rounds(5)
    assert after.open() == []
    assert sorted(t.record.id for t in after.events(OutageEvent.RESOLVED)) == sorted(before)


def test_restore_monitoring_degraded_resolves_after_a_staleness_window_of_evidence() -> None:
    fleet = Fleet({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})
    fleet.rounds(2)
    fleet.rounds(4, silent=("c-1", "d-1", "e-1"))
    (degraded,) = fleet.open()
    assert degraded.kind is OutageKind.MONITORING_DEGRADED
    after = _restarted(fleet)
    assert after.clf.monitoring_degraded
    after.rounds(2, Down(WEB, regions=("a",)))  # healthy fleet, but not for long enough yet
    assert after.clf.monitoring_degraded
    assert after.open(OutageKind.PROBE) == [], "no outage while degraded, restored or not"
    after.rounds(2, Down(WEB, regions=("a",)))
    assert not after.clf.monitoring_degraded
    (resolved,) = after.events(OutageEvent.RESOLVED)
    assert resolved.record.id == degraded.id
    (opened,) = after.events(OutageEvent.OPENED)
    assert (opened.record.probe, opened.record.regions) == ("web", ("a",))


def test_restore_resolves_a_duplicate_record_for_one_probe() -> None:
    fleet = Fleet({"eu": 2, "us": 2})
    fleet.rounds(2)
    fleet.rounds(2, Down(WEB, regions=("eu",)))
    (record,) = fleet.open()
    twin = OutageRecord(**{**{f: getattr(record, f) for f in record.__dataclass_fields__},
                           "id": "twin", "started_at": record.started_at + 1})
    clf = Classifier(fleet.params)
    clf.restore([twin, record], fleet.now)
    assert [r.id for r in clf.open_outages()] == [record.id]
    (transition,) = clf.take_transitions()
    assert isinstance(transition, OutageTransition)
    assert (transition.event, transition.record.id) == (OutageEvent.RESOLVED, "twin")


# -- read side and small pieces ---------------------------------------------------------------


def test_samples_are_the_latest_result_of_each_pair() -> None:
    clf = Classifier(ClassificationParams())
    clf.agent_connected("eu-1", "eu", {}, 10.0, START)
    clf.apply("eu-1", [Result("web", status_code=200, duration_seconds=0.5),
                       Result("web", success=False, status_code=503, duration_seconds=0.25,
                              failed_phase=PHASE_NAMES.index("validation"),
                              reason="http_status")], START + 1)
    (sample,) = list(clf.samples())
    assert isinstance(sample, PairSample)
    assert (sample.agent, sample.region, sample.probe) == ("eu-1", "eu", "web")
    assert (sample.success, sample.status_code, sample.duration_seconds) == (False, 503, 0.25)
    assert sample.at == START + 1


def test_apply_for_an_agent_that_never_said_hello_is_an_error() -> None:
    clf = Classifier(ClassificationParams())
    with pytest.raises(ValueError, match="never said hello"):
        clf.apply("ghost", [Result("web")], START)


def test_malformed_values_do_not_crash() -> None:
    fleet = Fleet({"eu": 1, "us": 1})
    bad = [Result("web", success=False, confirmed=True, failed_phase=99, reason="",
                  timestamp_ms=-5, interval_ms=0, duration_seconds=float("nan")),
           Result("", success=False, confirmed=True, failed_phase=-1)]
    for agent in fleet.agents:
        fleet.clf.apply(agent, bad, fleet.now)
        fleet.clf.apply(agent, bad, fleet.now + 1)
    fleet.clf.tick(fleet.now + 2)
    (record,) = [r for r in fleet.clf.open_outages() if r.probe == "web"]
    assert record.phase is None
    assert record.reason is None
    assert record.started_at <= record.detected_at


def test_agent_moving_region_takes_its_pairs_along() -> None:
    fleet = Fleet({"eu": 2, "us": 2})
    fleet.rounds(2)
    fleet.connect("eu-2", region="us")
    assert fleet.verdicts("web") == {"eu": UP, "us": UP}
    assert {s.region for s in fleet.clf.samples() if s.agent == "eu-2"} == {"us"}
    assert fleet.agent("eu-2")["region"] == "us"


def test_agent_region_views_and_target_changes() -> None:
    fleet = Fleet({"eu": 1, "us": 1})
    fleet.rounds(2)
    views = fleet.target_changes("web")
    assert views[-1].view.state is TargetState.UP
    assert views[-1].view.regions == {"eu": UP, "us": UP}
    fleet.rounds(1, Down(WEB))
    assert fleet.target_changes("web")[-1].view.state is GLOBAL
    assert fleet.clf.targets()[-1].probe == "web"
    assert [t.probe for t in fleet.clf.targets()] == sorted(PROBES)
    assert fleet.clf.region_verdicts("nope") == {}
    assert fleet.clf.target("nope") is None


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ((), TargetState.UNKNOWN),
        ((DOWN,), TargetState.UNKNOWN),
        ((DOWN, UNKNOWN, UNKNOWN), TargetState.UNKNOWN),
        ((UP, UP), TargetState.UP),
        ((UP, DOWN), REGIONAL),
        ((DOWN, DOWN), GLOBAL),
        ((DOWN, DOWN, DOWN, DOWN, UP), GLOBAL),
        ((DOWN, DOWN, DOWN, UP, UP), REGIONAL),
        ((DOWN, DOWN, UNKNOWN), GLOBAL),
    ],
)
def test_target_state(verdicts: tuple[RegionVerdict, ...], expected: TargetState) -> None:
    assert target_state(verdicts, ClassificationParams()) is expected


def test_phase_name() -> None:
    assert phase_name(1) == "dns"
    assert phase_name(7) == "timeout"
    assert phase_name(0) is None
    assert phase_name(8) is None
    assert phase_name(-1) is None
