"""Path traces on a real collector over real gRPC: kept apart from the classifier, attached to
the outage they were taken in, summarized in /api/v1/outages/{id} `paths`, journaled across a
restart, exported as metrics; malformed ones counted as `bad_trace`."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    TestAgent,
    applied,
    collector_yaml,
    http_get,
    http_json,
    metric_value,
    rejections,
)

FLEET = (("ap-1", "ap-south"), ("sa-1", "sa-east"), ("eu-1", "eu-central"), ("us-1", "us-east"))
FAILING = {"ap-south", "sa-east"}
INTERVAL_MS = 20_000
TARGET = "203.0.113.5"


def hops_of(region: str, *, failing: bool) -> list[str]:
    """A path: the region's own first hop, two shared ones, then (healthy) two more."""
    first = {"ap-south": "10.1.0.1", "sa-east": "10.2.0.1", "eu-central": "10.3.0.1",
             "us-east": "10.4.0.1"}[region]
    shared = [first, "198.18.1.1", "198.18.3.1"]
    return [*shared, "", ""] if failing else [*shared, "198.18.4.1", TARGET]


def trace_result(agent: TestAgent, probe: str, trigger: str, hops: list[str], *,
                 reached: bool, **trace_fields: object) -> pb.ProbeResult:
    trace = pb.PathTrace(
        trigger=trigger, method="udp", max_hops=30, probes_per_hop=3, reached=reached,
        stop_reason="" if reached else "max_hops",
        hops=[pb.TraceHop(ttl=ttl, address=address, sent=3, received=3 if address else 0,
                          rtt_seconds=[0.001 * ttl] * (3 if address else 0))
              for ttl, address in enumerate(hops, start=1)])
    for name, value in trace_fields.items():
        setattr(trace, name, value)
    return agent.result(probe, kind="trace", target=TARGET, address=TARGET, success=reached,
                        trace=trace)


async def connect(stack: AsyncExitStack, address: str) -> list[TestAgent]:
    return [await stack.enter_async_context(TestAgent(
        address, agent, region, interval_ms=INTERVAL_MS)) for agent, region in FLEET]


async def make_outage(fleet: list[TestAgent], probe: str) -> None:
    """Up everywhere, baselines from every region, then `probe` fails in FAILING, traced."""
    for agent in fleet:
        await agent.send([agent.result(probe, service="shop")])
    for agent in fleet:
        await agent.send([trace_result(agent, probe, "baseline",
                                       hops_of(agent.region, failing=False), reached=True)])
    for _ in range(2):
        for agent in fleet:
            await agent.send([agent.result(probe, service="shop",
                                           success=agent.region not in FAILING)])
    for agent in fleet:
        if agent.region in FAILING:
            await agent.send([trace_result(agent, probe, "failure",
                                           hops_of(agent.region, failing=True), reached=False)])


def probe_outage_id(service: CollectorService, probe: str) -> str:
    ids = [r.id for r in service.classifier.open_outages() if r.probe == probe]
    assert len(ids) == 1, service.classifier.open_outages()
    return ids[0]


def check_paths(paths: dict[str, object]) -> None:
    summary = paths["summary"]
    assert isinstance(summary, dict)
    assert summary["text"] == ("paths from ap-south and sa-east stop after 198.18.3.1; "
                               "eu-central and us-east pass it")
    assert summary["divergence"]["address"] == "198.18.3.1"
    assert summary["divergence"]["before_hop"] == "198.18.4.1"
    regions = paths["regions"]
    assert isinstance(regions, dict)
    assert set(regions) == {"ap-south", "sa-east"}
    ap = regions["ap-south"]
    assert ap["last_hop"] == "198.18.3.1"
    assert ap["reached"] is False
    entry = ap["agents"]["ap-1"]
    assert entry["trigger"] == "failure"
    assert entry["taken_at"].endswith("Z")
    assert [hop["address"] for hop in entry["trace"]["hops"]] == hops_of("ap-south",
                                                                           failing=True)
    baseline = paths["baseline"]
    assert isinstance(baseline, dict)
    assert set(baseline) == {"ap-south", "sa-east", "eu-central", "us-east"}
    eu = baseline["eu-central"]["eu-1"]
    assert eu["trigger"] == "baseline"
    assert eu["trace"]["reached"] is True
    assert summary["regions"]["eu-central"]["state"] == "up"
    assert summary["regions"]["ap-south"]["state"] == "down"


