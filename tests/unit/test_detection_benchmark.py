"""benchmarks/detection.py: its scorer on scripted traces, its simulator on a tiny fleet.

The benchmark's figures are only worth something if its scoring is right: these cases script
the records a rule published against known events and check each figure by hand (a record
opened during a region's network loss is one false outage; a global outage first published
as regional is first-scope-wrong; ...). The simulator runs a tiny fleet through the real
classifier and the baselines.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest

from probenet.collector.model import Scope

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "detection.py"
INTERVAL = 30.0


@pytest.fixture(scope="module")
def bench():
    """The benchmark script, imported by its path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("detection_benchmark", PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def shape(bench, regions=3, agents=2, probes=6):
    return bench.Shape(regions, agents, probes, INTERVAL)


def event(bench, eid, kind, start, end, *, agents, probe, truth, regions=()):
    return bench.Event(eid, kind, start, end, frozenset(agents), probe, truth,
                       regions=tuple(regions))


def record(bench, probe, opened, closed, *scopes):
    """A record opened at `opened` with scope changes (since, scope)..."""
    return bench.Record(probe, opened, list(scopes) or [(opened, None)], closed)


def score(bench, records, events, *, has_scope=True, end_s=7200.0, results=1_000_000):
    return bench.score_rule("rule", records, has_scope=has_scope, events=events,
                            shape=shape(bench), end_s=end_s, results=results)


# -- the scorer --------------------------------------------------------------------------------


def test_a_record_during_a_region_network_loss_is_one_false_outage(bench):
    loss = event(bench, 1, "region_network", 300.0, 900.0, agents={2, 3}, probe=None,
                 truth=None, regions=(1,))
    rec = record(bench, 2, 320.0, 340.0, (320.0, Scope.REGIONAL))
    got = score(bench, [rec], [loss], results=500_000)
    assert got.false_records == 1
    assert got.false_by_kind == {"region_network": 1}
    assert got.false_per_million == pytest.approx(2.0)
    assert got.scored_outages == 0
    assert got.missed == 0


def test_a_record_long_after_any_event_is_false_and_blamed_on_no_event(bench):
    glob = event(bench, 1, "global", 600.0, 1200.0, agents=range(6), probe=0,
                 truth=Scope.GLOBAL)
    late = record(bench, 0, 1200.0 + 4 * INTERVAL, 1500.0, (1320.0, Scope.GLOBAL))
    got = score(bench, [late], [glob])
    assert got.false_records == 1
    assert got.false_by_kind == {"no_event": 1}
    assert got.missed == 1  # the late record does not count as a detection


def test_a_global_outage_published_regional_first_is_first_scope_wrong(bench):
    glob = event(bench, 1, "global", 600.0, 1200.0, agents=range(6), probe=0,
                 truth=Scope.GLOBAL)
    escalated = record(bench, 0, 630.0, 1230.0, (630.0, Scope.REGIONAL),
                       (660.0, Scope.GLOBAL))
    got = score(bench, [escalated], [glob])
    assert got.false_records == 0
    assert got.scored_outages == 1
    assert got.missed == 0
    assert got.latency_intervals == [pytest.approx(1.0)]
    assert got.scope_right_pct == 0.0
    assert got.scope_wrong_by_kind == {"global": 1}
    assert got.scope_latency_intervals == [pytest.approx(2.0)]

    right = record(bench, 0, 630.0, 1230.0, (630.0, Scope.GLOBAL))
    got = score(bench, [right], [glob])
    assert got.scope_right_pct == 100.0
    assert got.scope_wrong_by_kind == {}


def test_started_at_error_is_measured_against_the_true_start(bench):
    glob = event(bench, 1, "global", 600.0, 1200.0, agents=range(6), probe=0,
                 truth=Scope.GLOBAL)
    rec = record(bench, 0, 630.0, 1230.0, (630.0, Scope.GLOBAL))
    rec.started = 600.0 - 2.5 * INTERVAL  # a stale failing streak makes it look older
    got = score(bench, [rec], [glob])
    assert got.start_error_p99 == pytest.approx(2.5)
    assert got.start_off_by_over_1 == 1
    assert score(bench, [record(bench, 0, 630.0, 1230.0)], [glob]).start_error_p99 is None


def test_a_rule_without_scope_has_no_scope_figure(bench):
    glob = event(bench, 1, "global", 600.0, 1200.0, agents=range(6), probe=0,
                 truth=Scope.GLOBAL)
    got = score(bench, [record(bench, 0, 630.0, 1230.0)], [glob], has_scope=False)
    assert got.scope_right_pct is None
    assert got.missed == 0


def test_missed_counts_outages_of_three_intervals_or_more_only(bench):
    short = event(bench, 1, "regional", 600.0, 600.0 + 2 * INTERVAL, agents={0, 1}, probe=0,
                  truth=Scope.REGIONAL, regions=(0,))
    long = event(bench, 2, "regional", 2000.0, 2000.0 + 4 * INTERVAL, agents={0, 1},
                 probe=1, truth=Scope.REGIONAL, regions=(0,))
    got = score(bench, [], [short, long])
    assert got.scored_outages == 1
    assert got.missed == 1
    assert got.missed_by_kind == {"regional": 1}
    assert math.isinf(got.detect_p99)  # a missed outage counts as never
    assert got.to_json()["detect_p99"] is None


def test_two_records_for_one_outage_are_one_extra_not_false(bench):
    glob = event(bench, 1, "flapping", 600.0, 1200.0, agents=range(6), probe=0,
                 truth=Scope.GLOBAL)
    first = record(bench, 0, 620.0, 700.0, (620.0, Scope.GLOBAL))
    second = record(bench, 0, 740.0, 820.0, (740.0, Scope.GLOBAL))
    got = score(bench, [first, second], [glob])
    assert got.false_records == 0
    assert got.extra_records == 1
    assert got.extra_by_kind == {"flapping": 1}
    assert got.latency_intervals == [pytest.approx(20.0 / INTERVAL)]


def test_wrong_state_time_counts_lag_wrong_scope_and_a_record_left_open(bench):
    glob = event(bench, 1, "global", 600.0, 1200.0, agents=range(6), probe=0,
                 truth=Scope.GLOBAL)
    # Nothing shown 600-630, regional 630-660, open after the end 1200-1290 (within grace).
    rec = record(bench, 0, 630.0, 1290.0, (630.0, Scope.REGIONAL), (660.0, Scope.GLOBAL))
    got = score(bench, [rec], [glob])
    assert got.wrong_state_pct == pytest.approx(100.0 * 150.0 / 600.0)
    assert got.wrong_s_by_kind == {"global": pytest.approx(150.0)}
    got = score(bench, [rec], [glob], has_scope=False)
    assert got.wrong_state_pct == pytest.approx(100.0 * 120.0 / 600.0)


def test_a_record_left_open_past_its_outage_is_blamed_on_it(bench):
    glob = event(bench, 1, "flapping", 600.0, 1200.0, agents=range(6), probe=0,
                 truth=Scope.GLOBAL)
    held = record(bench, 0, 630.0, 3000.0, (630.0, Scope.GLOBAL))
    got = score(bench, [held], [glob])
    grace_end = 1200.0 + 3 * INTERVAL
    # The flapping window (to its end + grace) is left out; the rest is wrong, "after" it.
    assert got.wrong_s_by_kind == {"flapping_after": pytest.approx(3000.0 - grace_end)}
    assert got.false_records == 0


def test_percentile_is_nearest_rank_and_infinite_on_a_miss(bench):
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    assert math.isinf(bench.percentile([1.0, math.inf], 0.99))
    assert math.isinf(bench.percentile([], 0.5))


def test_targets_check_reports_each_target_and_never_passes_on_a_tie_at_zero(bench):
    def figures(false, p99, *, missed=0, p50=0.5, scope=100.0):
        return {"false_records": false, "false_per_million": float(false), "missed": missed,
                "scored_outages": 10, "detect_p50": p50, "detect_p99": p99,
                "scope_right_pct": scope}

    run = {"rules": {"probenet": figures(0, 1.2), "slow": figures(0, None, scope=None),
                     "noisy": figures(5, 2.0, scope=None), "fast": figures(0, 1.0)}}
    checks = bench.targets_check(run)
    assert all(checks[k]["pass"] for k in list(checks)[:5])
    by_rule = {k.split()[2]: v["pass"] for k, v in checks.items() if k.startswith("better")}
    assert by_rule == {"slow": True, "noisy": True, "fast": False}
    run["rules"]["probenet"] = figures(1, 3.0, missed=1, p50=2.0, scope=98.0)
    checks = bench.targets_check(run)
    assert not any(check["pass"] for check in checks.values())


# -- the simulator -----------------------------------------------------------------------------


def recorder(bench, fleet):
    """A Rule that keeps every result it is fed, in order."""

    class Recording(bench.Rule):
        def __init__(self, fleet):
            super().__init__(fleet)
            self.seen = []

        def deliver(self, agent, probe, result, scheduled, now):
            self.seen.append((agent, probe, result, scheduled, now))

    return Recording(fleet)


def simulate(bench, fleet, events, *, loss, hours, extra_rules=()):
    world = bench.World(fleet, events, loss)
    rules = [*bench.make_rules(fleet, world, 7), *extra_rules]
    stats = bench.FleetSim(fleet, world, rules, 7).run(hours * 3600)
    return rules, stats


def test_clean_traffic_opens_nothing_and_every_pair_runs_once_per_interval(bench):
    fleet = shape(bench)
    seen = recorder(bench, fleet)
    rules, stats = simulate(bench, fleet, [], loss=0.0, hours=0.5, extra_rules=[seen])
    rounds = int(1800 // INTERVAL)
    assert stats.runs == fleet.agents * fleet.probes * rounds
    assert stats.results == stats.runs  # no failure, no re-probe
    assert stats.skipped == 0
    assert all(rule.records == [] for rule in rules)
    times = [now for *_, now in seen.seen]
    assert times == sorted(times)  # delivered in arrival order
    pair_times = sorted(now for agent, probe, *_, now in seen.seen if (agent, probe) == (3, 2))
    gaps = [b - a for a, b in itertools.pairwise(pair_times)]
    assert all(abs(gap - INTERVAL) < 0.5 for gap in gaps)  # a fixed phase, small jitter
    # Agents started at unrelated times: one probe's runs are spread over the interval.
    phases = sorted(now % INTERVAL for agent, probe, *_, now in seen.seen[:200] if probe == 2)
    assert phases[-1] - phases[0] > INTERVAL / 3


def test_a_failed_run_is_reprobed_once_and_sent_confirmed(bench):
    fleet = shape(bench)
    seen = recorder(bench, fleet)
    simulate(bench, fleet, [], loss=1.0, hours=0.1, extra_rules=[seen])  # every run fails
    first = [(r, now) for a, p, r, scheduled, now in seen.seen
             if (a, p) == (0, 0) and scheduled]
    again = [(r, now) for a, p, r, scheduled, now in seen.seen
             if (a, p) == (0, 0) and not scheduled]
    assert first
    assert len(first) == len(again)
    assert all(not r.success and not r.confirmed for r, _ in first)
    assert all(not r.success and r.confirmed for r, _ in again)
    for (r1, _), (r2, _) in zip(first, again, strict=True):
        gap_ms = r2.timestamp_ms - r1.timestamp_ms
        assert gap_ms >= (r1.duration_seconds + fleet.confirm_delay_s) * 1000 - 1


def test_probenet_and_a_baseline_detect_a_scripted_global_outage(bench):
    fleet = shape(bench)
    glob = event(bench, 1, "global", 600.0, 600.0 + 6 * INTERVAL, agents=range(fleet.agents),
                 probe=1, truth=Scope.GLOBAL, regions=range(fleet.regions))
    rules, stats = simulate(bench, fleet, [glob], loss=0.0, hours=0.5)
    by_name = {rule.name: rule for rule in rules}
    for name in ("probenet", "Catchpoint ~"):
        got = bench.score_rule(name, by_name[name].records, has_scope=False, events=[glob],
                               shape=fleet, end_s=1800.0, results=stats.results)
        assert got.missed == 0, name
        assert got.false_records == 0, name
        assert got.latency_intervals[0] <= 3.0, name


def test_a_trace_is_deterministic_for_a_seed(bench):
    fleet = shape(bench, regions=2, agents=2, probes=4)
    first = bench.run_trace(fleet, 0.5, 5.0, 3)
    second = bench.run_trace(fleet, 0.5, 5.0, 3)
    first.pop("cpu_s")
    second.pop("cpu_s")
    assert first == second
    assert first["results"] > 0
