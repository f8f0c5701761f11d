"""A real collector fed `flow` results over real gRPC: the failing step in the API and metrics.

The seed's story: the social network's pages answer while its logins fail everywhere. Test
agents in three regions send a login flow (`social-login`: home, login, feed) and the home
page (`social-web`, http); the service clock moves by hand. /api/v1/targets, /api/v1/outages
and /metrics must say: global outage of social-login, failing at step login; pages up.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from probenet.collector.config import parse_config
from probenet.collector.outbox import Outbox
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    ManualClock,
    TestAgent,
    collector_yaml,
    http_get,
    http_json,
    metric_value,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from probenet.collector.model import JournaledTransition

LOGIN = "social-login"
WEB = "social-web"
STEPS = ("home", "login", "feed")
FLEET = (("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))


def flow_details(failed_at: str | None) -> pb.FlowDetails:
    ran = []
    for i, name in enumerate(STEPS):
        ran.append(pb.FlowStep(name=name, success=name != failed_at,
                               duration_seconds=0.01 * (i + 1),
                               status_code=500 if name == failed_at else 200))
        if name == failed_at:
            break
    return pb.FlowDetails(steps=ran, failed_step_index=len(ran) if failed_at else 0,
                          step_count=len(STEPS))


async def round_of(fleet: list[TestAgent], clock: ManualClock, *,
                   failing_at: dict[str, str] | None = None) -> None:
    """One interval: each agent sends its home page result and its login flow result.

    `failing_at`: agent id -> the step its flow fails at (confirmed); the others pass.
    """
    clock.advance(0.2)
    for i, agent in enumerate(fleet):
        stamp = int(clock.now * 1000) + i
        step = (failing_at or {}).get(agent.agent_id)
        web = agent.result(WEB, service="social", timestamp_ms=stamp,
                           target="https://social.test/")
        flow = agent.result(LOGIN, kind="flow", service="social", timestamp_ms=stamp,
                            target="https://social.test/", success=step is None,
                            phase="validation", reason="status_mismatch", step=step or "",
                            flow=flow_details(step), duration_seconds=0.06)
        await agent.send([web, flow])


async def target(service, probe: str) -> dict:
    views = await http_json(service.http.url + "/api/v1/targets")
    return next(v for v in views if v["probe"] == probe)


async def scrape(service) -> str:
    status, _, body = await http_get(service.http.url + "/metrics")
    assert status == 200
    return body


def config_of(tmp_path):
    return parse_config(collector_yaml(str(tmp_path / "journal.db")))


async def test_logins_failing_everywhere_while_pages_answer(tmp_path):
    clock = ManualClock()
    everywhere = {agent_id: "login" for agent_id, _ in FLEET}
    async with CollectorService(config_of(tmp_path), clock=clock) as service, \
            AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(service.grpc_address, agent_id, region)) for agent_id, region in FLEET]
        await round_of(fleet, clock)
        for _ in range(2):
            await round_of(fleet, clock, failing_at=everywhere)

        login = await target(service, LOGIN)
        assert (login["kind"], login["state"], login["step"]) == ("flow", "global_outage",
                                                                  "login")
        assert login["regions"] == {"ap": "down", "eu": "down", "us": "down"}
        web = await target(service, WEB)
        assert (web["state"], web["step"]) == ("up", None)  # the pages still answer

        [active] = await http_json(service.http.url + "/api/v1/outages?active=true")
        assert (active["kind"], active["probe"], active["service"], active["scope"]) == (
            "probe", LOGIN, "social", "global")
        assert (active["phase"], active["reason"], active["step"]) == (
            "validation", "status_mismatch", "login")
        every = await http_json(service.http.url + "/api/v1/outages")  # through the journal
        assert [(o["id"], o["step"]) for o in every] == [(active["id"], "login")]
        assert [r.step for r in service.journal.open_outages()] == ["login"]

        text = await scrape(service)
        assert metric_value(text, "probenet_outage_step", probe=LOGIN, service="social",
                            step="login") == 1
        assert metric_value(text, "probenet_outage_active", probe=LOGIN, service="social",
                            scope="global") == 1
        assert metric_value(text, "probenet_outage_step", probe=WEB) is None
        for agent_id, region in FLEET:
            labels = {"probe": LOGIN, "region": region, "agent": agent_id}
            assert metric_value(text, "probenet_step_success", step="home", **labels) == 1
            assert metric_value(text, "probenet_step_success", step="login", **labels) == 0
            assert metric_value(text, "probenet_step_success", step="feed", **labels) is None
            assert metric_value(text, "probenet_step_duration_seconds", step="login",
                                **labels) == 0.02
        assert metric_value(text, "probe_success", probe=LOGIN, kind="flow",
                            agent="fra-1") == 0

        # Logins work again: the record resolves, the step leaves the view and the metrics.
        for _ in range(3):
            await round_of(fleet, clock)
        login = await target(service, LOGIN)
        assert (login["state"], login["step"]) == ("up", None)
        assert await http_json(service.http.url + "/api/v1/outages?active=true") == []
        [resolved] = await http_json(service.http.url + "/api/v1/outages")
        assert (resolved["id"], resolved["step"]) == (active["id"], "login")
        assert resolved["ended_at"] is not None
        text = await scrape(service)
        assert metric_value(text, "probenet_outage_step", probe=LOGIN) is None
        assert metric_value(text, "probenet_step_success", probe=LOGIN, step="feed",
                            agent="sin-1", region="ap") == 1


async def test_failing_from_one_region_is_regional_at_that_step(tmp_path):
    clock = ManualClock()
    async with CollectorService(config_of(tmp_path), clock=clock) as service, \
            AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(service.grpc_address, agent_id, region)) for agent_id, region in FLEET]
        await round_of(fleet, clock)
        for _ in range(3):
            await round_of(fleet, clock, failing_at={"fra-1": "feed"})
        login = await target(service, LOGIN)
        assert (login["state"], login["step"]) == ("regional_outage", "feed")
        [active] = await http_json(service.http.url + "/api/v1/outages?active=true")
        assert (active["scope"], active["regions"], active["step"]) == ("regional", ["eu"],
                                                                       "feed")
        text = await scrape(service)
        assert metric_value(text, "probenet_outage_step", probe=LOGIN, step="feed") == 1
        assert metric_value(text, "probenet_outage_active", probe=LOGIN,
                            scope="regional") == 1


async def test_the_step_survives_a_collector_restart(tmp_path):
    clock = ManualClock()
    everywhere = {agent_id: "login" for agent_id, _ in FLEET}
    async with CollectorService(config_of(tmp_path), clock=clock) as service, \
            AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(service.grpc_address, agent_id, region)) for agent_id, region in FLEET]
        await round_of(fleet, clock)
        for _ in range(2):
            await round_of(fleet, clock, failing_at=everywhere)
        [before] = service.classifier.open_outages()
    async with CollectorService(config_of(tmp_path), clock=clock) as service:
        [active] = await http_json(service.http.url + "/api/v1/outages?active=true")
        assert (active["id"], active["step"]) == (before.id, "login")
        text = await scrape(service)
        # Restored before any result about the probe: still joined to its active series.
        assert metric_value(text, "probenet_outage_step", probe=LOGIN, service="social",
                            step="login") == 1
        assert metric_value(text, "probenet_outage_active", probe=LOGIN, service="social",
                            scope="global") == 1


class OutboxSink:
    """The MQTT publisher's outbox (what it renders and publishes), without a broker."""

    def __init__(self) -> None:
        self.outbox = Outbox(collector_id="test-collector", topic_prefix="pn", capacity=1000)

    def submit(self, items: Sequence[JournaledTransition]) -> None:
        self.outbox.add(items)

    def payloads(self) -> list[tuple[str, dict]]:
        taken = []
        while (message := self.outbox.take()) is not None:
            self.outbox.acknowledged(message)
            taken.append((message.topic, json.loads(message.payload)))
        return taken


