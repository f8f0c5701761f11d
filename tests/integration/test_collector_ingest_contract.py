"""Every result field checked against the contract, over the real gRPC ingest.

The bad inputs of issue 11, one test each: NaN, negative and 1e308 durations, failures
stamped 100 days ago with a huge interval, timestamps in the future, 10 KB error texts and
addresses. Each is rejected at ingest with its counted reason, acknowledged (never resent),
and nothing of it reaches the classifier, the outages or the /metrics page; the agent's
good results go on being applied. Per-phase durations and kind-specific numbers (a negative
content length, NaN round trips) are checked where they are read, when the details store
decodes a result for a scrape: never exported out of contract.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from probenet.collector.config import parse_config
from probenet.collector.details import LatestDetails, facts_of
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    ManualClock,
    TestAgent,
    applied,
    collector_yaml,
    http_get,
    metric_value,
    rejections,
)

DAY_MS = 86_400_000


def config_of(tmp_path, limits: str = ""):
    extra = f"limits: {{{limits}}}\n" if limits else ""
    return parse_config(collector_yaml(str(tmp_path / "journal.db"), extra=extra))


def phases(**seconds: float) -> list[pb.PhaseDuration]:
    return [pb.PhaseDuration(name=name, seconds=value) for name, value in seconds.items()]


def probes_of(service, agent: str) -> set[str]:
    return {s.probe for s in service.classifier.samples() if s.agent == agent}


async def page(service) -> str:
    status, _, text = await http_get(service.http.url + "/metrics")
    assert status == 200
    return text


@pytest.mark.parametrize("bad", [math.nan, -0.001, 1e308, math.inf])
async def test_a_duration_out_of_contract_is_rejected_and_a_phase_never_exported(
        tmp_path, bad):
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        ack = await agent.send([
            agent.result("total", duration_seconds=bad),
            agent.result("phase", phases=phases(resolve=0.01, connect=bad)),
            agent.result("good", phases=phases(resolve=0.01, connect=0.02))])
        assert ack.acked_seq == 3  # acknowledged: the agent never resends them
        assert rejections(service, "bad_duration") == 1
        assert probes_of(service, "fra-1") == {"phase", "good"}
        text = await page(service)
    assert 'probe="total"' not in text
    # A phase out of contract is dropped when the details store decodes it (read as none).
    assert metric_value(text, "probe_http_duration_seconds", probe="phase",
                        phase="connect") == 0
    assert metric_value(text, "probe_http_duration_seconds", probe="phase",
                        phase="resolve") == pytest.approx(0.01)
    assert metric_value(text, "probe_http_duration_seconds", probe="good", phase="connect") == \
        pytest.approx(0.02)


async def test_kind_specific_values_out_of_contract_are_never_exported(tmp_path):
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([
            agent.result("length", http=pb.HttpDetails(content_length=-5)),
            agent.result("expiry", http=pb.HttpDetails(tls=pb.TlsFacts(
                earliest_cert_expiry=-1, version="TLS 1.3"))),
            agent.result("rtt", kind="icmp", icmp=pb.IcmpDetails(
                sent=3, received=3, rtt_min_seconds=-1.0, rtt_avg_seconds=math.nan,
                rtt_max_seconds=1e308, rtt_stddev_seconds=0.001)),
            agent.result("ok", http=pb.HttpDetails(content_length=10))])
        text = await page(service)
    assert metric_value(text, "probe_http_content_length", probe="length") == 0
    assert metric_value(text, "probe_http_content_length", probe="ok") == 10
    assert metric_value(text, "probe_ssl_earliest_cert_expiry", probe="expiry") is None
    assert metric_value(text, "probe_tls_version_info", probe="expiry") == 1
    assert {stat: metric_value(text, "probenet_icmp_rtt_seconds", probe="rtt", stat=stat)
            for stat in ("min", "avg", "max", "stddev")} == {
                "min": 0, "avg": 0, "max": 0, "stddev": pytest.approx(0.001)}
    # Left out, and counted (when the scrape decoded them), by field.
    assert {field: metric_value(text, "probenet_result_values_dropped_total", field=field)
            for field in ("content_length", "cert_expiry", "icmp_rtt_seconds",
                          "phase_seconds")} == {
        "content_length": 1, "cert_expiry": 1, "icmp_rtt_seconds": 3, "phase_seconds": 0}


async def test_failures_stamped_100_days_ago_with_a_huge_interval_open_no_outage(tmp_path):
    clock = ManualClock()
    now_ms = int(clock.now * 1000)
    async with CollectorService(config_of(tmp_path), clock=clock) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as fra, \
            TestAgent(service.grpc_address, "iad-1", "us") as iad:
        for _ in range(3):
            for agent in (fra, iad):
                # The input: 100 days back, with the largest interval the wire holds.
                await agent.send([agent.result("web", success=False,
                                               timestamp_ms=now_ms - 100 * DAY_MS,
                                               interval_ms=2**32 - 1)])
                # A recent stamp with that interval, and an old one with a sane interval.
                await agent.send([agent.result("web", success=False, interval_ms=2**32 - 1)])
                await agent.send([agent.result("web", success=False,
                                               timestamp_ms=now_ms - 100 * DAY_MS)])
            clock.advance(0.2)
        assert rejections(service, "too_old") == 12
        assert rejections(service, "bad_interval") == 6
        assert applied(service) == 0
        assert service.classifier.open_outages() == []
        assert metric_value(await page(service), "probenet_probe_failures_total",
                            probe="web") is None

        # The same failures, stamped now: the outage opens, and starts now.
        for _ in range(3):
            for agent in (fra, iad):
                await agent.send([agent.result("web", success=False,
                                               timestamp_ms=int(clock.now * 1000))])
            clock.advance(0.2)
        [outage] = service.classifier.open_outages()
        assert outage.started_at >= now_ms / 1000


async def test_timestamps_outside_the_window_are_counted_and_inside_it_applied(tmp_path):
    clock = ManualClock()
    now_ms = int(clock.now * 1000)
    config = config_of(tmp_path, "max_clock_skew: 1m, max_result_age: 1h")
    async with CollectorService(config, clock=clock) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([
            agent.result("future", timestamp_ms=now_ms + 61_000),
            agent.result("negative", timestamp_ms=-1),
            agent.result("old", timestamp_ms=now_ms - 3_601_000),
            agent.result("skewed", timestamp_ms=now_ms + 59_000),
            agent.result("aged", timestamp_ms=now_ms - 3_599_000),
            agent.result("unstamped", timestamp_ms=0)])
        assert rejections(service, "bad_timestamp") == 2
        assert rejections(service, "too_old") == 1
        assert probes_of(service, "fra-1") == {"skewed", "aged", "unstamped"}


async def test_10_kb_error_texts_and_addresses_are_rejected(tmp_path):
    async with CollectorService(config_of(tmp_path, "max_error_length: 512"),
                                clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([
            agent.result("error", success=False, error="e" * 10_000),
            agent.result("address", address="a" * 10_000),
            agent.result("service", service="s" * 10_000),
            agent.result("fits", success=False, error="e" * 512, address="a" * 2048)])
        assert rejections(service, "field_too_long") == 3
        assert probes_of(service, "fra-1") == {"fits"}


def test_the_details_store_sanitises_what_it_decodes():
    # What the ingest would reject, decoded anyway (the page's second line of defence).
    result = pb.ProbeResult(
        probe="web", kind="http",
        phases=phases(resolve=-1.0, connect=math.nan, tls=1e308, processing=0.5),
        http=pb.HttpDetails(http_version="HTTP/1e308", content_length=-5,
                            tls=pb.TlsFacts(earliest_cert_expiry=-7, version="v" * 500)))
    dropped: Counter[str] = Counter()
    facts = facts_of(result, dropped)
    assert facts is not None
    assert facts.phases == (("processing", 0.5),)
    assert dropped == {"phase_seconds": 3, "http_version": 1, "content_length": 1,
                       "cert_expiry": 1}
    unknown = Counter[str]()
    facts_of(pb.ProbeResult(probe="web", kind="http", phases=phases(warp=0.1),
                            http=pb.HttpDetails(http_version="")), unknown)
    assert unknown == {"phase_name": 1}  # an empty version is unknown, not out of contract
    assert (facts.http_version, facts.content_length) == (0.0, 0)
    assert facts.tls is not None
    assert facts.tls.earliest_cert_expiry == 0
    assert len(facts.tls.version) == 64
    icmp = facts_of(pb.ProbeResult(probe="ping", kind="icmp", icmp=pb.IcmpDetails(
        sent=3, received=3, rtt_min_seconds=-1.0, rtt_avg_seconds=math.nan,
        rtt_max_seconds=math.inf, rtt_stddev_seconds=0.001)))
    assert icmp is not None
    assert icmp[3:7] == (0.0, 0.0, 0.0, 0.001)
    store = LatestDetails()
    store.update("fra-1", {"web": result.SerializeToString()})
    assert store.kept("fra-1", "web") is not None


def test_the_new_limits_load_and_are_bounded(tmp_path):
    config = config_of(tmp_path, "max_clock_skew: 30s, max_result_age: 2h, "
                                 "max_probe_interval: 1h, max_error_length: 256")
    limits = config.limits
    assert (limits.max_clock_skew, limits.max_result_age, limits.max_probe_interval,
            limits.max_error_length) == (30.0, 7200.0, 3600.0, 256)
    with pytest.raises(Exception, match="between 1s and 30 days"):
        config_of(tmp_path, "max_result_age: 60d")


async def test_intervals_up_to_the_limit_are_applied(tmp_path):
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([agent.result("weekly", interval_ms=7 * DAY_MS),
                          agent.result("longer", interval_ms=7 * DAY_MS + 1),
                          agent.result("unset", interval_ms=0)])
        assert rejections(service, "bad_interval") == 1
        assert probes_of(service, "fra-1") == {"weekly", "unset"}
