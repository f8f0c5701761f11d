"""The ingest checks names by the one rule of `probenet.names`: whatever a valid agent config
names, the collector accepts; anything else is refused, by reason."""

from __future__ import annotations

import json

import grpc
import pytest

from probenet.agent.config import parse_config as parse_agent_config
from probenet.agent.main import Agent
from probenet.collector import ingest
from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from probenet.names import MAX_LABEL_LENGTH, MAX_LABELS, MAX_NAME_LENGTH
from support.collector_client import (
    ManualClock,
    StreamEndedError,
    TestAgent,
    applied,
    collector_yaml,
    http_json,
    rejections,
)
from support.targets import TcpTarget, wait_until

S = grpc.StatusCode


@pytest.fixture
async def collector(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config, clock=ManualClock()) as service:
        yield service








async def test_names_at_every_limit_of_the_agent_config_are_accepted(tmp_path):
    agent_id = ("fra-1." + "a" * MAX_NAME_LENGTH)[:MAX_NAME_LENGTH]
    region = "eu-central_1.zone:b@provider"
    labels = {f"{'k' * (MAX_LABEL_LENGTH - 3)}{i:03d}": "v" * MAX_LABEL_LENGTH
              for i in range(MAX_LABELS)}
    probes = ["9.web:443@edge_" + "x" * (MAX_NAME_LENGTH - 15), "p"]
    assert len(probes[0]) == MAX_NAME_LENGTH
    async with TcpTarget() as tcp, CollectorService(parse_config(collector_yaml(
            str(tmp_path / "journal.db")))) as service:
        config = parse_agent_config(f"""
agent: {{id: "{agent_id}", region: "{region}", labels: {json.dumps(labels)}}}
collectors: [{{address: "{service.grpc_address}"}}]
stream: {{linger: 20ms}}
probes:
""" + "".join(f"  - {{name: '{name}', kind: tcp, target: '{tcp.address}', interval: 100ms, "
              "timeout: 80ms}\n" for name in probes))
        async with Agent(config) as agent:
            assert await agent.streams[0].wait_connected(10)
            await wait_until(lambda: applied(service) >= 4, 10)
            agents = await http_json(service.http.url + "/api/v1/agents")
            targets = await http_json(service.http.url + "/api/v1/targets")
    assert [(a["id"], a["region"]) for a in agents] == [(agent_id, region)]
    assert sorted(t["probe"] for t in targets) == sorted(probes)
    assert rejections(service, "bad_hello") == rejections(service, "bad_probe") == 0


@pytest.mark.parametrize(("agent_id", "region", "labels", "detail"), [
    ("fra-1", "eu central", {}, "region: invalid name 'eu central': use letters"),
    ("x" * (MAX_NAME_LENGTH + 1), "eu", {}, "agent_id: invalid name 'xxx"),
    ("fra/1", "eu", {}, "agent_id: invalid name 'fra/1'"),
    ("fra-1", "eu", {"net-work": "x"}, "labels: invalid label name 'net-work'"),
    ("fra-1", "eu", {"network": "v" * (MAX_LABEL_LENGTH + 1)},
     "labels: the value of label 'network' is 129 characters long"),
    ("fra-1", "eu", {f"l{i}": "" for i in range(MAX_LABELS + 1)},
     "labels: 65 labels; at most 64 are allowed"),
])
async def test_a_hello_outside_the_rule_is_refused(collector, agent_id, region, labels,
                                                  detail):
    with pytest.raises(StreamEndedError) as ended:
        async with TestAgent(collector.grpc_address, agent_id, region, labels=labels):
            pass
    assert ended.value.code is S.INVALID_ARGUMENT
    assert ended.value.details.startswith(detail)
    assert rejections(collector, "bad_hello") == 1


async def test_probe_names_outside_the_rule_are_rejected_and_valid_ones_remembered(
        collector, monkeypatch):
    monkeypatch.setattr(ingest, "MAX_KNOWN_PROBES", 2)
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        good = ["web", "api", "db", "cache"]
        bad = ["", "a b", "a/b", "a+b", "#a", "x" * (MAX_NAME_LENGTH + 1), "caf\u00e9"]
        await agent.send(agent.results(good + bad))
        await agent.send(agent.results(good + bad))
    assert applied(collector) == 2 * len(good)
    assert rejections(collector, "bad_probe") == 2 * len(bad)
    assert sorted({s.probe for s in collector.classifier.samples()}) == sorted(good)
    # The memo of valid names is bounded: the names past it are checked every time.
    assert collector.ingest._known_probes == {"web", "api"}
