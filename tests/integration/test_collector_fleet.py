"""The collector's side of the fleet file: pushes over real gRPC, reloads, status, metrics.

A real CollectorService on loopback, and test agents (support/fleet_client.py) that say
`remote_config` in their Hello and read what the collector pushes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING

import pytest

from probenet.collector import main as collector_main
from probenet.collector.config import load_config, parse_config
from probenet.collector.server import CollectorService
from probenet.configfile import ConfigError
from support.collector_client import collector_yaml, counter, http_get, http_json, rejections
from support.fleet_client import ConfigAgent

if TYPE_CHECKING:
    from probenet.v1 import probenet_pb2 as pb

FLEET = """\
defaults: {interval: 10s, timeout: 2s}
probes:
  - {name: everywhere, kind: http, target: "https://www.example.net/"}
  - {name: eu-only, kind: tcp, target: "eu.example.net:443", regions: [eu]}
  - {name: us-only, kind: tcp, target: "us.example.net:443", regions: [us]}
  - {name: fra-only, kind: tcp, target: "fra.example.net:22", agents: [fra-1]}
  - {name: lab-only, kind: tcp, target: "lab.example.net:22", labels: {lab: "yes"}}
"""


def write_fleet(tmp_path, text: str) -> None:
    """Replace the fleet file atomically, with a new mtime."""
    scratch = tmp_path / "fleet.tmp"
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(tmp_path / "fleet.yaml")


def fleet_config(tmp_path, text: str = FLEET, *, watch: str = "100ms"):
    """A collector config file with a registry and the fleet file `text`, loaded."""
    write_fleet(tmp_path, text)
    config_path = tmp_path / "collector.yaml"
    config_path.write_text(collector_yaml(str(tmp_path / "journal.db"), extra=(
        "agents:\n"
        "  - {id: fra-1, region: eu}\n"
        "  - {id: ber-1, region: eu, labels: {lab: 'yes'}}\n"
        "  - {id: iad-1, region: us}\n"
        f"fleet: {{probes_file: fleet.yaml, watch_interval: {watch}}}\n")), encoding="utf-8")
    return load_config(config_path)


def names(config: pb.ProbeConfig) -> set[str]:
    return {probe["name"] for probe in json.loads(config.document)["probes"]}


async def agents_json(service) -> dict[str, dict]:
    return {entry["id"]: entry for entry in await http_json(f"{service.http.url}/api/v1/agents")}


async def wait_until(check, what: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def fleet_service(tmp_path):
    async with CollectorService(fleet_config(tmp_path)) as service:
        yield service


async def test_the_first_push_follows_welcome_with_the_agents_set_and_version(fleet_service,
                                                                             tmp_path):
    async with ConfigAgent(fleet_service.grpc_address, "fra-1", "eu") as agent:
        config = await agent.probe_config()
    assert names(config) == {"everywhere", "eu-only", "fra-only"}
    assert config.version == hashlib.sha256(config.document.encode()).hexdigest()
    document = json.loads(config.document)
    assert document["defaults"] == {"interval": "10s", "timeout": "2s"}
    # Selectors are applied and removed: the agent gets its own probe syntax.
    assert {"name": "eu-only", "kind": "tcp", "target": "eu.example.net:443"} in \
        document["probes"]
    assert all("regions" not in p and "agents" not in p for p in document["probes"])
    assert config.source == "fleet.yaml"
    assert config.issued_at_ms == (tmp_path / "fleet.yaml").stat().st_mtime_ns // 1_000_000


async def test_region_agent_and_label_selectors_choose_each_agents_probes(fleet_service):
    address = fleet_service.grpc_address
    async with ConfigAgent(address, "ber-1", "eu") as ber, \
            ConfigAgent(address, "iad-1", "us", labels={"lab": "no"}) as iad:
        ber_config, iad_config = await ber.probe_config(), await iad.probe_config()
    # ber-1's registry labels hold lab=yes; iad-1's Hello says lab=no.
    assert names(ber_config) == {"everywhere", "eu-only", "lab-only"}
    assert names(iad_config) == {"everywhere", "us-only"}


async def test_an_agent_without_remote_config_gets_no_push(fleet_service):
    async with ConfigAgent(fleet_service.grpc_address, "fra-1", "eu",
                           remote_config=False) as agent:
        await agent.no_probe_config(within_s=0.5)
        entry = (await agents_json(fleet_service))["fra-1"]
        assert entry["remote_config"] is False
        assert entry["config_current"] is None
        assert entry["config_version"] is None
        assert counter(fleet_service, "probenet_agent_config_current",
                       agent="fra-1", region="eu") == 0
        assert fleet_service.page.reference_registry().get_sample_value(
            "probenet_agent_config_current", {"agent": "fra-1", "region": "eu"}) is None


async def test_a_changed_file_is_pushed_only_to_agents_whose_set_changed(fleet_service,
                                                                         tmp_path):
    address = fleet_service.grpc_address
    async with ConfigAgent(address, "fra-1", "eu") as fra, \
            ConfigAgent(address, "iad-1", "us") as iad:
        fra_first, iad_first = await fra.probe_config(), await iad.probe_config()
        write_fleet(tmp_path, FLEET.replace("us.example.net:443", "us.example.net:8443"))
        iad_second = await iad.probe_config()  # found by the file watch
        assert iad_second.version != iad_first.version
        assert {"name": "us-only", "kind": "tcp", "target": "us.example.net:8443"} in \
            json.loads(iad_second.document)["probes"]
        await fra.no_probe_config(within_s=0.6)
        assert fleet_service.fleet is not None
        assert fleet_service.fleet.current_version("fra-1") == fra_first.version


async def test_a_reload_request_rereads_the_file_without_waiting_for_the_watch(tmp_path):
    async with CollectorService(fleet_config(tmp_path, watch="1h")) as service, \
            ConfigAgent(service.grpc_address, "fra-1", "eu") as agent:
        first = await agent.probe_config()
        write_fleet(tmp_path, FLEET.replace("fra.example.net:22", "fra.example.net:2222"))
        service.request_fleet_reload()  # what SIGHUP's handler does
        second = await agent.probe_config()
        assert second.version != first.version
        assert "fra.example.net:2222" in second.document


async def test_a_broken_reload_is_kept_out_and_logged_with_its_position(fleet_service,
                                                                        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probenet.collector.fleet")
    async with ConfigAgent(fleet_service.grpc_address, "fra-1", "eu") as agent:
        first = await agent.probe_config()
        await agent.report(first.version)
        assert counter(fleet_service, "probenet_fleet_config_last_reload_success") == 1
        write_fleet(tmp_path, FLEET.replace('kind: tcp, target: "eu.example',
                                            'kind: tcp, colour: red, target: "eu.example'))
        await wait_until(lambda: _async(counter(
            fleet_service, "probenet_fleet_config_last_reload_success") == 0), "a failed reload")
        await agent.no_probe_config(within_s=0.5)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert any(getattr(r, "line", None) == 4 and "unknown key 'colour'" in r.getMessage()
                   and "fleet.yaml:4:" in r.getMessage() for r in errors), caplog.text
        entry = (await agents_json(fleet_service))["fra-1"]
        assert entry["config_version"] == first.version
        assert entry["config_current"] is True  # the last good set stays the fleet's
        # Fixed: the next change goes through and is pushed.
        write_fleet(tmp_path, FLEET.replace("eu.example.net:443", "eu.example.net:444"))
        second = await agent.probe_config()
        assert second.version != first.version
        assert counter(fleet_service, "probenet_fleet_config_last_reload_success") == 1
        assert counter(fleet_service,
                       "probenet_fleet_config_last_reload_timestamp_seconds") > 0


async def _async(value):
    return value


async def test_config_status_with_refused_probes_shows_in_the_api_and_metrics(fleet_service):
    async with ConfigAgent(fleet_service.grpc_address, "fra-1", "eu") as agent:
        config = await agent.probe_config()
        entry = (await agents_json(fleet_service))["fra-1"]
        assert entry["remote_config"] is True
        assert entry["config_current"] is False  # nothing reported yet
        assert counter(fleet_service, "probenet_agent_config_current",
                       agent="fra-1", region="eu") == 0
        await agent.report(config.version, refused=[("fra-only", "no route to lab")],
                           collector_id="test-collector")

        async def current():
            found = (await agents_json(fleet_service))["fra-1"]
            return found if found["config_current"] else None

        entry = await wait_until(current, "the agent's status")
        assert entry["config_version"] == config.version
        assert entry["config_refused"] == [{"probe": "fra-only", "reason": "no route to lab"}]
        assert entry["config_error"] is None
        assert counter(fleet_service, "probenet_agent_config_current",
                       agent="fra-1", region="eu") == 1
        _, _, page = await http_get(f"{fleet_service.http.url}/status/agents")
        assert "current set" in page
        assert "fra-only: no route to lab" in page
        # An older version reported: outdated again.
        await agent.report("0" * 64, received_version=config.version,
                           error="a name clash with local probe 'eu-only'")
        entry = await wait_until(
            lambda: _not_current(fleet_service), "the outdated status")
        assert entry["config_error"] == "a name clash with local probe 'eu-only'"
        _, _, page = await http_get(f"{fleet_service.http.url}/status/agents")
        assert "outdated" in page


async def _not_current(service):
    found = (await agents_json(service))["fra-1"]
    return found if found["config_current"] is False else None


async def test_a_malformed_config_status_is_counted_and_the_stream_goes_on(fleet_service):
    async with ConfigAgent(fleet_service.grpc_address, "fra-1", "eu") as agent:
        config = await agent.probe_config()
        await agent.report("not-a-hash")
        await agent.report(config.version, refused=[("bad name!", "x")])
        await wait_until(lambda: _async(rejections(fleet_service, "bad_config_status") == 2),
                         "two rejections")
        await agent.report(config.version)  # the stream still works
        entry = await wait_until(lambda: _current(fleet_service), "a good status")
        assert entry["config_refused"] == []


async def _current(service):
    found = (await agents_json(service))["fra-1"]
    return found if found["config_current"] else None


async def test_registered_agents_never_seen_show_config_fields(fleet_service):
    entries = await agents_json(fleet_service)
    assert entries["iad-1"]["config_version"] is None
    assert entries["iad-1"]["config_current"] is None
    assert entries["iad-1"]["remote_config"] is False


def test_a_collector_with_an_invalid_fleet_file_refuses_to_start(tmp_path, capsys):
    config = fleet_config(tmp_path)
    write_fleet(tmp_path, FLEET + "  - {name: broken, kind: http, target: ftp://x}\n")
    with pytest.raises(ConfigError) as caught:
        CollectorService(config)
    assert "fleet.yaml:8:" in str(caught.value)
    assert collector_main.run(tmp_path / "collector.yaml") == 1
    assert f"{tmp_path / 'fleet.yaml'}:8:" in capsys.readouterr().err


async def test_without_a_fleet_file_nothing_is_pushed_and_entries_keep_their_fields(
        tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config) as service, \
            ConfigAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.no_probe_config(within_s=0.3)
        entry = (await agents_json(service))["fra-1"]
        assert "config_version" not in entry
        assert "remote_config" not in entry
