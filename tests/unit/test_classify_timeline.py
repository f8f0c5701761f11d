"""Detection quality on a timeline (issue 12): a region losing its network opens no outage,
a global outage is opened as global, a regional one is still found within two intervals."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from probenet.collector.model import ClassificationParams, OutageKind, Scope
from support.classifier_timeline import Timeline

REGIONS = {"r1": 2, "r2": 2, "r3": 2, "r4": 1}


def region_down(region: str, since: float):
    def fault(agent: str, _probe: str, at: float) -> bool:
        return at >= since and agent.startswith(region + "-")
    return fault


def probe_down(probe: str, since: float, regions: tuple[str, ...] = ()):
    def fault(agent: str, name: str, at: float) -> bool:
        return (at >= since and name == probe
                and (not regions or agent.split("-", maxsplit=1)[0] in regions))
    return fault


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), onset=st.floats(0.0, 1.0),
       region=st.sampled_from(["r1", "r2", "r3"]))
def test_a_region_losing_its_network_opens_no_outage_and_is_isolated(seed, onset, region):
    line = Timeline(REGIONS, seed=seed)
    line.run(5)
    since = line.now + onset
    line.run(10, region_down(region, since))
    assert line.records(kinds=(OutageKind.PROBE, OutageKind.SERVICE)) == []
    [isolated] = line.records(kinds=(OutageKind.REGION_ISOLATED,))
    assert isolated.region == region
    assert line.clf.isolated_regions() == {region}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), onset=st.floats(0.0, 1.0))
def test_a_global_outage_is_opened_as_global(seed, onset):
    line = Timeline(REGIONS, seed=seed)
    line.run(5)
    since = line.now + onset
    line.run(6, probe_down("web", since))
    [(opened_at, record)] = line.opened_at()
    assert (record.probe, record.scope) == ("web", Scope.GLOBAL)
    assert opened_at - since <= 2.5 * line.interval_s


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), onset=st.floats(0.0, 1.0),
       regions=st.sampled_from([("r1",), ("r2",), ("r1", "r3")]))
def test_a_regional_outage_of_one_probe_is_found_within_two_and_a_half_intervals(
        seed, onset, regions):
    line = Timeline(REGIONS, seed=seed)
    line.run(5)
    since = line.now + onset
    line.run(6, probe_down("api", since, regions))
    [(opened_at, record)] = line.opened_at()
    assert (record.probe, record.scope) == ("api", Scope.REGIONAL)
    assert set(record.regions) == set(regions)
    # A region alone needs 2 confirmed failures in a row: the second run, plus its re-probe.
    assert opened_at - since <= 2.5 * line.interval_s
    assert line.records(kinds=(OutageKind.REGION_ISOLATED,)) == []


def test_the_scope_hold_is_bounded_when_an_up_region_goes_quiet():
    line = Timeline({"r1": 2, "r2": 2, "r3": 2}, seed=3)
    line.run(5)
    since = line.now + 0.5
    # r3 falls silent at the onset (its results stop); r1 loses the probe.
    quiet = {"r3-1", "r3-2"}
    original = line._run_pair

    def run_pair(agent, probe, at, fault):
        delivered, results = original(agent, probe, at, fault)
        return (delivered + 1_000 if agent in quiet and at >= since else delivered), results

    line._run_pair = run_pair  # type: ignore[method-assign]
    line.run(6, probe_down("web", since, ("r1",)))
    [(opened_at, record)] = line.opened_at()
    assert record.scope is Scope.REGIONAL
    # The region's second confirmed failure, then at most one interval of hold.
    assert opened_at - since <= 3.5 * line.interval_s


def test_without_a_hold_a_global_outage_is_often_opened_as_regional_first():
    # The measurement behind the hold: the same traces, hold off, first scopes.
    first_scopes = []
    for seed in range(20):
        line = Timeline(REGIONS, seed=seed,
                        params=ClassificationParams(scope_hold_intervals=0.0))
        line.run(5)
        line.run(6, probe_down("web", line.now + 0.3))
        first_scopes.append(line.opened_at()[0][1].scope)
    assert first_scopes.count(Scope.REGIONAL) >= 10


def test_agent_health_changes_carry_their_evidence():
    line = Timeline(REGIONS, seed=5)
    line.run(5)
    assert line.clf.take_health_changes() == []
    since = line.now + 0.2
    line.run(6, region_down("r1", since))
    taken = line.clf.take_health_changes()
    assert line.clf.take_health_changes() == []  # taken once
    [impaired] = [c for c in taken if c.agent == "r1-1" and c.health.value == "impaired"]
    assert impaired.previous.value in {"ok", "suspect"}
    assert impaired.region == "r1"
    # The evidence: down on most of its probes, and others see at least 3 of them up.
    assert impaired.down >= len(line.probes) / 2
    assert impaired.seen_up >= 3
    line.run(6)  # the network is back
    back = [c for c in line.clf.take_health_changes() if c.agent == "r1-1"]
    assert [(c.previous.value, c.health.value) for c in back][-1] == ("impaired", "ok")
    assert back[-1].fresh == len(line.probes)
    assert back[-1].down < len(line.probes) / 2


def test_the_committer_logs_agent_health_changes_with_their_evidence(tmp_path, caplog):
    from probenet.collector.journal import Journal, TransitionCommitter  # noqa: PLC0415

    line = Timeline(REGIONS, seed=5)
    with Journal(tmp_path / "j.db") as journal:
        committer = TransitionCommitter(line.clf, journal)
        line.run(5)
        committer.commit()
        with caplog.at_level(logging.INFO, logger="probenet.collector.journal"):
            line.run(6, region_down("r1", line.now + 0.2))
            committer.commit()
    [impaired] = [r for r in caplog.records
                  if r.getMessage() == "agent impaired" and r.agent == "r1-1"]
    assert impaired.region == "r1"
    assert impaired.probes_down >= 3
    assert impaired.down_seen_up_elsewhere >= 3
