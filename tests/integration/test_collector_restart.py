"""Open outages survive a restart, a `kill -9`, and SIGTERM drains cleanly."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from probenet.collector.config import parse_config
from probenet.collector.errors import LifecycleError
from probenet.collector.server import CollectorService
from support.collector_client import (
    StreamEndedError,
    TestAgent,
    collector_yaml,
    http_get,
    http_json,
    metric_value,
)
from support.collector_process import CollectorProcess

FLEET = (("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))


async def fail_everywhere(stack: AsyncExitStack, address: str, *, epoch: int,
                          rounds: int = 2) -> list[TestAgent]:
    fleet = [await stack.enter_async_context(TestAgent(address, a, r, epoch=epoch))
             for a, r in FLEET]
    for _ in range(rounds):
        for agent in fleet:
            await agent.send([agent.result("web", success=False), agent.result("api")])
    return fleet


async def all_up(fleet: list[TestAgent], rounds: int = 2) -> None:
    for _ in range(rounds):
        for agent in fleet:
            await agent.send([agent.result("web"), agent.result("api")])


async def test_an_open_outage_keeps_its_id_across_a_restart(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config) as first, AsyncExitStack() as stack:
        await fail_everywhere(stack, first.grpc_address, epoch=1)
        [opened] = await http_json(first.http.url + "/api/v1/outages?active=true")
        assert opened["scope"] == "global"

    async with CollectorService(config) as second:
        # Restored before any agent reconnects; its regions are unknown, it stays open.
        [restored] = await http_json(second.http.url + "/api/v1/outages?active=true")
        assert restored["id"] == opened["id"]
        assert restored["started_at"] == opened["started_at"]
        text = (await http_get(second.http.url + "/metrics"))[2]
        assert metric_value(text, "probenet_outage_active", probe="web", scope="global") == 1
        async with AsyncExitStack() as stack:
            fleet = [await stack.enter_async_context(
                TestAgent(second.grpc_address, a, r, epoch=1, next_seq=100)) for a, r in FLEET]
            # Watermarks were flushed at shutdown: the same epoch resumes where it was.
            assert [agent.welcome.acked_seq for agent in fleet] == [4, 4, 4]
            # Still failing: the same record continues.
            for agent in fleet:
                await agent.send([agent.result("web", success=False)])
            [still] = await http_json(second.http.url + "/api/v1/outages?active=true")
            assert still["id"] == opened["id"]
            # Evidence of recovery closes it.
            await all_up(fleet)
            assert await http_json(second.http.url + "/api/v1/outages?active=true") == []
        records = await http_json(second.http.url + "/api/v1/outages")
        assert [(r["id"], r["ended_at"] is not None) for r in records] == [(opened["id"], True)]
        assert [e for _, e, _ in second.journal.events(opened["id"])][-1] == "resolved"


async def test_a_service_is_entered_once_and_left_idempotently(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    service = CollectorService(config)
    async with service:
        with pytest.raises(LifecycleError, match="CollectorService entered twice"):
            await service.__aenter__()
    await service.aclose()  # again: nothing happens
    assert service.ready is False


# -- the real `probenet collector` process ------------------------------------------------


@pytest.fixture
def process(tmp_path):
    proc = CollectorProcess(tmp_path)
    yield proc
    proc.stop()


async def test_kill_9_keeps_the_open_outage_and_its_id(process):
    await process.start()
    async with AsyncExitStack() as stack:
        await fail_everywhere(stack, process.grpc_address, epoch=5)
        [opened] = await http_json(process.url + "/api/v1/outages?active=true")
        process.proc.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL

    await process.start()
    [restored] = await http_json(process.url + "/api/v1/outages?active=true")
    assert restored["id"] == opened["id"]
    assert restored["scope"] == opened["scope"]
    async with AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(process.grpc_address, a, r, epoch=6)) for a, r in FLEET]
        for agent in fleet:
            await agent.send([agent.result("web", success=False)])
        await all_up(fleet)
    records = await http_json(process.url + "/api/v1/outages")
    assert [(r["id"], r["ended_at"] is not None) for r in records] == [(opened["id"], True)]


async def test_sigterm_drains_streams_and_exits_0(process):
    await process.start()
    async with TestAgent(process.grpc_address, "fra-1", "eu") as agent:
        await agent.send([agent.result("web")])
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        code, details = await agent.status()
        assert code is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in details
        with pytest.raises(StreamEndedError):
            await agent.send([agent.result("web")])
    assert await process.wait() == 0
    assert time.monotonic() - started < 30  # generous: "a few seconds" on an idle machine
    log = process.log.read_text()
    assert "collector stopped" in log


async def test_a_second_sigterm_ends_a_long_drain_at_once_with_status_1(tmp_path):
    # An open health Watch keeps gRPC busy for the whole shutdown_grace after the drain.
    process = CollectorProcess(tmp_path, extra="shutdown_grace: 60s\n")
    try:
        await process.start()
        async with grpc.aio.insecure_channel(process.grpc_address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert (await watch.read()).status == serving
            process.proc.send_signal(signal.SIGTERM)
            assert (await watch.read()).status != serving  # draining, the Watch still open
            await asyncio.sleep(1.0)  # a second signal, not the first delivered twice
            assert process.proc.poll() is None
            sent = time.monotonic()
            process.proc.send_signal(signal.SIGTERM)
            assert await process.wait(10) == 1
            assert time.monotonic() - sent < 5
            watch.cancel()
    finally:
        process.stop()
    log = process.log.read_text()
    assert log.count("stopping: draining streams") == 1
    assert log.count("second signal: exiting at once") == 1
    assert "collector stopped" not in log
