"""The path trace store on a real SQLite journal: the contract check, what is kept (bounded per
pair and per outage, the latest baseline always), attachment to open outages, `outage_paths`,
reload after a restart, and the metrics."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from probenet.collector.journal import Journal
from probenet.collector.model import OutageRecord, Scope
from probenet.collector.traces import PathMetrics, TraceStore, outage_paths, trace_problem
from probenet.v1 import probenet_pb2 as pb

T0 = 1_800_000_000.0


def trace(probe: str, hops: list[str], *, trigger: str = "failure", reached: bool = False,
          at: float = T0, **fields: object) -> pb.ProbeResult:
    body = pb.PathTrace(trigger=trigger, method="udp", max_hops=30, probes_per_hop=3,
                        reached=reached, hops=[
                            pb.TraceHop(ttl=ttl, address=address, sent=3,
                                        received=3 if address else 0)
                            for ttl, address in enumerate(hops, start=1)])
    for name, value in fields.items():
        setattr(body, name, value)
    return pb.ProbeResult(probe=probe, kind="trace", target="203.0.113.5",
                          address="203.0.113.5", success=reached,
                          timestamp_ms=int(at * 1000), trace=body)


def outage(probe: str = "web", *, regions: tuple[str, ...] = ("ap",),
           started_at: float = T0 - 60) -> OutageRecord:
    return OutageRecord.probe_outage(f"o-{probe}", probe, service=None, scope=Scope.REGIONAL,
                                     regions=regions, phase="connect", reason="timeout",
                                     started_at=started_at, detected_at=started_at + 10)


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.db") as opened:
        yield opened


def rows(journal: Journal) -> list[tuple[str, str, str | None, float]]:
    return journal.db.execute(
        "SELECT agent, trigger, outage_id, taken_at FROM path_traces ORDER BY id").fetchall()


# -- the contract ----------------------------------------------------------------------------


def test_a_good_trace_passes() -> None:
    assert trace_problem(trace("web", ["10.0.0.1", "", "2001:db8::1"])) is None


@pytest.mark.parametrize(("fields", "hops", "why"), [
    ({"max_hops": 65}, ["10.0.0.1"], "more than 64 hops"),
    ({"max_hops": 0}, ["10.0.0.1"] * 65, "more than 64 hops"),
    ({"max_hops": 2}, ["10.0.0.1"] * 3, "more hops than max_hops"),
    ({"probes_per_hop": 11}, ["10.0.0.1"], "probes per hop"),
    ({"trigger": "sometimes"}, ["10.0.0.1"], "trigger"),
    ({"method": "tcp"}, ["10.0.0.1"], "method"),
    ({"stop_reason": "x" * 65}, ["10.0.0.1"], "stop_reason"),
    ({}, ["router.example"], "hop 1"),
    ({}, ["10.0.0.1" + "0" * 70], "hop 1"),
])
def test_traces_out_of_contract(fields: dict[str, object], hops: list[str], why: str) -> None:
    problem = trace_problem(trace("web", hops, **fields))
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize("change", ["ttl0", "ttl_repeat", "received", "rtt_nan", "rtt_count",
                                    "error", "answer_without_address"])
def test_bad_hops(change: str) -> None:
    result = trace("web", ["10.0.0.1", "10.0.0.2"])
    first, second = result.trace.hops
    match change:
        case "ttl0":
            first.ttl = 0
        case "ttl_repeat":
            second.ttl = 1
        case "received":
            first.received = 4
        case "rtt_nan":
            first.rtt_seconds.append(math.nan)
        case "rtt_count":
            first.rtt_seconds.extend([0.1] * 4)
        case "error":
            first.error = "e" * 65
        case "answer_without_address":
            first.address = ""
    assert trace_problem(result) is not None


def test_no_details_needs_an_error() -> None:
    bare = pb.ProbeResult(probe="web", kind="trace")
    assert trace_problem(bare) is not None
    assert trace_problem(pb.ProbeResult(probe="web", kind="trace", error="no route")) is None
    assert trace_problem(pb.ProbeResult(probe="web", kind="trace", error="x",
                                        address="not-an-ip")) is not None


# -- the store -------------------------------------------------------------------------------


def test_unattached_traces_are_bounded_but_the_last_baseline_stays(journal: Journal) -> None:
    store = TraceStore(journal, open_outages=list, keep=3)
    store.add("a1", "eu", trace("web", ["10.0.0.1"], trigger="baseline"), T0)
    for n in range(6):
        store.add("a1", "eu", trace("web", ["10.0.0.1"], at=T0 + n + 1), T0)
    kept = rows(journal)
    assert [r[1] for r in kept] == ["baseline", "failure", "failure", "failure"]
    assert [r[3] for r in kept][1:] == [T0 + 4, T0 + 5, T0 + 6]
    # Another pair is bounded on its own.
    store.add("a2", "eu", trace("web", ["10.0.0.1"]), T0)
    assert len(rows(journal)) == 5


def test_traces_are_attached_to_the_open_outage_with_earlier_ones(journal: Journal) -> None:
    record = outage(started_at=T0 - 60)
    open_now: list[OutageRecord] = []
    store = TraceStore(journal, open_outages=lambda: open_now, keep=2)
    store.add("a1", "ap", trace("web", ["10.0.0.1"], at=T0 - 120, trigger="baseline"), T0)
    store.add("a1", "ap", trace("web", ["10.0.0.1"], at=T0 - 30), T0)  # before detection
    open_now.append(record)
    store.add("a1", "ap", trace("web", ["10.0.0.1"], at=T0), T0)
    store.add("a1", "ap", trace("other", ["10.0.0.1"], at=T0), T0)  # another probe
    assert [(r[1], r[2]) for r in rows(journal)] == [
        ("baseline", None), ("failure", "o-web"), ("failure", "o-web"), ("failure", None)]
    # Attached traces survive any number of unattached ones of the pair.
    open_now.clear()
    for n in range(5):
        store.add("a1", "ap", trace("web", ["10.0.0.1"], at=T0 + 100 + n), T0)
    attached = [r for r in rows(journal) if r[2] == "o-web"]
    assert len(attached) == 2


def test_traces_of_a_service_outage_probe_attach(journal: Journal) -> None:
    record = OutageRecord.service_outage(
        "o-shop", "shop", probes=("api", "web"), scope=Scope.REGIONAL, regions=("ap",),
        regions_ever=("ap",), phase="connect", reason="timeout", started_at=T0 - 60,
        detected_at=T0 - 50)
    store = TraceStore(journal, open_outages=lambda: [record])
    store.add("a1", "ap", trace("api", ["10.0.0.1"]), T0)
    assert rows(journal)[0][2] == "o-shop"
    paths = outage_paths(journal.db, record, T0)
    assert paths is not None
    assert paths["regions"]["ap"]["agents"]["a1"]["trace"]["probe"] == "api"


def test_outage_paths_summary_and_baselines(journal: Journal) -> None:
    record = outage(regions=("ap",), started_at=T0 - 60)
    store = TraceStore(journal, open_outages=lambda: [record])
    store.add("e1", "eu", trace("web", ["10.3.0.1", "198.18.3.1", "203.0.113.5"],
                                trigger="baseline", reached=True, at=T0 - 600), T0)
    store.add("a1", "ap", trace("web", ["10.1.0.1", "198.18.3.1", "203.0.113.5"],
                                trigger="baseline", reached=True, at=T0 - 600), T0)
    store.add("a1", "ap", trace("web", ["10.1.0.1", "198.18.3.1", ""], at=T0), T0)
    store.add("a2", "ap", trace("web", ["10.1.0.2", "198.18.3.1", ""], at=T0 - 1), T0)
    paths = outage_paths(journal.db, record, T0 + 1)
    assert paths is not None
    assert set(paths["regions"]) == {"ap"}
    assert set(paths["regions"]["ap"]["agents"]) == {"a1", "a2"}
    assert paths["regions"]["ap"]["last_hop"] == "198.18.3.1"
    assert set(paths["baseline"]) == {"ap", "eu"}
    assert paths["summary"]["text"] == "path from ap stops after 198.18.3.1; eu passes it"
    # After the outage's end, later traces are not its own.
    ended = record.ended(T0 + 2)
    store.add("a1", "ap", trace("web", ["10.1.0.1"], at=T0 + 50), T0)
    later = outage_paths(journal.db, ended, T0 + 100)
    assert later is not None
    assert later["regions"]["ap"]["agents"]["a1"]["trace"]["hops"][2]["address"] == ""


def test_outage_paths_without_traces_and_other_kinds(journal: Journal) -> None:
    paths = outage_paths(journal.db, outage(), T0)
    assert paths is not None
    assert paths["regions"] == {}
    assert paths["summary"]["text"] == "no trace from a failing region"
    isolated = OutageRecord.region_isolated("o-iso", "ap", at=T0)
    assert outage_paths(journal.db, isolated, T0) is None


def test_latest_per_probe_region_is_reloaded_and_exported(tmp_path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        store = TraceStore(journal, open_outages=list)
        store.add("a1", "ap", trace("web", ["10.0.0.1", "198.18.3.1"], at=T0), T0)
        store.add("a2", "ap", trace("web", ["10.0.0.1", "198.18.3.9", ""], at=T0 + 1), T0)
        store.add("e1", "eu", trace("web", ["10.3.0.1"], at=T0), T0)
    with Journal(path) as journal:
        reloaded = TraceStore(journal, open_outages=list)
        reloaded.load()
        assert set(reloaded.latest()) == {("web", "ap"), ("web", "eu")}
        assert reloaded.latest()[("web", "ap")].agent == "a2"
        registry = CollectorRegistry()
        registry.register(PathMetrics(reloaded))
        assert registry.get_sample_value("probenet_path_hops",
                                         {"probe": "web", "region": "ap"}) == 3
        assert registry.get_sample_value(
            "probenet_path_last_hop_info",
            {"probe": "web", "region": "ap", "address": "198.18.3.9"}) == 1
        assert registry.get_sample_value(
            "probenet_path_last_hop_info",
            {"probe": "web", "region": "ap", "address": "198.18.3.1"}) is None
