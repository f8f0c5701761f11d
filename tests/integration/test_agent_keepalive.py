"""A silent partition between agent and collector: found by keepalive, healed by a new connection.

Real agent, real collector over gRPC on loopback, with a userspace proxy between them that
drops every byte without closing anything (tests/support/blackhole_proxy.py), so no root is
needed. The keepalive is the shortest the collector's ping policy permits (10 s) with a 1 s
answer timeout; the ack watchdog is out of the way unless a test is about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from probenet.agent.config import parse_config as parse_agent_config
from probenet.agent.main import Agent
from probenet.agent.stream import keepalive_options
from probenet.collector.config import parse_config as parse_collector_config
from probenet.collector.server import CollectorService
from probenet.configfile import ConfigError
from support.blackhole_proxy import BlackholeProxy
from support.collector_client import collector_yaml
from support.targets import TcpTarget, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from probenet.agent.stream import CollectorStream
    from probenet.v1 import probenet_pb2 as pb

KEEPALIVE_S = 10.0  # the collector permits no more frequent pings
KEEPALIVE_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 1.0
BACKOFF_MAX_S = 2.0
SLACK_S = 3.0  # scheduling, a handshake, the first ack: "a few seconds"


def agent_config(collector: str, target: str, *, ack_timeout: str = "5m",
                 keepalive: str = f"{KEEPALIVE_S:g}s",
                 keepalive_timeout: str = f"{KEEPALIVE_TIMEOUT_S:g}s"):
    lines = "\n".join(f"  - {{name: p{i}, kind: tcp, target: '{target}', interval: 100ms, "
                      "timeout: 80ms}" for i in range(3))
    return parse_agent_config(f"""
agent: {{id: ka-1, region: eu, labels: {{network: test}}}}
collectors:
  - {{address: "{collector}", connect_timeout: {CONNECT_TIMEOUT_S:g}s,
     keepalive: {keepalive}, keepalive_timeout: {keepalive_timeout}}}
stream: {{backoff_initial: 100ms, backoff_max: {BACKOFF_MAX_S:g}s, linger: 20ms,
          ack_timeout: {ack_timeout}}}
