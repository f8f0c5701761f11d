"""Path traces for real on loopback: the engine, and the agent's failure/baseline triggers.

The collector is `support.pushing_collector.PushingCollector` (a real Ingest server over
gRPC on loopback); traces arrive there as results of kind "trace".
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from probenet.agent.config import parse_config
from probenet.agent.main import Agent
from probenet.agent.trace import trace
from probenet.agent.tracing import Tracer
from probenet.v1 import probenet_pb2 as pb
from support.pushing_collector import PushingCollector
from support.system import ROOT
from support.targets import closed_port, wait_until


def closed_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def test_udp_trace_to_127_0_0_1_is_reached_at_hop_1():
    result = await trace("127.0.0.1", hop_timeout_s=2.0)
    assert result.error == ""
    assert result.reached
    assert result.stop_reason == "reached"
    assert result.address == "127.0.0.1"
    assert len(result.hops) == 1
    first = result.hops[0]
    assert (first.ttl, first.address, first.sent, first.received) == (1, "127.0.0.1", 3, 3)
    assert all(rtt > 0 for rtt in first.rtts)
    assert first.error == ""


async def test_udp_trace_to_ipv6_loopback_is_reached_at_hop_1():
    result = await trace("::1", probes_per_hop=2, hop_timeout_s=2.0)
    assert result.error == ""
    assert result.reached
    assert [(h.ttl, h.address, h.received) for h in result.hops] == [(1, "::1", 2)]
    assert all(rtt > 0 for rtt in result.hops[0].rtts)


async def test_a_closed_udp_port_answers_port_unreachable_which_is_reached():
    port = closed_udp_port()
    result = await trace("127.0.0.1", port=port, probes_per_hop=1, hop_timeout_s=2.0)
    assert result.reached
    assert result.hops[0].error == ""  # the destination's normal answer, not an error


async def test_a_port_that_listens_stays_silent_until_max_hops():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        result = await trace("127.0.0.1", port=port, probes_per_hop=1, max_hops=1,
                             hop_timeout_s=0.2)
    assert not result.reached
    assert result.stop_reason == "max_hops"
    assert [(h.ttl, h.address, h.sent, h.received) for h in result.hops] == [(1, "", 1, 0)]


async def test_a_name_that_resolves_to_nothing_is_an_error_not_an_exception():
    async def nothing(host: str, family: int) -> list[str]:
        return []

    async def fails(host: str, family: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    empty = await trace("nowhere.test", resolver=nothing)
    assert empty.error == "cannot resolve 'nowhere.test': no address"
    assert (empty.hops, empty.reached, empty.address) == ((), False, "")
    failed = await trace("nowhere.test", resolver=fails)
    assert failed.error.startswith("cannot resolve 'nowhere.test': ")
    assert "Name or service not known" in failed.error
    family = await trace("127.0.0.1", family="ip6")
    assert family.error == "cannot resolve '127.0.0.1': no address of family ip6"


def ping_allowed() -> bool:
    with open("/proc/sys/net/ipv4/ping_group_range", encoding="ascii") as file:  # noqa: PTH123
        low, high = (int(v) for v in file.read().split())
    return any(low <= gid <= high for gid in {os.getgid(), *os.getgroups()})


def raw_allowed(family: int) -> bool:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        socket.socket(family, socket.SOCK_RAW, proto).close()
    except PermissionError:
        return False
    return True


@pytest.mark.parametrize(("host", "family"), [("127.0.0.1", socket.AF_INET),
                                              ("::1", socket.AF_INET6)])
async def test_icmp_method_traces_or_says_why_it_cannot(host, family):
    result = await trace(host, method="icmp", hop_timeout_s=2.0)
    if ping_allowed() or raw_allowed(family):
        assert result.error == ""
        assert result.reached
        assert [(h.ttl, h.address, h.received) for h in result.hops] == [(1, host, 3)]
        assert all(rtt > 0 for rtt in result.hops[0].rtts)
    else:
        assert not result.reached
        assert "ping_group_range" in result.error
        assert "CAP_NET_RAW" in result.error
        assert result.error.startswith("cannot open a icmp trace socket: ")


def test_module_entry_point_prints_the_json_shape():
    out = subprocess.run(
        [sys.executable, "-m", "probenet.agent.trace", "127.0.0.1", "--max-hops", "4",
         "--probes", "2", "--hop-timeout", "2s", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert set(document) == {"hops", "reached", "stop_reason", "error"}
    assert document["reached"] is True
    assert document["stop_reason"] == "reached"
    [first] = document["hops"]
    assert set(first) == {"ttl", "address", "sent", "received", "rtt_seconds", "error"}
    assert (first["ttl"], first["address"], first["sent"], first["received"]) == (
        1, "127.0.0.1", 2, 2)


def test_module_entry_point_refuses_bad_arguments_and_reports_errors():
    bad = subprocess.run(
        [sys.executable, "-m", "probenet.agent.trace", "127.0.0.1", "--max-hops", "0",
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert "max_hops: expected 1..64, got 0" in bad.stderr
    unresolved = subprocess.run(
        [sys.executable, "-m", "probenet.agent.trace", "127.0.0.1", "--family", "ip6",
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert unresolved.returncode == 2
    assert json.loads(unresolved.stdout)["error"] == (
        "cannot resolve '127.0.0.1': no address of family ip6")


def agent_config(collector: str, port: int, trace_options: str):
    return parse_config(f"""
