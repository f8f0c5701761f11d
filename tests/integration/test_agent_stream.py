"""Agent -> collector streaming against the real CollectorService over gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from prometheus_client import CollectorRegistry

from probenet.agent.config import parse_config as parse_agent_config
from probenet.agent.main import Agent
from probenet.collector.config import parse_config as parse_collector_config
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.certs import TestCA
from support.collector_client import collector_yaml, http_json
from support.system import free_port
from support.targets import TcpTarget, wait_until


def agent_config(collector: str, target: str, *, probes: int = 3, extra: str = "",
                 collector_extra: str = "", interval: str = "100ms"):
    lines = "\n".join(
        f"  - {{name: p{i}, kind: tcp, target: '{target}', interval: {interval}, "
        f"timeout: 80ms}}" for i in range(probes))
    return parse_agent_config(f"""
agent: {{id: fra-1, region: eu, labels: {{network: test}}}}
collectors: [{{address: "{collector}"{collector_extra}}}]
stream: {{backoff_initial: 50ms, backoff_max: 300ms, linger: 20ms}}
{extra}
probes:
{lines}
""")


def collector_config(tmp_path, port: int = 0, extra: str = ""):
    return parse_collector_config(collector_yaml(
        str(tmp_path / "journal.db"), grpc_listen=f"127.0.0.1:{port}", extra=extra))


def applied(service) -> float:
    return service.registry.get_sample_value("probenet_ingest_results_total",
                                             {"outcome": "applied"}) or 0.0


def duplicates(service) -> float:
    return service.registry.get_sample_value("probenet_ingest_results_total",
                                             {"outcome": "duplicate"}) or 0.0


async def test_results_reach_the_collector_with_hello_identity(tmp_path):
    seen = []
    async with TcpTarget() as tcp, CollectorService(collector_config(tmp_path)) as service:
        config = agent_config(service.grpc_address, tcp.address)
        async with Agent(config, observers=[seen.append]) as agent:
            assert await agent.streams[0].wait_connected(10)
            await wait_until(lambda: applied(service) >= 6, 10)
            agents = await http_json(service.http.url + "/api/v1/agents")
            targets = await http_json(service.http.url + "/api/v1/targets")
            stream = agent.streams[0]
            assert stream.collector_id == "test-collector"
    assert [(a["id"], a["region"], a["connected"]) for a in agents] == [("fra-1", "eu", True)]
    assert {t["probe"] for t in targets} == {"p0", "p1", "p2"}
    assert [r.seq for r in seen] == list(range(1, len(seen) + 1))


async def test_results_made_while_the_collector_is_down_arrive_once_it_is_up(tmp_path):
    port = free_port()
    async with TcpTarget() as tcp:
        config = agent_config(f"127.0.0.1:{port}", tcp.address)
        registry = CollectorRegistry()
        async with Agent(config, registry=registry) as agent:
            stream = agent.streams[0]
            await wait_until(lambda: len(agent.spools[0]) >= 10, 10)
            assert stream.state in {"connecting", "backoff"}
            assert registry.get_sample_value("probenet_agent_collector_connected",
                                             {"collector": f"127.0.0.1:{port}"}) == 0.0
            async with CollectorService(collector_config(tmp_path, port)) as service:
                assert await stream.wait_connected(10)
                agent.scheduler.stop()
                await agent.scheduler.wait_idle(5)
                assert await stream.flush(10)
                produced = agent.fanout.last_seq
                assert applied(service) == produced
                assert duplicates(service) == 0
    assert produced >= 10


async def test_a_collector_restart_loses_nothing_and_counts_nothing_twice(tmp_path):
    async with TcpTarget() as tcp, contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(CollectorService(collector_config(tmp_path)))
        port = first.grpc_port
        agent = Agent(agent_config(first.grpc_address, tcp.address))
        await stack.enter_async_context(agent)
        stream = agent.streams[0]
        await wait_until(lambda: applied(first) >= 5, 10)
        await first.__aexit__(None, None, None)  # the collector goes away mid-stream
        await wait_until(lambda: stream.state != "connected", 10)
        buffered_at_least = agent.fanout.last_seq + 3
        await wait_until(lambda: agent.fanout.last_seq >= buffered_at_least, 10)
        async with CollectorService(collector_config(tmp_path, port)) as second:
            assert await stream.wait_connected(10)
            agent.scheduler.stop()
            await agent.scheduler.wait_idle(5)
            assert await stream.flush(10)
            # every result applied exactly once across both lives of the collector
            assert applied(first) + applied(second) == agent.fanout.last_seq
            assert stream.reconnects == 2


async def test_overflow_while_down_is_counted_not_silent(tmp_path):
    port = free_port()
    async with TcpTarget() as tcp:
        config = agent_config(f"127.0.0.1:{port}", tcp.address,
                              extra="buffer: {max_results: 5}")
        registry = CollectorRegistry()
        async with Agent(config, registry=registry) as agent:
            await wait_until(lambda: agent.fanout.last_seq >= 12, 10)
            agent.scheduler.stop()
            await agent.scheduler.wait_idle(5)
            produced = agent.fanout.last_seq
            dropped = registry.get_sample_value("probenet_agent_results_dropped_total",
                                                {"collector": f"127.0.0.1:{port}"})
            depth = registry.get_sample_value("probenet_agent_buffer_results",
                                              {"collector": f"127.0.0.1:{port}"})
            assert (dropped, depth) == (produced - 5, 5)
            async with CollectorService(collector_config(tmp_path, port)) as service:
                assert await agent.streams[0].flush(10)
                assert applied(service) == 5


async def test_bearer_token_from_file_and_wrong_token_rejected(tmp_path):
    (tmp_path / "collector-side").write_text("s3cret\n")
    (tmp_path / "good").write_text("s3cret\n")
    (tmp_path / "bad").write_text("guess\n")
    registry_yaml = ("agents:\n"
                     f"  - {{id: fra-1, region: eu, token_file: {tmp_path / 'collector-side'}}}\n")
    async with TcpTarget() as tcp, CollectorService(
            collector_config(tmp_path, extra=registry_yaml)) as service:
        good = agent_config(service.grpc_address, tcp.address, probes=1,
                            collector_extra=f", token_file: '{tmp_path / 'good'}'")
        async with Agent(good) as agent:
            assert await agent.streams[0].wait_connected(10)
            await wait_until(lambda: applied(service) >= 1, 10)
        bad = agent_config(service.grpc_address, tcp.address, probes=1,
                           collector_extra=f", token_file: '{tmp_path / 'bad'}'")
        async with Agent(bad) as agent:
            stream = agent.streams[0]
            await wait_until(lambda: "UNAUTHENTICATED" in stream.last_error, 10)
            assert stream.state != "connected"


async def test_mutual_tls_to_the_collector(tmp_path):
    ca = TestCA(tmp_path)
    server = ca.issue("localhost", "127.0.0.1")
    client = ca.issue("fra-1", client=True)
    tls_yaml = (f"tls: {{cert_file: '{server.chain_file}', key_file: '{server.key_file}', "
                f"client_ca_file: '{ca.ca_file}'}}\n")
    async with TcpTarget() as tcp, CollectorService(
            collector_config(tmp_path, extra=tls_yaml)) as service:
        config = agent_config(
            service.grpc_address, tcp.address, probes=1,
            collector_extra=(f", tls: {{ca_file: '{ca.ca_file}', cert_file: "
                             f"'{client.cert_file}', key_file: '{client.key_file}'}}"))
        async with Agent(config) as agent:
            assert await agent.streams[0].wait_connected(10)
            await wait_until(lambda: applied(service) >= 1, 10)
        untrusted = agent_config(service.grpc_address, tcp.address, probes=1,
                                 collector_extra=", tls: {}")
        async with Agent(untrusted) as agent:  # system trust store: the test CA is unknown
            await asyncio.sleep(1.0)
            assert agent.streams[0].state != "connected"


async def test_graceful_shutdown_flushes_what_is_buffered(tmp_path):
    async with TcpTarget() as tcp, CollectorService(collector_config(tmp_path)) as service:
        config = agent_config(service.grpc_address, tcp.address, probes=5)
        async with Agent(config) as agent:
            assert await agent.streams[0].wait_connected(10)
            await asyncio.sleep(0.3)
            assert await agent.shutdown(5.0)
            await agent.scheduler.wait_idle(2)
            # runs in flight when we stopped may add a few; flush once more
            assert await agent.streams[0].flush(5)
            produced = agent.fanout.last_seq
        assert applied(service) == produced


async def test_stream_lifecycle_enter_once_leave_twice(tmp_path):
    from probenet.agent.errors import LifecycleError  # noqa: PLC0415
    from probenet.agent.spool import Spool  # noqa: PLC0415
    from probenet.agent.stream import CollectorStream  # noqa: PLC0415

    config = agent_config("127.0.0.1:9", "127.0.0.1:9", probes=1)
    stream = CollectorStream(config.collectors[0], Spool(10), settings=config.stream,
                             hello=lambda: pb.Hello(agent_id="fra-1", region="eu", epoch=1))
    async with stream:
        try:
            await stream.__aenter__()
        except LifecycleError:
            pass
        else:
            raise AssertionError("entered twice")
    await stream.__aexit__(None, None, None)
    assert stream.state == "closed"


async def test_leaving_while_a_call_hangs_ends_the_reconnect_loop(tmp_path):
    # A collector that accepts the stream and never answers: the stream sits inside a gRPC
    # call when the agent stops. Leaving must end the loop at once, with no reconnect.
    from probenet.agent.spool import Spool  # noqa: PLC0415
    from probenet.agent.stream import CollectorStream  # noqa: PLC0415

    hold = asyncio.Event()

    async def silent(request_iterator, context):
        del request_iterator, context
        await hold.wait()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "probenet.v1.Ingest", {"Stream": grpc.stream_stream_rpc_method_handler(silent)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        config = agent_config(f"127.0.0.1:{port}", "127.0.0.1:9", probes=1)
        stream = CollectorStream(config.collectors[0], Spool(10), settings=config.stream,
                                 hello=lambda: pb.Hello(agent_id="fra-1", region="eu", epoch=1))
        async with stream:
            await wait_until(lambda: stream.state == "connecting", 5)
            await asyncio.sleep(0.3)  # inside the call, waiting for a Welcome
        async with asyncio.timeout(10):
            await stream.__aexit__(None, None, None)
        assert stream.state == "closed"
        assert stream.reconnects == 0
    finally:
        hold.set()
        await server.stop(0)