probes:
{lines}
""")


def collector_config(tmp_path):
    return parse_collector_config(collector_yaml(str(tmp_path / "journal.db"),
                                                 grpc_listen="127.0.0.1:0"))


def ingested(service: CollectorService, outcome: str) -> float:
    return service.registry.get_sample_value("probenet_ingest_results_total",
                                             {"outcome": outcome}) or 0.0


def applied(service: CollectorService) -> float:
    return ingested(service, "applied")


@dataclass
class Rig:
    """A collector, the proxy in front of it, and an agent streaming through the proxy."""

    service: CollectorService
    proxy: BlackholeProxy
    agent: Agent

    @property
    def stream(self) -> CollectorStream:
        return self.agent.streams[0]


@contextlib.asynccontextmanager
async def rig(tmp_path, *, observers=(), **agent_options: str) -> AsyncIterator[Rig]:
    """Everything up, the agent connected and 10 results applied."""
    async with contextlib.AsyncExitStack() as stack:
        tcp = await stack.enter_async_context(TcpTarget())
        service = await stack.enter_async_context(CollectorService(collector_config(tmp_path)))
        proxy = await stack.enter_async_context(BlackholeProxy(service.grpc_address))
        config = agent_config(proxy.address, tcp.address, **agent_options)
        agent = await stack.enter_async_context(Agent(config, observers=list(observers)))
        assert await agent.streams[0].wait_connected(10)
        await wait_until(lambda: applied(service) >= 10, 10)
        yield Rig(service, proxy, agent)


async def _drain_and_count(agent: Agent, service: CollectorService) -> None:
    """Stop probing, wait for every ack, then: each result applied once, in order."""
    agent.scheduler.stop()
    await agent.scheduler.wait_idle(5)
    assert await agent.streams[0].flush(10)
    assert applied(service) == agent.fanout.last_seq


async def _cut_until_noticed(proxy: BlackholeProxy, stream: CollectorStream) -> float:
    """Partition silently; seconds until the stream noticed (within keepalive + timeout)."""
    proxy.partition()
    cut_at = time.monotonic()
    await wait_until(lambda: stream.state != "connected",
                     KEEPALIVE_S + KEEPALIVE_TIMEOUT_S + SLACK_S)
    assert "UNAVAILABLE" in stream.last_error
    return time.monotonic() - cut_at


async def test_a_silent_partition_is_found_by_keepalive_and_healed_exactly_once(tmp_path):
    seen: list[pb.ProbeResult] = []
    async with rig(tmp_path, observers=[seen.append]) as r:
        service, proxy, agent, stream = r.service, r.proxy, r.agent, r.stream
        # Nothing closes, the ack watchdog sleeps for 5 min: only a ping that goes
        # unanswered (keepalive, or a flow-control ping under the same timeout) ends it.
        detected_s = await _cut_until_noticed(proxy, stream)
        # Stay cut a while: connects are attempted and time out; results pile up.
        await wait_until(lambda: stream.state == "backoff" and stream.reconnects == 1
                         and proxy.accepted >= 2, 10)
        buffered = agent.fanout.last_seq - int(applied(service))

        proxy.heal()
        healed_at = time.monotonic()
        assert await stream.wait_connected(BACKOFF_MAX_S + CONNECT_TIMEOUT_S + SLACK_S)
        reconnect_s = time.monotonic() - healed_at
        assert stream.reconnects == 2
        await _drain_and_count(agent, service)
    assert buffered > 0
    assert [result.seq for result in seen] == list(range(1, len(seen) + 1))
    print(f"detected after {detected_s:.1f}s, reconnected {reconnect_s:.1f}s after the heal, "
          f"{len(seen)} results, {buffered} buffered while cut, "
          f"{ingested(service, 'duplicate'):g} duplicates dropped")


async def test_an_idle_connection_is_kept_alive_and_its_death_found(tmp_path):
    # Nothing to send, so no flow-control pings either: only keepalive pings probe it,
    # and the collector's ping policy must accept them (else GOAWAY too_many_pings).
    async with rig(tmp_path) as r:
        service, proxy, agent, stream = r.service, r.proxy, r.agent, r.stream
        await _drain_and_count(agent, service)  # and no more results from here on
        produced = agent.fanout.last_seq
        await asyncio.sleep(2 * KEEPALIVE_S + 1)  # two pings at least
        assert (stream.state, stream.reconnects) == ("connected", 1)

        detected_s = await _cut_until_noticed(proxy, stream)
        proxy.heal()
        assert await stream.wait_connected(BACKOFF_MAX_S + CONNECT_TIMEOUT_S + SLACK_S)
    assert applied(service) == produced
    print(f"idle connection: cut found after {detected_s:.1f}s ({stream.last_error})")


async def test_a_reconnect_never_reuses_the_dead_connection(tmp_path):
    # The ack watchdog ends the stream first (2 s), while the old connection still looks
    # alive to gRPC (its pings time out after 30 s). A new channel that took the pooled
    # subchannel would be READY at once on that dead connection and stay stuck on it.
    async with rig(tmp_path, ack_timeout="2s", keepalive_timeout="30s") as r:
        service, proxy, agent, stream = r.service, r.proxy, r.agent, r.stream
        proxy.partition()
        await wait_until(lambda: stream.state != "connected", 10)
        assert "no acknowledgement" in stream.last_error
        # The path comes back, the old connection does not (a dropped NAT entry).
        proxy.heal(revive_held=False)
        healed_at = time.monotonic()
        opened_before = proxy.opened_upstream
        assert await stream.wait_connected(BACKOFF_MAX_S + CONNECT_TIMEOUT_S + SLACK_S)
        reconnect_s = time.monotonic() - healed_at
        assert proxy.opened_upstream > opened_before  # a new TCP connection carried it
        await _drain_and_count(agent, service)
    print(f"reconnected {reconnect_s:.1f}s after the heal on a new connection")


def test_keepalive_options_follow_the_collector_entry():
    config = agent_config("127.0.0.1:7070", "127.0.0.1:9", keepalive="25s")
    assert dict(keepalive_options(config.collectors[0])) == {
        "grpc.keepalive_time_ms": 25_000, "grpc.keepalive_timeout_ms": 1_000,
        "grpc.http2.ping_timeout_ms": 1_000,
        "grpc.keepalive_permit_without_calls": 1, "grpc.http2.max_pings_without_data": 0}


def test_a_keepalive_the_collector_would_refuse_is_a_config_error():
    with pytest.raises(ConfigError, match=r"collectors\[0\]\.keepalive: must be at least 10s"):
        agent_config("127.0.0.1:7070", "127.0.0.1:9", keepalive="5s")