async def test_mqtt_events_and_retained_state_carry_the_step(tmp_path):
    clock = ManualClock()
    sink = OutboxSink()
    everywhere = {agent_id: "login" for agent_id, _ in FLEET}
    async with CollectorService(config_of(tmp_path), clock=clock, sinks=[sink]) as service, \
            AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(service.grpc_address, agent_id, region)) for agent_id, region in FLEET]
        await round_of(fleet, clock)
        for _ in range(2):
            await round_of(fleet, clock, failing_at=everywhere)
        opened = sink.payloads()
        for _ in range(3):
            await round_of(fleet, clock)
        resolved = sink.payloads()

    events = [p for topic, p in opened + resolved if topic == "pn/events"]
    # Opened, scope changes while the regions recover one by one, resolved: all at login.
    assert (events[0]["event"], events[-1]["event"]) == ("opened", "resolved")
    assert {(p["probe"], p["step"]) for p in events} == {(LOGIN, "login")}
    # The retained state of each probe: its last message in each phase is its state then.
    states = {topic: p for topic, p in opened if topic.startswith("pn/state/")}
    assert (states[f"pn/state/{LOGIN}"]["state"], states[f"pn/state/{LOGIN}"]["step"]) == (
        "global_outage", "login")
    assert states[f"pn/state/{WEB}"]["step"] is None
    states = {topic: p for topic, p in resolved if topic.startswith("pn/state/")}
    assert (states[f"pn/state/{LOGIN}"]["state"], states[f"pn/state/{LOGIN}"]["step"]) == (
        "up", None)
