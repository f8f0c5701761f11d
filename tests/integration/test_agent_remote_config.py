"""Remote configuration on the agent: probe sets pushed over real gRPC on loopback.

The collector is `support.pushing_collector.PushingCollector`, a real Ingest server that
sends the ProbeConfig messages each test controls; probes run against real TCP targets.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from probenet.agent.config import parse_config
from probenet.agent.main import Agent
from probenet.agent.remote import CLASH_REASON, remote_set_path
from probenet.agent.stream import is_authenticated
from support.pushing_collector import PushingCollector, probe_config
from support.targets import TcpTarget, closed_port, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from probenet.v1 import probenet_pb2 as pb

FAST = {"interval": "100ms", "timeout": "80ms"}
# Long enough that the probe never fires during a test: its next run time stays put.
NEVER = {"interval": "7d", "timeout": "1s"}


def agent_config(tmp_path: Path, collectors: list[str], *, remote: bool = True,
                 probes: str = "", collector_extra: str = "", agent_id: str = "fra-1"):
    entries = ", ".join(f'{{address: "{c}"{collector_extra}}}' for c in collectors)
    return parse_config(f"""
agent: {{id: {agent_id}, region: eu}}
collectors: [{entries}]
stream: {{backoff_initial: 50ms, backoff_max: 300ms, linger: 20ms}}
remote_config: {"true" if remote else "false"}
probes: [{probes}]
""", str(tmp_path / "agent.yaml"))


def tcp(name: str, target: str, **timing: str) -> dict[str, str]:
    return {"name": name, "kind": "tcp", "target": target, **(timing or FAST)}


def pushed(*probes: dict[str, object], issued_at_ms: int | None = None) -> pb.ProbeConfig:
    return probe_config({"defaults": {}, "probes": list(probes)}, issued_at_ms=issued_at_ms)


def no_icmp(family: str) -> str | None:
    return f"cannot open an {family} icmp socket: operation not permitted"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def next_run(registry: CollectorRegistry, probe: str) -> float | None:
    return sample(registry, "probenet_agent_probe_next_run_timestamp_seconds", probe=probe)


async def test_a_pushed_set_runs_and_its_version_is_acknowledged(tmp_path):
    registry = CollectorRegistry()
    async with TcpTarget() as target, PushingCollector() as collector:
        collector.offer(config := pushed(tcp("fleet-a", target.address)))
        agent_conf = agent_config(tmp_path, [collector.address],
                                  probes=f"{{name: local-1, kind: tcp, target: '{target.address}'"
                                         ", interval: 100ms, timeout: 80ms}")
        async with Agent(agent_conf, registry=registry, state_dir=tmp_path / "state"):
            await wait_until(lambda: {"fleet-a", "local-1"} <= collector.probes_seen(), 10)
            await wait_until(lambda: bool(collector.statuses_for(config.version)), 10)
            assert sample(registry, "probenet_agent_remote_config_info",
                          version=config.version, collector="push-test") == 1.0
            assert sample(registry, "probenet_agent_remote_probes") == 1.0
            assert sample(registry, "probenet_agent_remote_config_refused_probes") == 0.0
            assert sample(registry, "probenet_agent_probes") == 2.0
    status = collector.statuses_for(config.version)[0]
    assert (status.version, status.collector_id, status.error, list(status.refused)) == (
        config.version, "push-test", "", [])
    hello = collector.hellos[0]
    assert (hello.remote_config, hello.config_version, hello.probe_count) == (True, "", 1)
    kept = json.loads(remote_set_path(tmp_path / "state", "fra-1").read_text())
    assert (kept["version"], kept["collector_id"], kept["document"]) == (
        config.version, "push-test", config.document)


async def test_a_second_push_adds_changes_removes_and_keeps_unchanged_schedules(tmp_path):
    registry = CollectorRegistry()
    async with TcpTarget() as first, TcpTarget() as second, PushingCollector() as collector:
        keep = tcp("keep", first.address, **NEVER)
        collector.offer(v1 := pushed(keep, tcp("change", first.address),
                                     tcp("gone", first.address)))
        async with Agent(agent_config(tmp_path, [collector.address]), registry=registry,
                         state_dir=tmp_path / "state") as agent:
            await wait_until(lambda: {"change", "gone"} <= collector.probes_seen(), 10)
            kept_next_run = next_run(registry, "keep")
            kept_entry = agent.scheduler.probes["keep"]
            assert kept_next_run is not None
            assert kept_next_run > 1_000_000_000  # a unix time, not 0 or a loop time
            v2 = pushed(keep, tcp("change", second.address), tcp("new", first.address),
                        issued_at_ms=v1.issued_at_ms + 1)
            collector.push(v2)
            await wait_until(lambda: bool(collector.statuses_for(v2.version)), 10)
            collector.results.clear()
            await wait_until(lambda: {"change", "new"} <= collector.probes_seen(), 10)
            changed = {r.target for r in collector.results if r.probe == "change"}
            assert next_run(registry, "keep") == kept_next_run
            assert agent.scheduler.probes["keep"] is kept_entry
            assert next_run(registry, "gone") is None
            assert "gone" not in agent.scheduler.probes
            assert sample(registry, "probenet_agent_remote_config_info",
                          version=v1.version, collector="push-test") is None
            assert sample(registry, "probenet_agent_remote_config_info",
                          version=v2.version, collector="push-test") == 1.0
    assert changed == {second.address}
    status = collector.statuses_for(v2.version)[-1]
    assert (status.version, status.error) == (v2.version, "")


async def test_probes_the_agent_cannot_run_are_refused_and_the_rest_runs(tmp_path):
    registry = CollectorRegistry()
    async with TcpTarget() as target, PushingCollector() as collector:
        collector.offer(config := pushed(
            {"name": "ping", "kind": "icmp", "target": "127.0.0.1", "interval": "1s",
             "timeout": "800ms"},
            tcp("web", target.address)))
        async with Agent(agent_config(tmp_path, [collector.address]), registry=registry,
                         icmp_problem=no_icmp) as agent:
            await wait_until(lambda: "web" in collector.probes_seen(), 10)
            await wait_until(lambda: bool(collector.statuses_for(config.version)), 10)
            assert set(agent.scheduler.probes) == {"web"}
            assert sample(registry, "probenet_agent_remote_config_refused_probes") == 1.0
            assert sample(registry, "probenet_agent_remote_probes") == 1.0
    status = collector.statuses_for(config.version)[0]
    assert (status.version, status.error) == (config.version, "")
    assert [(r.probe, r.reason) for r in status.refused] == [
        ("ping", ("icmp probes cannot run on this agent: cannot open an ip4 icmp socket: "
                 "operation not permitted"))]
    assert "ping" not in collector.probes_seen()


async def test_a_name_clash_with_a_local_probe_is_reported(tmp_path):
    async with TcpTarget() as local, TcpTarget() as fleet, PushingCollector() as collector:
        collector.offer(config := pushed(tcp("web", fleet.address),
                                         tcp("other", fleet.address)))
        conf = agent_config(tmp_path, [collector.address],
                            probes=f"{{name: web, kind: tcp, target: '{local.address}', "
                                   "interval: 100ms, timeout: 80ms}")
        async with Agent(conf) as agent:
            await wait_until(lambda: {"other", "web"} <= collector.probes_seen(), 10)
            await wait_until(lambda: bool(collector.statuses_for(config.version)), 10)
            assert agent.scheduler.probes["web"].spec.target == local.address
    status = collector.statuses_for(config.version)[0]
    assert [(r.probe, r.reason) for r in status.refused] == [("web", CLASH_REASON)]
    assert {r.target for r in collector.results if r.probe == "web"} == {local.address}


async def test_an_agent_without_remote_config_ignores_pushes(tmp_path, caplog):
    async with TcpTarget() as target, PushingCollector() as collector:
        collector.offer(first := pushed(tcp("fleet-a", target.address)))
        conf = agent_config(tmp_path, [collector.address], remote=False,
                            probes=f"{{name: mine, kind: tcp, target: '{target.address}', "
                                   "interval: 100ms, timeout: 80ms}")
        with caplog.at_level(logging.INFO, logger="probenet.agent.stream"):
            async with Agent(conf) as agent:
                await wait_until(lambda: bool(collector.statuses_for(first.version)), 10)
                collector.push(second := pushed(tcp("fleet-b", target.address)))
                await wait_until(lambda: bool(collector.statuses_for(second.version)), 10)
                await wait_until(lambda: "mine" in collector.probes_seen(), 10)
                assert set(agent.scheduler.probes) == {"mine"}
    for version in (first.version, second.version):
        status = collector.statuses_for(version)[0]
        assert (status.version, status.error) == ("", "remote_config is off")
    assert collector.hellos[0].remote_config is False
    assert not {"fleet-a", "fleet-b"} & collector.probes_seen()
    told = [r for r in caplog.records if "remote_config is off" in r.getMessage()]
    assert len(told) == 1
    assert told[0].levelno == logging.INFO


def test_only_tls_or_loopback_collectors_are_authenticated(tmp_path):
    tls = ", tls: {ca_file: ca.pem}"  # only read when connecting
    plain = agent_config(tmp_path, ["192.0.2.10:7070", "127.0.0.5:7070", "[::1]:7070",
                                    "localhost:7070", "collector.example:7070"])
    assert [is_authenticated(c) for c in plain.collectors] == [False, True, True, True, False]
    secured = agent_config(tmp_path, ["192.0.2.10:7070"], collector_extra=tls)
    assert is_authenticated(secured.collectors[0])


async def test_an_unauthenticated_collector_cannot_push(tmp_path, caplog):
    # Never entered: no connection is made; the stream is handed the ProbeConfig directly.
    agent = Agent(agent_config(tmp_path, ["192.0.2.10:7070"]))
    config = pushed(tcp("fleet-a", "127.0.0.1:1"))
    with caplog.at_level(logging.WARNING, logger="probenet.agent.stream"):
        agent.streams[0].handle_probe_config(config)
    (status,) = agent.streams[0].pending_statuses
    assert status.received_version == config.version
    assert status.version == ""
    assert "is not authenticated" in status.error
    assert "192.0.2.10:7070" in status.error
    assert agent.scheduler.probes == {}
    assert any(r.levelno == logging.WARNING and "not authenticated" in r.getMessage()
               for r in caplog.records)


async def test_restart_without_a_collector_runs_the_last_set_from_disk(tmp_path, caplog):
    state = tmp_path / "state"
    async with TcpTarget() as target:
        async with PushingCollector() as collector:
            collector.offer(config := pushed(tcp("fleet-a", target.address)))
            async with Agent(agent_config(tmp_path, [collector.address]), state_dir=state):
                await wait_until(lambda: bool(collector.statuses_for(config.version)), 10)
        down = f"127.0.0.1:{closed_port()}"
        registry = CollectorRegistry()
        seen: list[pb.ProbeResult] = []
        with caplog.at_level(logging.INFO, logger="probenet.agent.main"):
            agent = Agent(agent_config(tmp_path, [down]), registry=registry, state_dir=state,
                          observers=[seen.append])
        assert set(agent.scheduler.probes) == {"fleet-a"}  # before any collector answers
        assert agent.hello().config_version == config.version
        async with agent:
            await wait_until(lambda: any(r.probe == "fleet-a" for r in seen), 10)
            assert agent.streams[0].state != "connected"
            assert sample(registry, "probenet_agent_remote_config_info",
                          version=config.version, collector="push-test") == 1.0
    restored = [r for r in caplog.records if r.getMessage() == "remote probe set restored"]
    assert [getattr(r, "config_version", None) for r in restored] == [config.version]


async def test_after_a_reconnect_the_collector_hears_what_runs(tmp_path):
    state = tmp_path / "state"
    async with TcpTarget() as target:
        async with PushingCollector() as collector:
            collector.offer(config := pushed(tcp("fleet-a", target.address)))
            async with Agent(agent_config(tmp_path, [collector.address]), state_dir=state):
                await wait_until(lambda: bool(collector.statuses_for(config.version)), 10)
        async with PushingCollector("other") as silent, \
                Agent(agent_config(tmp_path, [silent.address]), state_dir=state):
            await wait_until(lambda: bool(silent.statuses), 10)
            await wait_until(lambda: "fleet-a" in silent.probes_seen(), 10)
    assert silent.hellos[0].config_version == config.version
    status = silent.statuses[0]
    assert (status.version, status.collector_id, status.received_version) == (
        config.version, "push-test", "")


async def test_a_damaged_kept_file_does_not_stop_the_agent(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    remote_set_path(state, "fra-1").write_text('{"format": 1, "version": "x"')
    async with TcpTarget() as target, PushingCollector() as collector:
        collector.offer(config := pushed(tcp("fleet-a", target.address)))
        async with Agent(agent_config(tmp_path, [collector.address]), state_dir=state):
            await wait_until(lambda: bool(collector.statuses_for(config.version)), 10)
    assert collector.hellos[0].config_version == ""
    kept = json.loads(remote_set_path(state, "fra-1").read_text())
    assert kept["version"] == config.version


async def test_ha_collectors_the_newer_fleet_file_wins_in_any_order(tmp_path):
    async with TcpTarget() as target, PushingCollector("col-a") as a, \
            PushingCollector("col-b") as b:
        newer = pushed(tcp("from-newer", target.address), issued_at_ms=2_000)
        older = pushed(tcp("from-older", target.address), issued_at_ms=1_000)
        a.offer(newer)
        b.offer(older)
        async with Agent(agent_config(tmp_path, [a.address, b.address])) as agent:
            await wait_until(lambda: bool(a.statuses_for(newer.version)), 10)
            await wait_until(lambda: bool(b.statuses_for(older.version)), 10)
            await wait_until(lambda: "from-newer" in a.probes_seen(), 10)
            assert set(agent.scheduler.probes) == {"from-newer"}
            # The older set arriving again changes nothing.
            b.push(older)
            await wait_until(lambda: len(b.statuses_for(older.version)) >= 2, 10)
            assert set(agent.scheduler.probes) == {"from-newer"}
    for status in (a.statuses_for(newer.version)[-1], b.statuses_for(older.version)[-1]):
        assert (status.version, status.collector_id, status.error) == (
            newer.version, "col-a", "")


async def test_a_bad_push_keeps_the_running_set_and_unknown_messages_are_ignored(tmp_path):
    async with TcpTarget() as target, PushingCollector() as collector:
        collector.offer(good := pushed(tcp("fleet-a", target.address)))
        async with Agent(agent_config(tmp_path, [collector.address])) as agent:
            await wait_until(lambda: bool(collector.statuses_for(good.version)), 10)
            # A CollectorMessage with a body this agent does not know (field 99).
            collector.push(bytes([0x98, 0x06, 0x01]))
            bad = probe_config('{"probes": [}', issued_at_ms=good.issued_at_ms + 5)
            collector.push(bad)
            await wait_until(lambda: bool(collector.statuses_for(bad.version)), 10)
            assert set(agent.scheduler.probes) == {"fleet-a"}
            assert agent.streams[0].reconnects == 1
            assert agent.streams[0].state == "connected"
    status = collector.statuses_for(bad.version)[0]
    assert status.version == good.version
    assert status.error.startswith("fleet.yaml: the document is not JSON")


async def test_a_sighup_reload_keeps_the_pushed_set_merged(tmp_path):
    async with TcpTarget() as target, PushingCollector() as collector:
        collector.offer(config := pushed(tcp("fleet-a", target.address, **NEVER)))
        async with Agent(agent_config(tmp_path, [collector.address]),
                         registry=(registry := CollectorRegistry())) as agent:
            await wait_until(lambda: bool(collector.statuses_for(config.version)), 10)
            before = next_run(registry, "fleet-a")
            counts = agent.reload(agent_config(
                tmp_path, [collector.address],
                probes=f"{{name: added, kind: tcp, target: '{target.address}', "
                       "interval: 100ms, timeout: 80ms}"))
            assert counts == {"kept": 1, "changed": 0, "added": 1, "removed": 0}
            assert set(agent.scheduler.probes) == {"added", "fleet-a"}
            assert next_run(registry, "fleet-a") == before
            assert agent.hello().probe_count == 2
            await wait_until(lambda: "added" in collector.probes_seen(), 10)
