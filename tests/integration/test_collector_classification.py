"""The collector end to end: real gRPC streams in, the real classifier, HTTP API and /metrics out.

Time is the service's injected clock, moved by hand; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from support.collector_client import (
    ManualClock,
    TestAgent,
    collector_yaml,
    http_get,
    http_json,
    metric_value,
)

PROBES = ("web", "api", "photos", "chat")


@pytest.fixture
async def collector(tmp_path):
    clock = ManualClock()
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config, clock=clock) as service:
        yield service, clock


async def agents(stack: AsyncExitStack, address: str, *specs: tuple[str, str],
                 **kwargs) -> list[TestAgent]:
    return [await stack.enter_async_context(TestAgent(address, agent_id, region, **kwargs))
            for agent_id, region in specs]


async def round_of(fleet: list[TestAgent], clock: ManualClock, probes=PROBES, *,
                   failing=(), failing_probes=()):
    """One probe interval: every agent sends one result per probe, one after the other.

    Agents in `failing` fail `failing_probes`. The service clock and the results' agent
    timestamps move together, 200 ms per round and 1 ms per agent within a round.
    """
    clock.advance(0.2)
    for i, agent in enumerate(fleet):
        stamp = int(clock.now * 1000) + i
        await agent.send([agent.result(p, timestamp_ms=stamp,
                                       success=not (agent.agent_id in failing
                                                    and p in failing_probes))
                          for p in probes])


async def scrape(service) -> str:
    status, _, body = await http_get(service.http.url + "/metrics")
    assert status == 200
    return body


async def target(service, probe: str) -> dict:
    views = await http_json(service.http.url + "/api/v1/targets")
    return next(v for v in views if v["probe"] == probe)


async def test_global_outage_from_every_region(collector):
    service, clock = collector
    async with AsyncExitStack() as stack:
        fleet = await agents(stack, service.grpc_address,
                             ("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
        await round_of(fleet, clock)
        all_agents = {"fra-1", "iad-1", "sin-1"}
        await round_of(fleet, clock, failing=all_agents, failing_probes={"web"})
        await round_of(fleet, clock, failing=all_agents, failing_probes={"web"})

        web = await target(service, "web")
        assert web["state"] == "global_outage"
        assert web["regions"] == {"ap": "down", "eu": "down", "us": "down"}
        assert (await target(service, "api"))["state"] == "up"
        active = await http_json(service.http.url + "/api/v1/outages?active=true")
        assert [(o["kind"], o["probe"], o["scope"], o["regions"]) for o in active] == [
            ("probe", "web", "global", ["ap", "eu", "us"])]
        assert active[0]["ended_at"] is None
        assert active[0]["phase"] == "connect"
        assert active[0]["reason"] == "connect_refused"

        text = await scrape(service)
        assert metric_value(text, "probenet_outage_active", probe="web", scope="global") == 1
        assert metric_value(text, "probenet_outage_active", probe="api", scope="global") == 0
        assert metric_value(text, "probenet_target_state", probe="web",
                            state="global_outage") == 1
        assert metric_value(text, "probenet_target_state", probe="web", state="up") == 0
        assert metric_value(text, "probenet_region_up", probe="web", region="eu") == 0
        assert metric_value(text, "probenet_region_up", probe="api", region="eu") == 1
        assert metric_value(text, "probe_success", probe="web", agent="fra-1",
                            region="eu") == 0
        # Results arrive one agent at a time, yet the record opens global: the first regional
        # verdict waits for the regions whose next result is due (the scope hold).
        assert metric_value(text, "probenet_outages_opened_total", kind="probe",
                            scope="global") == 1
        assert metric_value(text, "probenet_outages_opened_total", kind="probe",
                            scope="regional") == 0
        assert metric_value(text, "probenet_outage_detection_seconds_count") == 1
        assert metric_value(text, "probenet_probe_failures_total", probe="web", region="eu",
                            phase="connect", reason="connect_refused") == 2
        # The journal holds what the API shows.
        assert [r.id for r in service.journal.open_outages()] == [active[0]["id"]]


async def test_regional_outage_names_the_region(collector):
    service, clock = collector
    async with AsyncExitStack() as stack:
        fleet = await agents(stack, service.grpc_address, ("fra-1", "eu"), ("fra-2", "eu"),
                             ("iad-1", "us"), ("sin-1", "ap"))
        await round_of(fleet, clock)
        for _ in range(2):
            await round_of(fleet, clock, failing={"fra-1", "fra-2"}, failing_probes={"web"})

        web = await target(service, "web")
        assert web["state"] == "regional_outage"
        assert web["regions"] == {"ap": "up", "eu": "down", "us": "up"}
        active = await http_json(service.http.url + "/api/v1/outages?active=true")
        assert [(o["probe"], o["scope"], o["regions"]) for o in active] == [
            ("web", "regional", ["eu"])]
        text = await scrape(service)
        assert metric_value(text, "probenet_outage_active", probe="web", scope="regional") == 1
        assert metric_value(text, "probenet_region_up", probe="web", region="us") == 1


async def test_impaired_agent_is_left_out_and_opens_nothing(collector):
    service, clock = collector
    async with AsyncExitStack() as stack:
        fleet = await agents(stack, service.grpc_address, ("fra-1", "eu"), ("fra-2", "eu"),
                             ("iad-1", "us"), ("sin-1", "ap"))
        await round_of(fleet, clock)
        for _ in range(3):
            await round_of(fleet, clock, failing={"fra-1"}, failing_probes=set(PROBES))
            service.tick()  # the once-a-second re-check of suspects

        by_id = {a["id"]: a for a in await http_json(service.http.url + "/api/v1/agents")}
        assert by_id["fra-1"]["impaired"] is True
        assert by_id["fra-2"]["impaired"] is False
        assert await http_json(service.http.url + "/api/v1/outages?active=true") == []
        assert (await target(service, "web"))["regions"]["eu"] == "up"
        text = await scrape(service)
        assert metric_value(text, "probenet_agent_impaired", agent="fra-1", region="eu") == 1
        assert metric_value(text, "probenet_agent_impaired", agent="fra-2", region="eu") == 0


async def test_lone_impaired_agent_leaves_its_region_unknown(collector):
    service, clock = collector
    async with AsyncExitStack() as stack:
        fleet = await agents(stack, service.grpc_address,
                             ("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
        await round_of(fleet, clock)
        for _ in range(3):
            await round_of(fleet, clock, failing={"sin-1"}, failing_probes=set(PROBES))
            service.tick()  # the once-a-second re-check of suspects

        by_id = {a["id"]: a for a in await http_json(service.http.url + "/api/v1/agents")}
        assert by_id["sin-1"]["impaired"] is True
        for probe in PROBES:
            view = await target(service, probe)
            assert view["regions"] == {"ap": "unknown", "eu": "up", "us": "up"}, probe
            assert view["state"] == "up"
        assert await http_json(service.http.url + "/api/v1/outages") == []


async def test_stale_agent_is_reported_and_left_out(collector):
    service, clock = collector
    async with AsyncExitStack() as stack:
        fleet = await agents(stack, service.grpc_address,
                             ("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
        await round_of(fleet, clock)
        text = await scrape(service)
        assert metric_value(text, "probenet_agent_up", agent="sin-1", region="ap") == 1

        # 3 intervals of 200 ms pass with nothing from sin-1; the others keep reporting.
        clock.advance(0.5)
        await round_of(fleet[:2], clock)
        clock.advance(0.5)
        await round_of(fleet[:2], clock)
        service.tick()

        by_id = {a["id"]: a for a in await http_json(service.http.url + "/api/v1/agents")}
        assert by_id["sin-1"]["stale"] is True
        assert by_id["sin-1"]["connected"] is True  # connected, but silent
        assert by_id["fra-1"]["stale"] is False
        assert (await target(service, "web"))["regions"]["ap"] == "unknown"
        text = await scrape(service)
        assert metric_value(text, "probenet_agent_up", agent="sin-1", region="ap") == 0
        assert metric_value(text, "probenet_agent_up", agent="fra-1", region="eu") == 1


async def test_disconnected_agent_shows_connected_false(collector):
    service, _ = collector
    async with TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([agent.result("web")])
        assert (await http_json(service.http.url + "/api/v1/agents"))[0]["connected"] is True
    # The stream ended: the collector notices when grpc reports the cancelled call.
    for _ in range(400):  # bounded: 20 s at most, normally one pass
        views = await http_json(service.http.url + "/api/v1/agents")
        if views[0]["connected"] is False:
            break
        await asyncio.sleep(0.05)
    assert views[0]["connected"] is False
    assert service.ingest_metrics.streams._value.get() == 0


async def test_recovery_needs_two_up_verdicts(collector):
    service, clock = collector
    async with AsyncExitStack() as stack:
        fleet = await agents(stack, service.grpc_address,
                             ("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
        every = {"fra-1", "iad-1", "sin-1"}
        await round_of(fleet, clock)
        for _ in range(2):
            await round_of(fleet, clock, failing=every, failing_probes={"web"})
        [outage] = await http_json(service.http.url + "/api/v1/outages?active=true")

        await round_of(fleet, clock)  # one up verdict per region: still down
        assert (await target(service, "web"))["state"] == "global_outage"
        assert len(await http_json(service.http.url + "/api/v1/outages?active=true")) == 1

        await round_of(fleet, clock)  # the second: recovered
        assert (await target(service, "web"))["state"] == "up"
        assert await http_json(service.http.url + "/api/v1/outages?active=true") == []
        [closed] = await http_json(service.http.url + "/api/v1/outages?active=false")
        assert closed["id"] == outage["id"]
        assert closed["ended_at"] is not None
        assert closed["ended_at"] >= closed["detected_at"] >= closed["started_at"]
        events = [event for _, event, _ in service.journal.events(outage["id"])]
        assert events[0] == "opened"
        assert events[-1] == "resolved"


async def test_scope_rises_inside_one_record(collector):
    service, clock = collector
    async with AsyncExitStack() as stack:
        fleet = await agents(stack, service.grpc_address,
                             ("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
        await round_of(fleet, clock)
        for _ in range(2):
            await round_of(fleet, clock, failing={"fra-1"}, failing_probes={"web"})
        [regional] = await http_json(service.http.url + "/api/v1/outages?active=true")
        assert (regional["scope"], regional["regions"]) == ("regional", ["eu"])

        for _ in range(2):
            await round_of(fleet, clock, failing={"fra-1", "iad-1", "sin-1"},
                           failing_probes={"web"})
        [global_] = await http_json(service.http.url + "/api/v1/outages?active=true")
        assert global_["id"] == regional["id"]
        assert (global_["scope"], global_["peak_scope"]) == ("global", "global")
        assert global_["regions"] == ["ap", "eu", "us"]
        assert global_["regions_ever"] == ["ap", "eu", "us"]
        events = [event for _, event, _ in service.journal.events(regional["id"])]
        assert events[0] == "opened"
        assert "scope_changed" in events
        seqs = [seq for seq, _, _ in service.journal.events()]
        assert seqs == sorted(seqs)
        assert len(service.journal.outages()) == 1
