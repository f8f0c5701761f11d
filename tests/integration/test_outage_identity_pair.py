"""An HA pair: two real collectors (real gRPC, HTTP API, journal) fed the same agents' results
name the same outages with the same ids (issue 17).

Each agent holds one stream per collector and sends every batch (same seqs, same agent
timestamps) to both, as a real agent with two `collectors:` entries does. The two collectors'
clocks differ and the agents reach them in different orders. Time is each service's injected
clock, moved by hand; nothing sleeps.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import pytest

from probenet.collector.classify import outage_id
from probenet.collector.config import parse_config
from probenet.collector.model import OutageKind
from probenet.collector.server import CollectorService
from support.collector_client import ManualClock, TestAgent, collector_yaml, http_json

PROBES = ("web", "api", "photos", "chat")
FLEET = (("fra-1", "eu"), ("fra-2", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
INTERVAL_MS = 200


class PairedAgent:
    """One agent identity, one stream per collector; a batch goes to every stream it has."""

    def __init__(self, agent_id: str, region: str, epoch: int) -> None:
        self.agent_id = agent_id
        self.region = region
        self.epoch = epoch
        self.streams: dict[str, TestAgent] = {}
        self.sent: list[list[tuple[str, bool, int]]] = []  # every batch: (probe, ok, stamp)

    async def connect(self, stack: AsyncExitStack, name: str, address: str) -> TestAgent:
        stream = await stack.enter_async_context(TestAgent(
            address, self.agent_id, self.region, epoch=self.epoch, interval_ms=INTERVAL_MS,
            labels={"network": f"as-{self.agent_id}"}))
        self.streams[name] = stream
        return stream

    def batch(self, stamp_ms: int, failing: set[str]) -> list[tuple[str, bool, int]]:
        spec = [(p, p not in failing, stamp_ms) for p in PROBES]
        self.sent.append(spec)
        return spec

    @staticmethod
    async def send(stream: TestAgent, spec: list[tuple[str, bool, int]], first_seq: int) -> None:
        results = [stream.result(probe, seq=first_seq + i, success=ok, timestamp_ms=stamp)
                   for i, (probe, ok, stamp) in enumerate(spec)]
        ack = await stream.send(results)
        assert ack.acked_seq >= first_seq + len(spec) - 1


async def run_round(agents: list[PairedAgent], clocks: dict[str, ManualClock],
                    services: dict[str, CollectorService], round_no: int, *, t0_ms: int,
                    failing: dict[str, set[str]]) -> None:
    """One interval: each agent probes at its own phase (agent clock) and sends the batch to
    every collector it is connected to; the collectors see the agents in opposite orders."""
    specs = {}
    for i, agent in enumerate(agents):
        stamp = t0_ms + round_no * INTERVAL_MS + i * 7
        specs[agent.agent_id] = agent.batch(stamp, failing.get(agent.agent_id, set()))
    first_seq = round_no * len(PROBES) + 1
    for name, clock in clocks.items():
        clock.advance(INTERVAL_MS / 1000)
        order = agents if name == "a" else list(reversed(agents))
        for agent in order:
            stream = agent.streams.get(name)
            if stream is not None:
                await PairedAgent.send(stream, specs[agent.agent_id], first_seq)
        services[name].tick()


def outage_keys(records: list[dict]) -> dict[tuple[str, str | None], dict]:
    return {(o["kind"], o["probe"] or o["service"] or o["region"]): o for o in records}


def failing_rounds(round_no: int) -> dict[str, set[str]]:
    """web fails everywhere, api in eu (both of its agents), from round 2 on."""
    if round_no < 2:
        return {}
    return {"fra-1": {"web", "api"}, "fra-2": {"web", "api"}, "iad-1": {"web"},
            "sin-1": {"web"}}


@pytest.fixture
async def pair(tmp_path):
    start = time.time()
    clocks = {"a": ManualClock(start), "b": ManualClock(start + 0.35)}  # clocks apart
    services = {}
    async with AsyncExitStack() as stack:
        for name in ("a", "b"):
            config = parse_config(collector_yaml(str(tmp_path / f"journal-{name}.db")))
            services[name] = await stack.enter_async_context(
                CollectorService(config, clock=clocks[name]))
        yield services, clocks, int(start * 1000) - 2_000


async def test_both_collectors_give_the_same_ids(pair):
    services, clocks, t0_ms = pair
    epoch = time.time_ns()
    agents = [PairedAgent(agent_id, region, epoch) for agent_id, region in FLEET]
    async with AsyncExitStack() as stack:
        for agent in agents:
            for name, service in services.items():
                await agent.connect(stack, name, service.grpc_address)
        for n in range(5):
            await run_round(agents, clocks, services, n, t0_ms=t0_ms, failing=failing_rounds(n))

        a = outage_keys(await http_json(services["a"].http.url + "/api/v1/outages"))
        b = outage_keys(await http_json(services["b"].http.url + "/api/v1/outages"))
    assert set(a) == {("probe", "web"), ("probe", "api")}, a
    assert a[("probe", "web")]["scope"] == "global"
    assert a[("probe", "api")]["scope"] == "regional"
    assert a[("probe", "api")]["regions"] == ["eu"]
    assert {key: o["id"] for key, o in a.items()} == {key: o["id"] for key, o in b.items()}
    assert a[("probe", "web")]["id"] != a[("probe", "api")]["id"]
    # The detections happened on different clocks; the starts are the agents' own.
    assert a[("probe", "web")]["detected_at"] != b[("probe", "web")]["detected_at"]
    first_failure = t0_ms + 2 * INTERVAL_MS  # fra-1's first failing round
    assert a[("probe", "web")]["id"] == outage_id(OutageKind.PROBE, "web",
                                                  first_failure / 1000)
    assert a[("probe", "api")]["id"] == outage_id(OutageKind.PROBE, "api",
                                                  first_failure / 1000)


async def test_late_collector_gets_the_same_id_from_the_resent_backlog(pair):
    # B starts (its agents connect) only after the outage opened on A; every agent then
    # resends what B never acknowledged (its spool for B), then goes on streaming to both.
    services, clocks, t0_ms = pair
    epoch = time.time_ns()
    agents = [PairedAgent(agent_id, region, epoch) for agent_id, region in FLEET]
    async with AsyncExitStack() as stack:
        for agent in agents:
            await agent.connect(stack, "a", services["a"].grpc_address)
        for n in range(5):
            await run_round(agents, clocks, services, n, t0_ms=t0_ms, failing=failing_rounds(n))
        a_open = outage_keys(await http_json(
            services["a"].http.url + "/api/v1/outages?active=true"))
        assert set(a_open) == {("probe", "web"), ("probe", "api")}

        clocks["b"].advance(5 * INTERVAL_MS / 1000)  # B was down meanwhile
        for agent in agents:
            stream = await agent.connect(stack, "b", services["b"].grpc_address)
            for n, spec in enumerate(agent.sent):  # the spool: oldest first
                await PairedAgent.send(stream, spec, n * len(PROBES) + 1)
        services["b"].tick()
        for n in range(5, 7):
            await run_round(agents, clocks, services, n, t0_ms=t0_ms, failing=failing_rounds(n))

        a = outage_keys(await http_json(services["a"].http.url + "/api/v1/outages"))
        b = outage_keys(await http_json(services["b"].http.url + "/api/v1/outages"))
    assert set(b) == set(a) == {("probe", "web"), ("probe", "api")}, (a, b)
    assert {key: o["id"] for key, o in b.items()} == {key: o["id"] for key, o in a.items()}
    assert {key: o["started_at"] for key, o in b.items()} == {
        key: o["started_at"] for key, o in a.items()}