agent: {{id: trace-1, region: eu}}
collectors: [{{address: "{collector}"}}]
stream: {{backoff_initial: 50ms, backoff_max: 300ms, linger: 20ms}}
probes:
  - {{name: down, service: shop, kind: tcp, target: "127.0.0.1:{port}", interval: 200ms,
     timeout: 150ms, confirm_delay: 20ms, trace: {trace_options}}}
""")


def traces(collector: PushingCollector) -> list[pb.ProbeResult]:
    return [r for r in collector.results if r.kind == "trace"]


def confirmed_failures(collector: PushingCollector) -> int:
    return sum(1 for r in collector.results
               if r.kind == "tcp" and r.confirmed and not r.success)


async def test_a_confirmed_failure_sends_one_trace_per_min_gap():
    registry = CollectorRegistry()
    port = closed_port()
    async with PushingCollector() as collector:
        config = agent_config(collector.address, port,
                              "{on_failure: true, min_gap: 1h, hop_timeout: 500ms}")
        async with Agent(config, registry=registry):
            await wait_until(lambda: len(traces(collector)) >= 1, timeout_s=10)
            await wait_until(lambda: confirmed_failures(collector) >= 4, timeout_s=10)
    [sent] = traces(collector)
    assert (sent.probe, sent.service, sent.target) == ("down", "shop", f"127.0.0.1:{port}")
    assert sent.address == "127.0.0.1"
    assert sent.success
    assert sent.error == ""
    assert sent.seq > 0
    assert sent.WhichOneof("details") == "trace"
    path = sent.trace
    assert (path.trigger, path.method, path.max_hops, path.probes_per_hop) == (
        "failure", "udp", 30, 3)
    assert path.reached
    assert path.stop_reason == "reached"
    assert [(h.ttl, h.address) for h in path.hops] == [(1, "127.0.0.1")]
    # The trace came after a confirmed failure, never before.
    first_confirmed = min(r.seq for r in collector.results
                          if r.kind == "tcp" and r.confirmed)
    assert sent.seq > first_confirmed
    # One failure trace despite several confirmed failures: the rest were skipped.
    assert registry.get_sample_value("probenet_agent_traces_total",
                                     {"trigger": "failure", "result": "reached"}) == 1
    assert registry.get_sample_value("probenet_agent_traces_skipped_total",
                                     {"reason": "min_gap"}) >= 1
    # The probe counters never count a trace.
    assert registry.get_sample_value("probenet_agent_probe_runs_total",
                                     {"kind": "trace", "result": "success"}) is None


async def test_without_on_failure_no_trace_is_sent():
    port = closed_port()
    async with PushingCollector() as collector:
        config = agent_config(collector.address, port, "{max_hops: 3}")
        async with Agent(config):
            await wait_until(lambda: confirmed_failures(collector) >= 3, timeout_s=10)
            await asyncio.sleep(0.3)
    assert traces(collector) == []


async def test_a_baseline_trace_runs_on_schedule():
    config = agent_config("127.0.0.1:1", closed_port(),
                          "{every: 10s, hop_timeout: 500ms, probes_per_hop: 2}")
    specs = {spec.name: spec for spec in config.probes}
    sent: list[pb.ProbeResult] = []
    rng = random.Random()
    rng.random = lambda: 0.0  # type: ignore[method-assign]  # first baseline at once
    async with Tracer(lambda: specs, sink=sent.append, rng=rng) as tracer:
        await wait_until(lambda: len(sent) == 1, timeout_s=5)
        assert tracer.taken == 1
    [baseline] = sent
    assert baseline.kind == "trace"
    assert baseline.trace.trigger == "baseline"
    assert baseline.trace.probes_per_hop == 2
    assert baseline.address == "127.0.0.1"
    assert baseline.success


async def test_concurrent_traces_are_bounded():
    config = parse_config("""
agent: {id: trace-2, region: eu}
collectors: [{address: "127.0.0.1:1"}]
probes:
""" + "".join(f'  - {{name: p{i}, kind: tcp, target: "127.0.0.1:1", '
              f"trace: {{on_failure: true}}}}\n" for i in range(6)))
    specs = {spec.name: spec for spec in config.probes}
    started: list[str] = []
    release = asyncio.Event()

    async def slow_trace(host: str, **_: object):
        started.append(host)
        await release.wait()
        return await trace(host, probes_per_hop=1)

    sent: list[pb.ProbeResult] = []
    async with Tracer(lambda: specs, sink=sent.append, run_trace=slow_trace,
                      max_concurrent=4) as tracer:
        for name in specs:
            tracer.observe(pb.ProbeResult(probe=name, kind="tcp", confirmed=True,
                                          success=False, address="127.0.0.1"))
        await wait_until(lambda: len(started) == 4)
        assert tracer.running == 4
        release.set()
        await wait_until(lambda: len(sent) == 4)
    assert sorted(r.probe for r in sent) == ["p0", "p1", "p2", "p3"]