async def test_traces_during_an_outage_are_summarized_and_survive_a_restart(tmp_path):
    journal = str(tmp_path / "journal.db")
    config = parse_config(collector_yaml(journal))
    async with CollectorService(config) as first, AsyncExitStack() as stack:
        fleet = await connect(stack, first.grpc_address)
        await make_outage(fleet, "web-traced")
        outage_id = probe_outage_id(first, "web-traced")
        detail = await http_json(f"{first.http.url}/api/v1/outages/{outage_id}")
        check_paths(detail["paths"])
        # A trace never reaches the classifier: the probe's view has only the http results.
        assert applied(first) == 3 * len(FLEET)
        _, _, page = await http_get(first.http.url + "/metrics")
        assert metric_value(page, "probenet_path_hops", probe="web-traced",
                            region="sa-east") == 5.0
        assert metric_value(page, "probenet_path_hops", probe="web-traced",
                            region="us-east") == 5.0
        assert metric_value(page, "probenet_path_last_hop_info", probe="web-traced",
                            region="ap-south", address="198.18.3.1") == 1.0
        assert metric_value(page, "probenet_path_last_hop_info", probe="web-traced",
                            region="eu-central", address=TARGET) == 1.0
    async with CollectorService(config) as second:
        again = await http_json(f"{second.http.url}/api/v1/outages/{outage_id}")
        assert again["paths"] == detail["paths"]
        check_paths(again["paths"])
        _, _, page = await http_get(second.http.url + "/metrics")
        assert metric_value(page, "probenet_path_last_hop_info", probe="web-traced",
                            region="sa-east", address="198.18.3.1") == 1.0


async def test_malformed_traces_are_counted_and_nothing_else_breaks(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config) as service, TestAgent(
            service.grpc_address, "bad-1", "eu-central", interval_ms=INTERVAL_MS) as agent:
        await agent.send([agent.result("web-bad")])
        good = hops_of("eu-central", failing=False)
        too_many = trace_result(agent, "web-bad", "baseline", ["198.18.1.1"] * 65, reached=False,
                                max_hops=0)
        not_ip = trace_result(agent, "web-bad", "baseline", ["198.18.1.1", "router.example"],
                              reached=False)
        probes = trace_result(agent, "web-bad", "baseline", good, reached=True,
                              probes_per_hop=11)
        trigger = trace_result(agent, "web-bad", "whenever", good, reached=True)
        stranger = trace_result(agent, "never-reported", "baseline", good, reached=True)
        rtt = trace_result(agent, "web-bad", "baseline", good, reached=True)
        rtt.trace.hops[0].rtt_seconds[0] = float("nan")
        ack = await agent.send([too_many, not_ip, probes, trigger, stranger, rtt,
                                agent.result("web-bad"), trace_result(
                                    agent, "web-bad", "baseline", good, reached=True)])
        assert ack.acked_seq == agent.next_seq - 1
        assert rejections(service, "bad_trace") == 6
        assert rejections(service, "bad_kind") == 0
        assert applied(service) == 2
        stored = service.journal.db.execute(
            "SELECT probe, agent, region, trigger FROM path_traces").fetchall()
        assert stored == [("web-bad", "bad-1", "eu-central", "baseline")]
        # The stream goes on.
        await agent.send([agent.result("web-bad", timestamp_ms=int(time.time() * 1000))])
        assert applied(service) == 3


async def test_a_trace_without_details_but_with_an_error_is_kept(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config) as service, TestAgent(
            service.grpc_address, "err-1", "us-east", interval_ms=INTERVAL_MS) as agent:
        await agent.send([agent.result("web-err")])
        empty = agent.result("web-err", kind="trace", success=False, error="no privilege",
                             confirmed=False)
        bare = agent.result("web-err", kind="trace", success=False, confirmed=False)
        await agent.send([empty, bare])
        assert rejections(service, "bad_trace") == 1
        rows = service.journal.db.execute("SELECT trace FROM path_traces").fetchall()
        assert len(rows) == 1
        assert '"error":"no privilege"' in rows[0][0]
