"""Sharding by probe: two real collector groups, real gRPC in, the merged fleet view out.

Collector A is shard 0 and B shard 1 of 2, each the other's peer (A lists a dead URL before
B's, as the first collector of an HA pair that is down). Test agents stream every probe to
both, as an agent configured with other `shards` would: each collector applies its shard's
probes and counts the others as `wrong_shard`, acknowledged. Time is the services' clock,
moved by hand.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import pytest

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from probenet.sharding import shard_of
from support.collector_client import (
    ManualClock,
    TestAgent,
    applied,
    collector_yaml,
    http_get,
    http_json,
    make_result,
    metric_value,
    rejections,
)
from support.system import free_port
from support.targets import closed_port

PROBES = ("web", "api", "dns", "mail", "cdn", "blog", "shop", "chat")
SHARD = {probe: shard_of(probe, 2) for probe in PROBES}
AGENTS = (("fra-1", "eu"), ("iad-1", "us"))


def probes_of(shard: int) -> list[str]:
    return [p for p in PROBES if SHARD[p] == shard]


def sharding_yaml(shard: int, peer_urls: list[str] | None) -> str:
    text = f"sharding:\n  shard: {shard}\n  shards: 2\n  timeout: 2s\n"
    if peer_urls is not None:
        text += f"  peers:\n    - {{shard: {1 - shard}, urls: {json.dumps(peer_urls)}}}\n"
    return text


class Groups:
    """The two collectors, their clock and the agents streaming to both."""

    def __init__(self, a: CollectorService, b: CollectorService, clock: ManualClock,
                 dead_url: str) -> None:
        self.a, self.b, self.clock, self.dead_url = a, b, clock, dead_url
        self.streams: dict[str, list[TestAgent]] = {"a": [], "b": []}

    async def connect(self, stack: AsyncExitStack) -> None:
        for name, service in (("a", self.a), ("b", self.b)):
            for agent_id, region in AGENTS:
                self.streams[name].append(await stack.enter_async_context(
                    TestAgent(service.grpc_address, agent_id, region)))

    async def round(self, *, failing: tuple[str, ...] = ()) -> None:
        """One probe interval: every agent sends every probe to both collectors."""
        self.clock.advance(0.2)
        for streams in self.streams.values():
            for i, agent in enumerate(streams):
                stamp = int(self.clock.now * 1000) + i
                ack = await agent.send([agent.result(p, timestamp_ms=stamp,
                                                     success=p not in failing)
                                        for p in PROBES])
                # Every result is acknowledged, the wrong shard's too: none is resent.
                assert ack.acked_seq == agent.next_seq - 1


@pytest.fixture
async def groups(tmp_path):
    clock = ManualClock()
    http_a, http_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{http_a}", f"http://127.0.0.1:{http_b}"
    dead_url = f"http://127.0.0.1:{closed_port()}"
    config_a = parse_config(collector_yaml(
        str(tmp_path / "a.db"), http_listen=f"127.0.0.1:{http_a}",
        extra=sharding_yaml(0, [dead_url, url_b])))
    config_b = parse_config(collector_yaml(
        str(tmp_path / "b.db"), http_listen=f"127.0.0.1:{http_b}",
        extra=sharding_yaml(1, [url_a])))
    async with CollectorService(config_a, clock=clock) as a, \
            CollectorService(config_b, clock=clock) as b:
        yield Groups(a, b, clock, dead_url)


def test_the_probes_fall_in_both_shards():
    assert probes_of(0)
    assert probes_of(1)


async def test_each_collector_keeps_its_shard_and_counts_the_others(groups):
    async with AsyncExitStack() as stack:
        await groups.connect(stack)
        await groups.round()
        await groups.round()
        rounds = 2
        for shard, service in enumerate((groups.a, groups.b)):
            mine, others = probes_of(shard), probes_of(1 - shard)
            assert applied(service) == rounds * len(AGENTS) * len(mine)
            assert rejections(service, "wrong_shard") == rounds * len(AGENTS) * len(others)
            local = await http_json(service.http.url + "/api/v1/targets")
            assert sorted(t["probe"] for t in local) == sorted(mine)

        # A path trace of another shard's probe is refused the same way, and acknowledged.
        agent = groups.streams["a"][0]
        foreign = probes_of(1)[0]
        before = rejections(groups.a, "wrong_shard")
        ack = await agent.send([make_result(agent.next_seq, foreign, kind="trace")])
        agent.next_seq += 1
        assert ack.acked_seq == agent.next_seq - 1
        assert rejections(groups.a, "wrong_shard") == before + 1
        # The stream goes on.
        await groups.round()


async def test_either_collector_serves_every_probe_with_its_shard(groups):
    async with AsyncExitStack() as stack:
        await groups.connect(stack)
        await groups.round()
        for service in (groups.a, groups.b):
            fleet = await http_json(service.http.url + "/api/v1/fleet/targets")
            assert fleet["complete"] is True
            assert {t["probe"]: t["shard"] for t in fleet["targets"]} == SHARD
            assert len(fleet["targets"]) == len(PROBES)
            assert [(s["shard"], s["ok"]) for s in fleet["shards"]] == [(0, True), (1, True)]

        fleet_a = await http_json(groups.a.http.url + "/api/v1/fleet/targets")
        # B's first URL is dead: the group's second URL answered.
        assert fleet_a["shards"] == [
            {"shard": 0, "source": "local", "ok": True},
            {"shard": 1, "source": groups.b.http.url, "ok": True}]

        agents = await http_json(groups.b.http.url + "/api/v1/fleet/agents")
        assert agents["complete"] is True
        assert [(a["id"], a["shards"], a["shard"]) for a in agents["agents"]] == [
            ("fra-1", [0, 1], 1), ("iad-1", [0, 1], 1)]

        _, _, text = await http_get(groups.a.http.url + "/metrics")
        assert metric_value(text, "probenet_fleet_peer_up", shard="1") == 1


async def test_an_outage_of_shard_1_shows_in_shard_0s_fleet_outages(groups):
    down = probes_of(1)[0]
    async with AsyncExitStack() as stack:
        await groups.connect(stack)
        await groups.round()
        await groups.round(failing=(down,))
        await groups.round(failing=(down,))
        own = await http_json(groups.b.http.url + "/api/v1/outages?active=true")
        assert [(o["probe"], o["scope"]) for o in own] == [(down, "global")]
        assert await http_json(groups.a.http.url + "/api/v1/outages?active=true") == []

        fleet = await http_json(groups.a.http.url + "/api/v1/fleet/outages?active=true")
        assert fleet["complete"] is True
        assert [(o["id"], o["probe"], o["shard"]) for o in fleet["outages"]] == [
            (own[0]["id"], down, 1)]
        # The query string reached the peer unchanged: a limit it applies as well.
        fleet = await http_json(groups.a.http.url + "/api/v1/fleet/outages?limit=1")
        assert [o["id"] for o in fleet["outages"]] == [own[0]["id"]]


async def test_a_stopped_peer_leaves_the_local_shard_served_and_incomplete(groups):
    async with AsyncExitStack() as stack:
        await groups.connect(stack)
        await groups.round()
        peer_url = groups.b.http.url
    await groups.b.aclose()
    status, content_type, body = await http_get(groups.a.http.url + "/api/v1/fleet/targets")
    assert status == 200
    assert content_type.startswith("application/json")
    fleet = json.loads(body)
    assert fleet["complete"] is False
    assert {t["probe"]: t["shard"] for t in fleet["targets"]} == dict.fromkeys(probes_of(0), 0)
    local, peer = fleet["shards"]
    assert local == {"shard": 0, "source": "local", "ok": True}
    assert (peer["shard"], peer["ok"], peer["source"]) == (1, False, None)
    # Both URLs of the group were tried, and each is named with what went wrong.
    assert groups.dead_url in peer["error"]
    assert peer_url in peer["error"]

    _, _, text = await http_get(groups.a.http.url + "/metrics")
    assert metric_value(text, "probenet_fleet_peer_up", shard="1") == 0


@pytest.mark.parametrize(("query", "parameter"), [
    ("/api/v1/fleet/outages?limit=0", "limit"),
    ("/api/v1/fleet/outages?active=maybe", "active"),
])
async def test_a_bad_parameter_gets_the_local_400(groups, query, parameter):
    status, _, body = await http_get(groups.a.http.url + query)
    assert status == 400
    answer = json.loads(body)
    assert answer["parameter"] == parameter
    assert parameter in answer["error"]


async def test_without_peers_there_is_no_fleet_view(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "solo.db"),
                                         extra=sharding_yaml(0, None)))
    async with CollectorService(config, clock=ManualClock()) as solo:
        for resource in ("targets", "outages", "agents"):
            status, content_type, body = await http_get(
                f"{solo.http.url}/api/v1/fleet/{resource}")
            assert status == 404
            assert content_type.startswith("application/json")
            assert "sharding.peers" in json.loads(body)["error"]
