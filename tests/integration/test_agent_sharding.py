"""Sharding by probe: a real agent, four real gRPC collectors on loopback in two shards.

Collectors are `support.pushing_collector.PushingCollector` (a real Ingest server that
records hellos, results and ConfigStatus, and acknowledges every batch); the probes run
against a real TCP target. Shard 0 is served by a1 and a2 (an HA pair), shard 1 by b1 and
b2; b2 is down at first (nothing listens on its port) and comes up later on that port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probenet.agent.config import parse_config
from probenet.agent.main import Agent
from probenet.sharding import shard_of
from support.pushing_collector import PushingCollector, probe_config
from support.system import free_port
from support.targets import TcpTarget, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from probenet.v1 import probenet_pb2 as pb

LOCAL = [f"local-{i}" for i in range(6)]
PUSHED = [f"fleet-{i}" for i in range(4)]
SHARDS = 2


def names_of(shard: int, names: list[str]) -> set[str]:
    return {n for n in names if shard_of(n, SHARDS) == shard}


def agent_config(tmp_path: Path, target: str, shard_addresses: list[tuple[str, int]]):
    collectors = "\n".join(f'  - {{address: "{a}", shard: {s}}}' for a, s in shard_addresses)
    probes = "\n".join(f"  - {{name: {n}, kind: tcp, target: '{target}', interval: 100ms, "
                       "timeout: 80ms}" for n in LOCAL)
    return parse_config(f"""
agent: {{id: fra-1, region: eu}}
collectors:
{collectors}
stream: {{backoff_initial: 50ms, backoff_max: 300ms, linger: 20ms}}
remote_config: true
probes:
{probes}
""", str(tmp_path / "agent.yaml"))


def fleet_set(target: str) -> pb.ProbeConfig:
    return probe_config({"defaults": {}, "probes": [
        {"name": n, "kind": "tcp", "target": target, "interval": "100ms", "timeout": "80ms"}
        for n in PUSHED]}, issued_at_ms=1_700_000_000_000)


def seqs(collector: PushingCollector) -> list[int]:
    return [r.seq for r in collector.results]


async def test_each_collector_gets_its_shard_and_a_down_shard_holds_back_no_other(tmp_path):
    every = LOCAL + PUSHED
    shard_names = {s: names_of(s, every) for s in range(SHARDS)}
    # The names are fixed; this only guards the test's own premise.
    assert all(len(names_of(s, LOCAL)) >= 2 for s in range(SHARDS)), shard_names
    assert all(names_of(s, PUSHED) for s in range(SHARDS)), shard_names
    seen: list[pb.ProbeResult] = []
    b2_port = free_port()
    async with TcpTarget() as target, PushingCollector("a1") as a1, \
            PushingCollector("a2") as a2, PushingCollector("b1") as b1:
        config_set = fleet_set(target.address)
        for collector in (a1, a2, b1):  # every collector group pushes the same fleet file
            collector.offer(config_set)
        config = agent_config(tmp_path, target.address, [
            (a1.address, 0), (a2.address, 0), (b1.address, 1), (f"127.0.0.1:{b2_port}", 1)])
        async with Agent(config, observers=[seen.append], state_dir=tmp_path / "state") as agent:
            b2_stream, b2_spool = agent.streams[3], agent.spools[3]
            # Every probe, local and pushed, reaches both collectors of its shard while b2
            # is down: shard 0 is not held back, nor is b1.
            await wait_until(lambda: a1.probes_seen() == shard_names[0]
                             and a2.probes_seen() == shard_names[0]
                             and b1.probes_seen() == shard_names[1], 20)
            assert b2_stream.state in {"connecting", "backoff"}
            assert agent.remote_version == config_set.version
            await wait_until(lambda: len(b2_spool) >= 20, 20)
            waiting_for_b2 = [r.seq for r in seen if shard_of(r.probe, SHARDS) == 1]
            # b2's spool holds shard 1's results only (shard 0's went to a1 and a2 alone).
            assert len(b2_spool) <= len(waiting_for_b2)
            assert a1.probes_seen() == shard_names[0]  # still nothing of shard 1 at a1

            async with PushingCollector("b2", port=b2_port) as b2:
                b2.offer(config_set)
                assert await b2_stream.wait_connected(20)
                await wait_until(lambda: set(waiting_for_b2) <= set(seqs(b2)), 20)
                await wait_until(lambda: all(c.statuses for c in (a1, a2, b1, b2)), 20)
                await wait_until(lambda: b2.probes_seen() == shard_names[1], 20)
                assert await agent.shutdown(10.0)

    by_seq = {r.seq: r for r in seen}
    assert [r.seq for r in seen] == list(range(1, len(seen) + 1))
    for collector, shard in ((a1, 0), (a2, 0), (b1, 1), (b2, 1)):
        got = seqs(collector)
        # Exactly its shard's results, each once, as the agent numbered them.
        assert {by_seq[s].probe for s in got} <= shard_names[shard], collector.collector_id
        assert all(shard_of(r.probe, SHARDS) == shard for r in collector.results)
        assert len(got) == len(set(got)), collector.collector_id
        assert all(by_seq[r.seq].probe == r.probe for r in collector.results)
        # Every hello reached it, with this agent's identity and its shard's share.
        assert collector.hellos
        assert {h.agent_id for h in collector.hellos} == {"fra-1"}
        assert {h.interval_ms for h in collector.hellos} == {100}
        # ConfigStatus goes to every collector, with the same running version.
        assert {s.version for s in collector.statuses} == {config_set.version}

    # The HA pairs got the same results (the agent flushed every spool before stopping).
    assert seqs(a1)
    assert sorted(seqs(a1)) == sorted(seqs(a2))
    assert seqs(b1)
    assert sorted(seqs(b1)) == sorted(seqs(b2))
    for shard, pair in ((0, a1), (1, b1)):
        expected = sorted(r.seq for r in seen if shard_of(r.probe, SHARDS) == shard)
        assert sorted(seqs(pair)) == expected
    # The first hello came before any pushed set: it counts the shard's local probes; b2's
    # came after, counting the pushed ones too.
    assert a1.hellos[0].probe_count == len(names_of(0, LOCAL))
    assert b1.hellos[0].probe_count == len(names_of(1, LOCAL))
    assert b2.hellos[0].probe_count == len(shard_names[1])


async def test_without_shards_every_collector_gets_every_result(tmp_path):
    seen: list[pb.ProbeResult] = []
    async with TcpTarget() as target, PushingCollector("a") as a, PushingCollector("b") as b:
        probes = ", ".join(f"{{name: {n}, kind: tcp, target: '{target.address}', "
                           "interval: 100ms, timeout: 80ms}" for n in LOCAL)
        config = parse_config(f"""
agent: {{id: fra-1, region: eu}}
collectors: [{{address: "{a.address}"}}, {{address: "{b.address}"}}]
stream: {{backoff_initial: 50ms, backoff_max: 300ms, linger: 20ms}}
probes: [{probes}]
""", str(tmp_path / "agent.yaml"))
        async with Agent(config, observers=[seen.append]) as agent:
            await wait_until(lambda: a.probes_seen() == set(LOCAL) == b.probes_seen(), 20)
            await agent.shutdown(5.0)
    assert sorted(seqs(a)) == sorted(seqs(b)) == [r.seq for r in seen]
    assert a.hellos[0].probe_count == b.hellos[0].probe_count == len(LOCAL)
