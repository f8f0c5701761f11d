"""The README's config examples and commands stay true: its YAML loads with the real
loaders, and the set-up commands it names are the Makefile's."""

from __future__ import annotations

import re

import pytest

from probenet.agent.config import ConfigError
from probenet.agent.config import load_config as load_agent
from probenet.collector.config import load_config as load_collector
from probenet.collector.fleet import load_fleet
from support.system import ROOT

README = ROOT / "README.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_collector_fleet_and_agent_examples_load(tmp_path):
    collector_text, fleet_text, agent_text = yaml_blocks()[:3]
    # The files the collector example names must exist for its config to load.
    for name in ("tls/collector.pem", "tls/collector-key.pem", "tls/ca.pem"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("placeholder\n")
    for agent in re.findall(r"token_file: (tokens/[\w-]+)", collector_text):
        (tmp_path / agent).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / agent).write_text("secret\n")
    (tmp_path / "collector.yaml").write_text(collector_text)
    (tmp_path / "fleet.yaml").write_text(fleet_text)
    (tmp_path / "agent.yaml").write_text(agent_text)

    collector = load_collector(tmp_path / "collector.yaml")
    assert {a.id: a.region for a in collector.agents}["fra-1"] == "eu-central"
    assert collector.classification.global_ratio == 0.8
    assert collector.fleet is not None
    fleet = load_fleet(collector.fleet.probes_file)
    fra = fleet.probe_set("fra-1", "eu-central", {"network": "as24940"})
    iad = fleet.probe_set("iad-1", "us-east", {})
    assert {"social-web", "social-dns", "social-edge", "social-tls"} <= set(iad.probes)
    assert set(fra.probes) - set(iad.probes) == {"social-eu-cdn", "transit-as24940", "lab-ssh"}
    agent = load_agent(tmp_path / "agent.yaml")
    assert agent.agent.region == "eu-central"
    assert agent.remote_config is True
    assert agent.probes == []


def test_readme_flow_example_loads(tmp_path):
    flow_text = next(block for block in yaml_blocks() if "kind: flow" in block)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "social").write_text("not-the-real-one\n")
    header = ("agent: {id: fra-1, region: eu-central}\n"
              "collectors: [{address: '127.0.0.1:7070'}]\n")
    (tmp_path / "agent.yaml").write_text(header + flow_text)
    agent = load_agent(tmp_path / "agent.yaml")
    (probe,) = agent.probes
    assert probe.kind == "flow"
    assert probe.flow is not None
    assert [s.name for s in probe.flow.steps] == ["home", "login", "feed", "me"]
    # Without its secret file, the same example is refused at the secret's position.
    (tmp_path / "secrets" / "social").unlink()
    with pytest.raises(ConfigError, match=r"agent.yaml:\d+:\d+: secret 'password'"):
        load_agent(tmp_path / "agent.yaml")


def test_readme_set_up_commands_are_the_makefiles():
    text = README.read_text()
    setup = re.search(r"## Set up and run\n(.*?)\n## ", text, flags=re.DOTALL)
    assert setup is not None
    commands = re.findall(r"^(make \w+)", setup.group(1), flags=re.MULTILINE)
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo: venv\n\t.venv/bin/probenet demo" in makefile
    assert "\ntest:\n\tscripts/test.sh" in makefile
