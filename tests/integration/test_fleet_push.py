"""Probes defined once in the collector's fleet file, pushed to real agent processes.

Every test runs real `probenet collector` and `probenet agent` processes on loopback; the
probes hit a real HTTP target in the test process, so "the agent runs probe P" means the
target saw P's requests from that agent's source address.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from probenet.agent.config import load_config as load_agent
from probenet.collector.config import load_config as load_collector
from probenet.collector.fleet import load_fleet
from probenet.demo.scenario import demo_plan
from probenet.lab.fleet import write_configs
from probenet.lab.targets import FaultyTargets
from support.collector_client import metric_value
from support.fleet_push import (
    PushAgent,
    PushCollector,
    fleet_yaml,
    http_probe,
    samples,
    wait_for,
)
from support.targets import HttpTarget

if TYPE_CHECKING:
    from collections.abc import Callable


def paths_since(web: HttpTarget, since: float, peer: str | None = None) -> set[str]:
    """Paths requested at or after `since` (monotonic), from `peer` if given."""
    return {r.path for r in web.requests
            if r.at >= since and (peer is None or r.peer == peer)}


def peers_of(web: HttpTarget, path: str, since: float = 0.0) -> set[str]:
    """Source addresses that requested `path` at or after `since`."""
    return {r.peer for r in web.requests if r.path == path and r.at >= since}


async def wait_paths(web: HttpTarget, wanted: set[str], since: float,
                     logs: Callable[[], str], *,
                     peer: str | None = None) -> None:
    """Wait until every path of `wanted` was requested after `since`."""
    async def read() -> set[str]:
        return paths_since(web, since, peer)

    await wait_for(read, lambda seen: wanted <= seen, f"requests for {sorted(wanted)}", logs)


async def settle(web: HttpTarget, path: str, count: int, logs: Callable[[], str]) -> float:
    """Wait until `path` got `count` more requests; return the monotonic time then."""
    start = sum(r.path == path for r in web.requests)

    async def read() -> int:
        return sum(r.path == path for r in web.requests)

    await wait_for(read, lambda n: n >= start + count, f"{count} more runs of {path}", logs)
    return time.monotonic()


async def paths_during(web: HttpTarget, path: str, count: int,
                       logs: Callable[[], str]) -> set[str]:
    """The paths requested while `path` gets `count` more requests (a window of runs)."""
    start = time.monotonic()
    await settle(web, path, count, logs)
    return paths_since(web, start)


def logs_of(*children: PushAgent | PushCollector) -> Callable[[], str]:
    return lambda: "\n".join(child.log_tail() for child in children)


def whole_intervals(before: float, after: float, interval_s: float) -> float:
    """How far `after - before` is from a whole number of intervals (seconds)."""
    steps = (after - before) / interval_s
    return abs(steps - round(steps)) * interval_s


async def test_the_first_push_after_connect_starts_the_fleet_probes(tmp_path):
    async with HttpTarget() as web:
        fleet = fleet_yaml([http_probe("alpha", web.url("/alpha")),
                            http_probe("beta", web.url("/beta"))])
        async with PushCollector(tmp_path / "col", fleet) as collector, \
                PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector]) as agent:
            logs = logs_of(collector, agent)
            await wait_paths(web, {"/alpha", "/beta"}, 0.0, logs)
            entry = await collector.wait_agent("fra-1", lambda e: e.get("config_current") is True,
                                               "runs the fleet file's set",
                                               extra_logs=agent.log_tail)
            assert entry["remote_config"] is True
            assert entry["config_version"]
            assert not entry.get("config_error")
            info = await agent.remote_config()
            assert info == {"version": entry["config_version"], "collector": "col-a"}
            assert set(await agent.next_runs()) == {"alpha", "beta"}
            metrics = await collector.metrics()
            assert metric_value(metrics, "probenet_agent_config_current",
                                agent="fra-1", region="eu") == 1
            assert metric_value(metrics, "probenet_fleet_config_last_reload_success") == 1
            # The results reach the collector under the fleet file's probe names.
            assert metric_value(metrics, "probe_success", probe="alpha", agent="fra-1") == 1


async def test_a_reload_adds_changes_and_removes_probes_and_keeps_unchanged_schedules(tmp_path):
    async with HttpTarget() as web:
        keep = http_probe("keep", web.url("/keep"), interval="1s")
        change = http_probe("change", web.url("/change-v1"))
        drop = http_probe("drop", web.url("/drop"))
        async with PushCollector(tmp_path / "col", fleet_yaml([keep, change, drop])) \
                as collector, PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector]) as agent:
            logs = logs_of(collector, agent)
            await wait_paths(web, {"/keep", "/change-v1", "/drop"}, 0.0, logs)
            first = await collector.wait_agent("fra-1", lambda e: e.get("config_current") is True,
                                               "runs the first set", extra_logs=agent.log_tail)
            before = (await agent.next_runs())["keep"]

            changed = http_probe("change", web.url("/change-v2"))
            added = http_probe("add", web.url("/add"))
            collector.write_fleet(fleet_yaml([keep, changed, added]))
            collector.reload()
            second = await collector.wait_agent(
                "fra-1", lambda e: e.get("config_current") is True
                and e.get("config_version") not in (None, "", first["config_version"]),
                "runs the reloaded set", extra_logs=agent.log_tail)
            applied_at = time.monotonic()
            after = (await agent.next_runs())
            assert set(after) == {"keep", "change", "add"}
            # The unchanged probe kept its schedule: the same instant, or whole intervals on.
            assert whole_intervals(before, after["keep"], 1.0) < 0.01, (
                before, after["keep"], logs())
            await wait_paths(web, {"/change-v2", "/add", "/keep"}, applied_at, logs)
            # ... and the target sees its runs on the same phase as before the reload.
            keep_runs = [r.at for r in web.requests if r.path == "/keep"]
            first_after = min(at for at in keep_runs if at >= applied_at)
            last_before = max(at for at in keep_runs if at < applied_at)
            assert whole_intervals(last_before, first_after, 1.0) < 0.1, keep_runs
            # Removed and replaced probes stop (a run already going may finish first).
            await settle(web, "/add", 1, logs)
            window = await paths_during(web, "/add", 4, logs)
            assert {"/keep", "/change-v2"} <= window
            assert {"/drop", "/change-v1"}.isdisjoint(window)
            info = await agent.remote_config()
            assert info is not None
            assert info["version"] == second["config_version"]


async def test_a_fleet_file_change_is_picked_up_by_the_file_watch(tmp_path):
    async with HttpTarget() as web:
        fleet = fleet_yaml([http_probe("one", web.url("/one"))])
        async with PushCollector(tmp_path / "col", fleet, watch_interval="200ms") as collector, \
                PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector]) as agent:
            logs = logs_of(collector, agent)
            await wait_paths(web, {"/one"}, 0.0, logs)
            collector.write_fleet(fleet_yaml([http_probe("two", web.url("/two"))]),
                                  mtime=time.time() + 5)
            changed_at = time.monotonic()
            await wait_paths(web, {"/two"}, changed_at, logs)  # no signal sent
            await settle(web, "/two", 1, logs)
            assert "/one" not in await paths_during(web, "/two", 4, logs)


async def test_a_broken_fleet_file_is_kept_out_and_the_last_good_set_runs_on(tmp_path):
    async with HttpTarget() as web:
        good = fleet_yaml([http_probe("steady", web.url("/steady"))])
        async with PushCollector(tmp_path / "col", good) as collector, \
                PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector]) as agent:
            logs = logs_of(collector, agent)
            first = await collector.wait_agent("fra-1", lambda e: e.get("config_current") is True,
                                               "runs the first set", extra_logs=agent.log_tail)
            # An unknown key in a probe: the whole file is refused, nothing is pushed.
            collector.write_fleet(good.replace("kind: http", "kind: http\n  colour: red", 1)
                                  .replace("/steady", "/never"))
            collector.reload()

            async def reload_success() -> float | None:
                return metric_value(await collector.metrics(),
                                    "probenet_fleet_config_last_reload_success")

            await wait_for(reload_success, lambda v: v == 0, "a failed reload", logs)
            assert "fleet.yaml:" in collector.log_tail(), "the error names the file"
            await settle(web, "/steady", 3, logs)
            entry = await collector.agent("fra-1")
            assert entry is not None
            assert entry["config_version"] == first["config_version"]
            assert entry["config_current"] is True
            assert "/never" not in paths_since(web, 0.0)
            assert (await agent.remote_config() or {}).get("version") == first["config_version"]
            # Fixed: the next reload goes through.
            collector.write_fleet(fleet_yaml([http_probe("fixed", web.url("/fixed"))]))
            collector.reload()
            await wait_for(reload_success, lambda v: v == 1, "a good reload", logs)
            await wait_paths(web, {"/fixed"}, time.monotonic(), logs)


async def test_an_agent_restarted_without_a_collector_runs_its_last_set(tmp_path):
    async with HttpTarget() as web:
        fleet = fleet_yaml([http_probe("remembered", web.url("/remembered"))])
        collector = PushCollector(tmp_path / "col", fleet)
        agent = PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector])
        try:
            await collector.start()
            await agent.start()
            entry = await collector.wait_agent("fra-1", lambda e: e.get("config_current") is True,
                                               "runs the set", extra_logs=agent.log_tail)
            version = entry["config_version"]
            await agent.stop()
            await collector.stop()
            restarted_at = time.monotonic()
            await agent.start()
            logs = logs_of(agent)
            info = await wait_for(agent.remote_config, lambda i: i is not None,
                                  "the restored set", logs)
            assert info["version"] == version
            first_runs = await agent.runs()
            await wait_for(agent.runs, lambda n: n >= first_runs + 3, "runs going on", logs)
            await wait_paths(web, {"/remembered"}, restarted_at, logs)
            assert set(await agent.next_runs()) == {"remembered"}
        finally:
            await agent.stop()
            await collector.stop()


async def test_an_agent_without_remote_config_ignores_pushes(tmp_path):
    async with HttpTarget() as web:
        fleet = fleet_yaml([http_probe("pushed", web.url("/pushed"))])
        local = http_probe("local", web.url("/local"))
        async with PushCollector(tmp_path / "col", fleet) as collector, \
                PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector], remote_config=False,
                          local_probes=[local]) as agent:
            logs = logs_of(collector, agent)
            await collector.wait_agent("fra-1", lambda e: e.get("connected") is True,
                                       "connected", extra_logs=agent.log_tail)
            await settle(web, "/local", 6, logs)
            entry = await collector.agent("fra-1")
            assert entry is not None
            assert entry["remote_config"] is False
            assert entry["config_current"] is not True
            assert not entry["config_version"]
            assert "/pushed" not in paths_since(web, 0.0)
            assert set(await agent.next_runs()) == {"local"}
            assert await agent.remote_config() is None
            # Not counted as an agent running an outdated set.
            assert metric_value(await collector.metrics(), "probenet_agent_config_current",
                                agent="fra-1", region="eu") is None


async def test_local_probes_are_merged_and_a_name_clash_is_refused(tmp_path):
    async with HttpTarget() as web:
        local = http_probe("local", web.url("/local"))
        fleet = fleet_yaml([http_probe("pushed", web.url("/pushed"))])
        async with PushCollector(tmp_path / "col", fleet) as collector, \
                PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector],
                          local_probes=[local]) as agent:
            logs = logs_of(collector, agent)
            await wait_paths(web, {"/local", "/pushed"}, 0.0, logs)
            assert set(await agent.next_runs()) == {"local", "pushed"}
            # A pushed probe named like a local one is refused; the local probe keeps its
            # target and the rest of the set runs.
            collector.write_fleet(fleet_yaml([http_probe("pushed", web.url("/pushed-2")),
                                              http_probe("local", web.url("/clash"))]))
            collector.reload()
            entry = await collector.wait_agent(
                "fra-1", lambda e: bool(e.get("config_refused")), "refuses the clashing probe",
                extra_logs=agent.log_tail)
            assert [r["probe"] for r in entry["config_refused"]] == ["local"]
            assert "local" in entry["config_refused"][0]["reason"]
            await settle(web, "/pushed-2", 1, logs)
            window = await paths_during(web, "/pushed-2", 4, logs)
            assert {"/local", "/pushed-2"} <= window
            assert "/pushed" not in window
            assert "/clash" not in paths_since(web, 0.0)
            assert set(await agent.next_runs()) == {"local", "pushed"}


async def test_a_probe_selected_by_region_agent_or_label_runs_only_there(tmp_path):
    eu, us = "127.0.0.21", "127.0.0.22"
    async with HttpTarget() as web:
        fleet = fleet_yaml([
            http_probe("everywhere", web.url("/everywhere")),
            http_probe("eu-only", web.url("/eu-only"), regions=["eu"]),
            http_probe("us-agent", web.url("/us-agent"), agents=["iad-1"]),
            http_probe("on-as1", web.url("/on-as1"), labels={"network": "as1"}),
            http_probe("nowhere", web.url("/nowhere"), regions=["eu"], agents=["iad-1"]),
        ])
        async with PushCollector(tmp_path / "col", fleet) as collector, \
                PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector], source_address=eu,
                          labels={"network": "as1"}) as fra, \
                PushAgent(tmp_path / "iad-1", "iad-1", "us", [collector], source_address=us,
                          labels={"network": "as2"}) as iad:
            logs = logs_of(collector, fra, iad)
            await wait_paths(web, {"/everywhere", "/eu-only", "/on-as1"}, 0.0, logs, peer=eu)
            await wait_paths(web, {"/everywhere", "/us-agent"}, 0.0, logs, peer=us)
            await settle(web, "/everywhere", 6, logs)
            assert peers_of(web, "/everywhere") == {eu, us}
            assert peers_of(web, "/eu-only") == {eu}
            assert peers_of(web, "/on-as1") == {eu}
            assert peers_of(web, "/us-agent") == {us}
            assert peers_of(web, "/nowhere") == set()  # every selector must match
            assert set(await fra.next_runs()) == {"everywhere", "eu-only", "on-as1"}
            assert set(await iad.next_runs()) == {"everywhere", "us-agent"}
            for agent_id in ("fra-1", "iad-1"):
                entry = await collector.agent(agent_id)
                assert entry is not None
                assert entry["config_current"] is True
            # Each agent's set has its own version.
            versions = {(await collector.agent(a) or {}).get("config_version")
                        for a in ("fra-1", "iad-1")}
            assert len(versions) == 2


async def test_two_collectors_with_different_fleet_files_the_newest_file_wins(tmp_path):
    now = time.time()
    async with HttpTarget() as web:
        older = PushCollector(tmp_path / "old", fleet_yaml([http_probe("old", web.url("/old"))]),
                              collector_id="col-old", fleet_mtime=now - 3600)
        newer = PushCollector(tmp_path / "new", fleet_yaml([http_probe("new", web.url("/new"))]),
                              collector_id="col-new", fleet_mtime=now - 60)
        async with older, newer, PushAgent(tmp_path / "fra-1", "fra-1", "eu",
                                           [older, newer]) as agent:
            logs = logs_of(older, newer, agent)
            on_new = await newer.wait_agent("fra-1", lambda e: e.get("config_current") is True,
                                            "runs the newer collector's set",
                                            extra_logs=agent.log_tail)
            on_old = await older.wait_agent(
                "fra-1", lambda e: e.get("connected") is True and e.get("config_current") is False,
                "told it runs another set", extra_logs=agent.log_tail)
            assert on_new["config_version"]
            info = await wait_for(agent.remote_config,
                                  lambda i: i is not None and i["collector"] == "col-new",
                                  "the newer set", logs)
            assert info["version"] == on_new["config_version"]
            assert on_old["config_current"] is False
            await settle(web, "/new", 1, logs)
            assert "/old" not in await paths_during(web, "/new", 4, logs)
            assert set(await agent.next_runs()) == {"new"}
            old_metrics = await older.metrics()
            assert metric_value(old_metrics, "probenet_agent_config_current",
                                agent="fra-1", region="eu") == 0
            assert metric_value(await newer.metrics(), "probenet_agent_config_current",
                                agent="fra-1", region="eu") == 1
            # The older collector's file becomes the newest: the agent follows it.
            older.write_fleet(fleet_yaml([http_probe("old", web.url("/old-again"))]),
                              mtime=now + 60)
            older.reload()
            await older.wait_agent("fra-1", lambda e: e.get("config_current") is True,
                                   "runs the now newest set", extra_logs=agent.log_tail)
            await newer.wait_agent("fra-1", lambda e: e.get("config_current") is False,
                                   "told it runs another set", extra_logs=agent.log_tail)
            await wait_paths(web, {"/old-again"}, time.monotonic(), logs)
            info = await wait_for(agent.remote_config,
                                  lambda i: i is not None and i["collector"] == "col-old",
                                  "the now newest set", logs)
            assert len([v for _, v in samples(await agent.metrics(),
                                              "probenet_agent_remote_config_info") if v]) == 1


async def test_the_lab_writes_the_demo_fleet_as_a_fleet_file_and_identity_only_agents(tmp_path):
    plan = demo_plan(0.5, 19464, 17070)
    assert plan.fleet_file
    async with FaultyTargets(lambda _probe, _peer: None, tcp_probes=plan.tcp_probes) as targets:
        paths = write_configs(plan, targets, tmp_path)
    collector = load_collector(paths["collector"])
    assert collector.fleet is not None
    assert Path(collector.fleet.probes_file) == paths["fleet"]
    fleet = load_fleet(paths["fleet"])
    for seat in plan.agents:
        agent = load_agent(paths[seat.id])
        assert agent.remote_config is True
        assert agent.probes == []
        assert agent.agent.source_address == seat.source_address
        assert agent.agent.state_dir == str(tmp_path / "state" / seat.id)
        raw = yaml.safe_load(paths[seat.id].read_text(encoding="utf-8"))
        assert set(raw) == {"agent", "collectors", "remote_config"}
        assert "token_file" in raw["collectors"][0]
        # Every agent gets every probe: the same set, hence the same version.
        assert fleet.probe_set(seat.id, seat.region, {"network": seat.network}).probes == \
            tuple(p.name for p in plan.probes)
