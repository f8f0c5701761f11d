"""The agent's own /metrics: served over HTTP, current values, clean for promtool."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry

from probenet.agent.metrics import AgentStateCollector, MetricsServer, ProbeCounters
from probenet.agent.spool import Spool
from support.collector_client import http_get, metric_value
from support.system import need_binary


class FakeStreamView:
    """A stand-in for CollectorStream's read-only metric view."""

    def __init__(self, address: str, state: str, spool: Spool) -> None:
        self.address = address
        self.state = state
        self.spool = spool
        self.reconnects = 3
        self.results_sent = 42

    @property
    def buffered(self) -> int:
        return len(self.spool)

    @property
    def capacity(self) -> int:
        return self.spool.max_results

    @property
    def dropped(self) -> int:
        return self.spool.dropped


async def test_metrics_endpoint_serves_current_values_and_passes_promtool():
    from probenet.v1 import probenet_pb2 as pb  # noqa: PLC0415

    registry = CollectorRegistry()
    counters = ProbeCounters(registry)
    counters.count("http", True)
    counters.count("http", False, "connect", "connect_refused")
    counters.count("tcp", False, "timeout", "connect_timeout")
    spool = Spool(2)
    for seq in (1, 2, 3):
        spool.add(pb.ProbeResult(seq=seq, probe="p", kind="tcp"))
    streams = [FakeStreamView("collector-a:7070", "backoff", spool)]
    registry.register(AgentStateCollector(lambda: streams, lambda: 7))
    async with MetricsServer("127.0.0.1:0", registry) as server:
        status, content_type, body = await http_get(server.url)
        streams[0].state = "connected"
        _, _, later = await http_get(server.url)
    assert status == 200
    assert content_type.startswith("text/plain")
    assert metric_value(body, "probenet_agent_probe_runs_total", kind="http",
                        result="failure") == 1.0
    assert metric_value(body, "probenet_agent_probe_failures_total", kind="tcp",
                        phase="timeout", reason="connect_timeout") == 1.0
    assert metric_value(body, "probenet_agent_probes") == 7.0
    labels = {"collector": "collector-a:7070"}
    assert metric_value(body, "probenet_agent_buffer_results", **labels) == 2.0
    assert metric_value(body, "probenet_agent_results_dropped_total", **labels) == 1.0
    assert metric_value(body, "probenet_agent_collector_connected", **labels) == 0.0
    assert metric_value(body, "probenet_agent_collector_state", **labels,
                        probenet_agent_collector_state="backoff") == 1.0
    assert metric_value(later, "probenet_agent_collector_connected", **labels) == 1.0

    promtool = need_binary("promtool", "prometheus")
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
