"""Every metric the README documents is exported, with its documented labels.

A mixed fleet (two agents in two regions, one probe of every kind against real local
targets, one http probe and one flow's second step failing everywhere so
outages are open) streams to a real collector;
its /metrics is checked against the README's metric tables.
"""

from __future__ import annotations

import asyncio
import re
import time

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from probenet.agent.config import parse_config as parse_agent_config
from probenet.agent.main import Agent
from probenet.collector.config import parse_config as parse_collector_config
from probenet.collector.model import rfc3339
from probenet.collector.server import CollectorService
from support.certs import TestCA
from support.collector_client import collector_yaml, http_get
from support.system import ROOT, need_root
from support.targets import DnsAnswer, DnsResponder, HttpRoute, HttpTarget, TcpTarget, wait_until

PAIR_LABELS = {"probe", "target", "kind", "region", "agent"}
# Exported only with an `mqtt:` section (their own suite runs a broker).
NEEDS_BROKER = re.compile(r"^probenet_mqtt_")
# Exported only by a sharded collector with peer groups, once asked for the fleet view
# (tests/integration/test_collector_sharding.py checks it): here every probe is one group's.
NEEDS_PEERS = {"probenet_fleet_peer_up"}


def readme_metrics() -> dict[str, set[str]]:
    """metric name -> documented label names, from the README's two metric tables."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Metrics"):text.index("## HTTP API")]
    documented: dict[str, set[str]] = {}
    per_kind = False
    for line in section.splitlines():
        if line.startswith("| metric | extra label |"):
            per_kind = True
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([a-z_]+)`", cells[0])
        if per_kind:
            extra = cells[1].split(":")[0].strip()
            labels = PAIR_LABELS | ({extra} if extra else set())
        else:
            labels = {label.strip() for label in re.sub(r"\(.*?\)", "", cells[1]).split(",")
                      if label.strip()}
        for name in names:
            documented[name] = labels
    return documented


def exported(exposition: str) -> dict[str, list[set[str]]]:
    """Sample name -> label-name sets of its samples, from a Prometheus text exposition."""
    samples: dict[str, list[set[str]]] = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        assert match, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
        samples.setdefault(match.group(1), []).append(labels)
    return samples


def _series(samples: dict[str, list[set[str]]], name: str) -> list[set[str]]:
    for candidate in (name, f"{name}_total", f"{name}_info", f"{name}_bucket"):
        if candidate in samples:
            return [labels - {"le"} for labels in samples[candidate]]
    return []


def test_the_readme_lists_the_contract_metrics():
    documented = readme_metrics()
    for name in ("probe_success", "probenet_region_up", "probenet_target_state",
                 "probe_http_duration_seconds", "probe_grpc_healthcheck_response"):
        assert name in documented
    assert documented["probe_http_duration_seconds"] == PAIR_LABELS | {"phase"}
    assert documented["probenet_region_up"] == {"probe", "region"}


async def test_every_documented_metric_is_exported_with_its_labels(tmp_path):
    need_root("icmp probes in the mixed fleet (raw sockets)")
    ca = TestCA(tmp_path)
    cert = ca.issue("localhost", "127.0.0.1")
    grpc_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    # A maintenance window over `edge`, so that probenet_maintenance_active has a sample.
    now = time.time()
    window = (f'maintenance:\n  - {{probes: [edge], start: "{rfc3339(now - 3600)}", '
              f'end: "{rfc3339(now + 3600)}", reason: "exported while covered"}}\n')
    # A fleet file (pushing an empty set) and agents with remote_config, so that the fleet's
    # metrics have samples.
    (tmp_path / "fleet.yaml").write_text("probes: []\n")
    fleet = f"fleet: {{probes_file: '{tmp_path / 'fleet.yaml'}'}}\n"
    config = parse_collector_config(collector_yaml(str(tmp_path / "journal.db"),
                                                   extra=window + fleet))
    try:
        async with CollectorService(config) as collector, \
                HttpTarget({"/down": HttpRoute(status=503)},
                           ssl_context=cert.server_context()) as web, \
                TcpTarget("accept") as edge, \
                DnsResponder({("app.test", "A"): DnsAnswer(["192.0.2.1"])}) as dns:
            probes = f"""
  - {{name: web, service: shop, kind: http, target: "{web.url('/')}",
     http: {{tls: {{ca_file: "{ca.ca_file}"}}}}}}
  - {{name: checkout, service: shop, kind: http, target: "{web.url('/down')}",
     http: {{tls: {{ca_file: "{ca.ca_file}"}}}}, trace: {{on_failure: true}}}}
  - {{name: edge, kind: tcp, target: "{edge.address}"}}
  - {{name: app-dns, kind: dns, target: app.test, dns: {{server: "{dns.address}"}}}}
  - {{name: ping, kind: icmp, target: 127.0.0.1, icmp: {{count: 2, spacing: 50ms}}}}
  - {{name: cert, kind: tls, target: "127.0.0.1:{web.port}",
     tls: {{ca_file: "{ca.ca_file}", server_name: localhost}}}}
  - {{name: health, kind: grpc, target: "127.0.0.1:{grpc_port}"}}
  - {{name: login, service: shop, kind: flow, target: "{web.url('/')}",
     flow: {{tls: {{ca_file: "{ca.ca_file}"}},
            steps: [{{name: home, request: {{url: /}}}},
                    {{name: login, request: {{url: /down, method: POST}}}}]}}}}
"""
            agents = []
            for agent_id, region, source in (("fra-1", "eu", "127.0.0.2"),
                                             ("iad-1", "us", "127.0.0.3")):
                agents.append(Agent(parse_agent_config(f"""
agent: {{id: {agent_id}, region: {region}, source_address: {source}}}
collectors: [{{address: "{collector.grpc_address}"}}]
defaults: {{interval: 300ms, timeout: 250ms, confirm_delay: 50ms}}
stream: {{linger: 20ms}}
remote_config: true
probes:{probes}""")))
            async with agents[0], agents[1]:
                await wait_until(lambda: {"checkout", "login"} <= {
                    o.probe for o in collector.classifier.open_outages()}, 20)
                await wait_until(lambda: sum(
                    1 for _ in collector.classifier.samples()) == 16, 20)
                text = ""
                for _ in range(100):  # the failure's path trace follows its confirmation
                    _, _, text = await http_get(collector.http.url + "/metrics")
                    if "probenet_path_hops{" in text:
                        break
                    await asyncio.sleep(0.1)
    finally:
        await grpc_server.stop(0)

    samples = exported(text)
    missing, unlabelled = [], []
    for name, labels in sorted(readme_metrics().items()):
        if NEEDS_BROKER.match(name) or name in NEEDS_PEERS:
            continue
        series = _series(samples, name)
        if not series:
            missing.append(name)
        elif not any(labels <= found for found in series):
            unlabelled.append((name, sorted(labels), sorted(series[0])))
    assert not missing, f"documented in the README but not exported: {missing}"
    assert not unlabelled, f"exported without the documented labels: {unlabelled}"
