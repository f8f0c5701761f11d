"""/api/v1/uptime and /api/v1/outages/{id} on a real collector fed results by real agents.

The figures are checked against the journal's own outage times: the uptime seconds of each
scope equal the time between the outage's journaled events.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from contextlib import AsyncExitStack

import pytest

from probenet.collector.config import parse_config
from probenet.collector.journal import ALIVE_EVERY_S
from probenet.collector.model import parse_rfc3339
from probenet.collector.server import CollectorService
from probenet.collector.uptime_api import outage_detail, uptime_report, uptime_reports
from support.collector_client import TestAgent, collector_yaml, http_get, http_json
from support.collector_process import CollectorProcess

FLEET = (("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
# Long enough that agents stay fresh while the test waits between phases.
INTERVAL_MS = 20_000
PHASE_S = 1.0
TOLERANCE_S = 0.05


async def connect(stack: AsyncExitStack, address: str, *, epoch: int,
                  next_seq: int = 1) -> list[TestAgent]:
    return [await stack.enter_async_context(TestAgent(
        address, agent, region, epoch=epoch, interval_ms=INTERVAL_MS, next_seq=next_seq))
        for agent, region in FLEET]


async def rounds(fleet: list[TestAgent], down_in: set[str], count: int = 2) -> None:
    """`count` rounds of results for `web` (service shop): failing in `down_in` regions."""
    for _ in range(count):
        for agent in fleet:
            await agent.send([agent.result("web", service="shop",
                                           success=agent.region not in down_in)])


async def outage_cycle(fleet: list[TestAgent]) -> None:
    """Up, a regional outage (eu), global, then recovered: PHASE_S each."""
    await rounds(fleet, set())
    await asyncio.sleep(PHASE_S)
    await rounds(fleet, {"eu"})
    await asyncio.sleep(PHASE_S)
    await rounds(fleet, {"eu", "us", "ap"})
    await asyncio.sleep(PHASE_S)
    await rounds(fleet, set())


def journaled_events(path: str) -> list[tuple[str, float, dict[str, object]]]:
    db = sqlite3.connect(path)
    try:
        return [(event, at, json.loads(record)) for event, at, record in db.execute(
            "SELECT event, at, record FROM outage_events ORDER BY seq")]
    finally:
        db.close()


def outage_times(path: str) -> dict[str, float]:
    """When the journal says the outage opened, turned global and resolved."""
    times: dict[str, float] = {}
    for event, at, record in journaled_events(path):
        if event == "opened":
            assert record["scope"] == "regional", record
        times.setdefault(event, at)
    return times


async def test_uptime_figures_match_the_journaled_outage_and_survive_a_restart(tmp_path):
    journal = str(tmp_path / "journal.db")
    config = parse_config(collector_yaml(journal))
    async with CollectorService(config) as first, AsyncExitStack() as stack:
        fleet = await connect(stack, first.grpc_address, epoch=1)
        await outage_cycle(fleet)
        await asyncio.sleep(PHASE_S)
        report = await http_json(first.http.url + "/api/v1/uptime?probe=web&days=2")
    times = outage_times(journal)
    regional = times["scope_changed"] - times["opened"]
    global_ = times["resolved"] - times["scope_changed"]
    assert regional >= PHASE_S
    assert global_ >= PHASE_S
    seconds = report["seconds"]
    assert seconds["regional_outage"] == pytest.approx(regional, abs=TOLERANCE_S)
    assert seconds["global_outage"] == pytest.approx(global_, abs=TOLERANCE_S)
    assert seconds["maintenance"] == 0
    assert seconds["up"] >= 2 * PHASE_S - TOLERANCE_S
    assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(
        seconds["total"], abs=0.01)
    # Before this collector ever ran, and before the first view: unknown.
    assert seconds["unknown"] > 86_400
    known = seconds["up"] + regional + global_
    assert report["availability_strict"] == pytest.approx(seconds["up"] / known, abs=0.01)
    # One region of three down during the regional outage.
    assert report["availability"] == pytest.approx(
        (seconds["up"] + regional * 2 / 3) / known, abs=0.01)
    assert report["regions"]["eu"]["seconds"]["down"] == pytest.approx(
        regional + global_, abs=TOLERANCE_S)
    assert report["regions"]["us"]["seconds"]["down"] == pytest.approx(global_, abs=TOLERANCE_S)
    assert len(report["daily"]) == 2
    today = report["daily"][-1]["seconds"]
    assert today["global_outage"] == seconds["global_outage"]

    await asyncio.sleep(PHASE_S)  # the collector is down: unknown, not up
    async with CollectorService(config) as second:
        after = await http_json(second.http.url + "/api/v1/uptime?probe=web&days=2")
        service = await http_json(second.http.url + "/api/v1/uptime?service=shop&days=2")
    again = after["seconds"]
    assert again["regional_outage"] == seconds["regional_outage"]
    assert again["global_outage"] == seconds["global_outage"]
    # The up time of the first run is kept; nothing of the gap or the second run is up
    # (no agent reported to it).
    assert again["up"] == pytest.approx(seconds["up"], abs=PHASE_S)
    assert again["unknown"] >= seconds["unknown"] + PHASE_S
    assert (service["service"], service["probe"], service["probes"]) == ("shop", None, ["web"])
    assert service["seconds"]["global_outage"] == seconds["global_outage"]


async def test_outage_detail_has_the_timeline_from_regional_to_global_to_resolved(tmp_path):
    journal = str(tmp_path / "journal.db")
    config = parse_config(collector_yaml(journal))
    async with CollectorService(config) as service, AsyncExitStack() as stack:
        fleet = await connect(stack, service.grpc_address, epoch=1)
        await rounds(fleet, set())
        await rounds(fleet, {"eu"})
        [opened] = await http_json(service.http.url + "/api/v1/outages?active=true")
        live = await http_json(service.http.url + f"/api/v1/outages/{opened['id']}")
        assert live["ended_at"] is None
        assert [e["event"] for e in live["timeline"]] == ["started", "opened"]
        await rounds(fleet, {"eu", "us", "ap"})
        await rounds(fleet, set())
        detail = await http_json(service.http.url + f"/api/v1/outages/{opened['id']}")
        same = await outage_detail(journal, opened["id"], service.classifier.open_outages())
    assert detail == same
    assert detail["id"] == opened["id"]
    assert detail["peak_scope"] == "global"
    assert detail["ended_at"] is not None
    timeline = detail["timeline"]
    main = [(e["event"], e["scope"], e["regions"]) for e in timeline if e["event"] != "updated"]
    assert main[:3] == [("started", "regional", ["eu"]), ("opened", "regional", ["eu"]),
                        ("scope_changed", "global", ["ap", "eu", "us"])]
    # Regions recover one agent at a time: the scope may fall back before the end.
    assert {event for event, _, _ in main[3:-1]} <= {"scope_changed"}
    assert main[-1][0] == "resolved"
    assert timeline[0]["at"] == detail["started_at"]
    assert timeline[1]["at"] == detail["detected_at"]
    assert timeline[-1]["at"] == detail["ended_at"]
    journaled = [(event, at) for event, at, record in journaled_events(journal)
                 if record["id"] == opened["id"]]
    assert [(e["event"], parse_rfc3339(e["at"])) for e in timeline[1:]] == [
        (event, pytest.approx(at, abs=0.001)) for event, at in journaled]
    assert [e["seq"] for e in timeline[1:]] == sorted(e["seq"] for e in timeline[1:])
    assert detail["detection_seconds"] >= 0


@pytest.mark.parametrize(("query", "parameter"), [
    ("", "probe"),
    ("?days=30", "probe"),
    ("?probe=web&service=shop", "service"),
    ("?probe=", "probe"),
    ("?service=%20", "service"),
    ("?probe=web&days=0", "days"),
    ("?probe=web&days=401", "days"),
    ("?probe=web&days=abc", "days"),
    ("?probe=web&days=1.5", "days"),
    ("?probe=web&days=-3", "days"),
])
async def test_bad_uptime_queries_get_400_naming_the_parameter(tmp_path, query, parameter):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config) as service:
        status, _, body = await http_get(service.http.url + "/api/v1/uptime" + query)
    assert status == 400, body
    assert json.loads(body)["parameter"] == parameter


async def test_unknown_probe_service_and_outage_get_404(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config) as service, AsyncExitStack() as stack:
        fleet = await connect(stack, service.grpc_address, epoch=1)
        await rounds(fleet, set(), count=1)
        url = service.http.url
        for path, parameter in (("/api/v1/uptime?probe=nope", "probe"),
                                ("/api/v1/uptime?service=nope", "service"),
                                ("/api/v1/outages/no-such-id", "id")):
            status, _, body = await http_get(url + path)
            assert status == 404, (path, body)
            assert json.loads(body)["parameter"] == parameter
        # Known ones answer; 400 days is the longest report.
        report = await http_json(url + "/api/v1/uptime?probe=web&days=400")
        assert len(report["daily"]) == 400
        assert report["seconds"]["up"] > 0


async def test_the_status_page_calls_read_the_journal_directly(tmp_path):
    journal = str(tmp_path / "journal.db")
    config = parse_config(collector_yaml(journal))
    async with CollectorService(config) as service, AsyncExitStack() as stack:
        fleet = await connect(stack, service.grpc_address, epoch=1)
        await rounds(fleet, {"eu"})
        for agent in fleet:
            await agent.send([agent.result("api", service="shop")])
        await asyncio.sleep(PHASE_S)
        run = service.journal.run_id
        one = await uptime_report(journal, probe="web", days=90, live_run=run)
        both = await uptime_reports(journal, ["web", "api", "ghost"], days=90, live_run=run)
    assert len(one.daily) == 90
    assert one.to_json()["seconds"]["regional_outage"] >= PHASE_S
    assert set(both) == {"web", "api", "ghost"}
    assert both["web"].to_json()["seconds"]["regional_outage"] == pytest.approx(
        one.to_json()["seconds"]["regional_outage"], abs=0.2)
    assert both["api"].to_json()["seconds"]["up"] >= PHASE_S
    assert both["ghost"].to_json()["availability"] is None


async def test_a_killed_collector_keeps_the_history_and_the_gap_is_unknown(tmp_path):
    process = CollectorProcess(tmp_path)
    try:
        await process.start()
        async with AsyncExitStack() as stack:
            fleet = await connect(stack, process.grpc_address, epoch=3)
            await rounds(fleet, {"eu", "us", "ap"})
            # Past one keep-alive of the run, so the journal knows it ran after the outage.
            await asyncio.sleep(ALIVE_EVERY_S + 2)
            before = await http_json(process.url + "/api/v1/uptime?probe=web&days=1")
            assert process.proc is not None
            process.proc.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
        await asyncio.sleep(PHASE_S)
        await process.start()
        after = await http_json(process.url + "/api/v1/uptime?probe=web&days=1")
    finally:
        process.stop()
    outage_before = before["seconds"]["global_outage"]
    assert outage_before >= ALIVE_EVERY_S + 2
    # The outage counts up to the run's last keep-alive before the kill, never into the
    # gap while no collector ran (nor after: no agent reported to the new run).
    outage_after = after["seconds"]["global_outage"]
    assert outage_before - ALIVE_EVERY_S - 2 <= outage_after <= outage_before + 0.01
    assert after["seconds"]["unknown"] >= before["seconds"]["unknown"] + PHASE_S
