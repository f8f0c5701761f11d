"""The fleet file (collector/fleet.py): parsing, selectors, canonical sets, checks."""

from __future__ import annotations

import hashlib
import json

import pytest

from probenet.cli import check
from probenet.collector.config import parse_config
from probenet.collector.fleet import Selector, load_fleet, parse_fleet, selector_warnings
from probenet.configfile import ConfigError

FLEET = """\
defaults: {interval: 30s, timeout: 5s}
probes:
  - {name: web, kind: http, target: "https://example.net/"}
  - name: dns-eu
    kind: dns
    target: example.net
    dns: {record: AAAA}
    regions: [eu]
  - {name: lab, kind: tcp, target: "10.0.0.1:22", agents: [fra-1, ber-1], labels: {lab: "yes"}}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_fleet(text, "fleet.yaml")
    return [str(issue) for issue in caught.value.issues]


# -- parsing ------------------------------------------------------------------------------------


def test_a_fleet_file_reads_defaults_probes_and_selectors():
    fleet = parse_fleet(FLEET, "fleet.yaml")
    assert [p.name for p in fleet.probes] == ["web", "dns-eu", "lab"]
    assert fleet.probes[0].selector == Selector()
    assert fleet.probes[1].selector.regions == frozenset({"eu"})
    assert fleet.probes[2].selector == Selector(
        agents=frozenset({"fra-1", "ber-1"}), labels={"lab": "yes"})
    assert dict(fleet.defaults) == {"interval": "30s", "timeout": "5s"}


@pytest.mark.parametrize(("text", "expected"), [
    ("probes:\n  - {name: w, kind: http, target: 'ftp://x'}\n",
     "fleet.yaml:2:35: probes[0].target: invalid URL 'ftp://x'"),
    ("probes:\n  - {name: w, kind: tcp, target: 'a:1', colour: red}\n",
     "fleet.yaml:2:41: unknown key 'colour'"),
    ("probes:\n  - {name: w, kind: tcp, target: 'a:1', regions: [Not A Name]}\n",
     "fleet.yaml:2:51: probes[0].regions[0]: invalid name"),
    ("probes:\n  - {name: w, kind: tcp, target: 'a:1', labels: {lab: [1]}}\n",
     "fleet.yaml:2:"),
    ("defaults: {interval: 1s, timeout: 2s}\nprobes: []\n",
     "fleet.yaml:1:35: timeout (2s) must be shorter than the interval (1s)"),
    ("probes:\n  - {name: w, kind: tcp, target: 'a:1'}\n  - {name: w, kind: tcp, target: 'b:1'}\n",
     "fleet.yaml:3:12: duplicate probe name 'w'"),
    ("probes: []\nagents: [x]\n",
     "fleet.yaml:2:1: unknown key 'agents'"),
    ("probes:\n  - {name: p, kind: icmp, target: h, icmp: {count: 10, spacing: 1s}}\n",
     "fleet.yaml:2:"),
])
def test_errors_name_their_file_line_and_column(text, expected):
    found = issues(text)
    assert any(issue.startswith(expected) for issue in found), found


def test_every_problem_is_reported_at_once():
    found = issues("probes:\n  - {name: a, kind: http, target: 'ftp://x', regions: [1]}\n"
                   "  - {name: b, kind: tcp, target: 'b:1', bogus: 1}\n")
    assert len(found) == 3, found


def test_an_empty_fleet_file_is_an_error():
    assert issues("# nothing\n")[0].startswith("fleet.yaml:1:1: the file is empty")


# -- secrets and file paths ---------------------------------------------------------------------

FLOW = """\
probes:
  - name: login
    kind: flow
    target: https://example.net/
    flow:
      secrets: {{password: {secret}}}
      steps: [{{name: s, request: {{url: "/?p=${{password}}"}}}}]
"""


def test_a_secret_from_an_env_variable_or_an_absolute_file_passes(tmp_path):
    parse_fleet(FLOW.format(secret="{env: LOGIN_PASSWORD}"), "fleet.yaml")
    # The file need not exist on the collector: each agent reads it on its own host.
    parse_fleet(FLOW.format(secret="{file: /etc/probenet/nowhere}"), "fleet.yaml")


def test_a_secret_file_with_a_relative_path_is_an_error():
    found = issues(FLOW.format(secret="{file: secrets/password}"))
    assert any(issue.startswith("fleet.yaml:6:") and "relative" in issue for issue in found)


def test_a_secret_that_names_no_source_or_a_bad_variable_is_an_error():
    assert any("exactly one of file or env" in i for i in issues(FLOW.format(secret="{}")))
    assert any("invalid environment variable name" in i
               for i in issues(FLOW.format(secret="{env: 'not ok'}")))


def test_other_file_paths_must_be_absolute_too():
    found = issues("probes:\n  - name: w\n    kind: http\n    target: https://x/\n"
                   "    http: {tls: {ca_file: ca.pem}}\n")
    assert found == [("fleet.yaml:5:27: ca_file 'ca.pem' is relative: each agent resolves it "
                      "on its own host, so write an absolute path (or use a secret's `env`)")]


# -- selection and versions ---------------------------------------------------------------------


def test_each_agent_gets_the_probes_its_selectors_choose():
    fleet = parse_fleet(FLEET, "fleet.yaml")
    assert fleet.probe_set("fra-1", "eu", {"lab": "yes"}).probes == ("web", "dns-eu", "lab")
    assert fleet.probe_set("fra-1", "eu", {"lab": "no"}).probes == ("web", "dns-eu")
    assert fleet.probe_set("iad-1", "us", {"lab": "yes"}).probes == ("web",)


def test_the_document_is_the_agents_syntax_without_selectors_and_hashes_to_the_version():
    fleet = parse_fleet(FLEET, "fleet.yaml")
    probe_set = fleet.probe_set("fra-1", "eu", {"lab": "yes"})
    document = json.loads(probe_set.document)
    assert document == {
        "defaults": {"interval": "30s", "timeout": "5s"},
        "probes": [
            {"name": "web", "kind": "http", "target": "https://example.net/"},
            {"name": "dns-eu", "kind": "dns", "target": "example.net",
             "dns": {"record": "AAAA"}},
            {"name": "lab", "kind": "tcp", "target": "10.0.0.1:22"}]}
    assert probe_set.version == hashlib.sha256(probe_set.document.encode()).hexdigest()
    # Canonical: sorted keys, no spaces.
    assert probe_set.document == json.dumps(document, sort_keys=True, separators=(",", ":"))


def test_the_same_content_written_otherwise_gives_the_same_version():
    reordered = """\
probes:
  - {target: "https://example.net/", kind: http, name: web}
  - name: dns-eu
    regions: [eu]
    dns:
      record: AAAA
    target: example.net
    kind: dns
  - {labels: {lab: "yes"}, agents: [ber-1, fra-1], name: lab, kind: tcp, target: "10.0.0.1:22"}
defaults: {timeout: 5s, interval: 30s}   # a comment
"""
    first, second = parse_fleet(FLEET, "a.yaml"), parse_fleet(reordered, "b.yaml")
    for agent, region, labels in (("fra-1", "eu", {"lab": "yes"}), ("iad-1", "us", {})):
        assert first.probe_set(agent, region, labels) == second.probe_set(agent, region, labels)


def test_a_change_in_one_probe_changes_only_the_sets_that_hold_it():
    before = parse_fleet(FLEET, "fleet.yaml")
    after = parse_fleet(FLEET.replace("record: AAAA", "record: A"), "fleet.yaml")
    eu = ("fra-1", "eu", {})
    us = ("iad-1", "us", {})
    assert before.probe_set(*eu).version != after.probe_set(*eu).version
    assert before.probe_set(*us).version == after.probe_set(*us).version


def test_load_fleet_stamps_the_files_mtime_and_name(tmp_path):
    path = tmp_path / "probes.yaml"
    path.write_text(FLEET, encoding="utf-8")
    fleet = load_fleet(path)
    assert fleet.issued_at_ms == path.stat().st_mtime_ns // 1_000_000
    assert fleet.source == "probes.yaml"
    message = fleet.message(fleet.probe_set("iad-1", "us", {}))
    assert message.probe_config.source == "probes.yaml"
    assert message.probe_config.issued_at_ms == fleet.issued_at_ms


# -- the collector config and `probenet check` -------------------------------------------------


def test_the_fleet_key_resolves_the_file_against_the_config_folder(tmp_path):
    (tmp_path / "fleet.yaml").write_text(FLEET, encoding="utf-8")
    text = "fleet: {probes_file: fleet.yaml, watch_interval: 500ms}\n"
    config = parse_config(text, str(tmp_path / "collector.yaml"))
    assert config.fleet is not None
    assert config.fleet.probes_file == str(tmp_path / "fleet.yaml")
    assert config.fleet.watch_interval == 0.5
    assert parse_config("{}").fleet is None


@pytest.mark.parametrize(("text", "expected"), [
    ("fleet: {probes_file: missing.yaml}\n", "1:22: fleet.probes_file: no such file"),
    ("fleet: {probes_file: fleet.yaml, watch_interval: 0s}\n", "fleet.watch_interval"),
    ("fleet: {probes_file: fleet.yaml, colour: red}\n", "unknown key 'colour'"),
    ("fleet: {}\n", "missing required key 'probes_file'"),
])
def test_bad_fleet_keys_are_config_errors(tmp_path, text, expected):
    (tmp_path / "fleet.yaml").write_text(FLEET, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, str(tmp_path / "collector.yaml"))
    assert expected in str(caught.value)


def write_collector(tmp_path, fleet_text: str, registry: str) -> str:
    (tmp_path / "fleet.yaml").write_text(fleet_text, encoding="utf-8")
    path = tmp_path / "collector.yaml"
    path.write_text(f"journal: {{path: {tmp_path / 'j.db'}}}\n{registry}"
                    "fleet: {probes_file: fleet.yaml}\n", encoding="utf-8")
    return str(path)


REGISTRY = "agents:\n  - {id: fra-1, region: eu}\n  - {id: iad-1, region: us}\n"


def test_check_warns_about_selectors_that_match_no_registered_agent(tmp_path, capsys):
    fleet = FLEET + "  - {name: ap, kind: tcp, target: 'a:1', regions: [ap]}\n"
    path = write_collector(tmp_path, fleet, REGISTRY)
    assert check([path]) == 0
    out = capsys.readouterr()
    fleet_path = tmp_path / "fleet.yaml"
    # `lab` (no registered agent has lab=yes) and `ap` (no agent in ap); `dns-eu` matches fra-1.
    assert f"{fleet_path}:9:51: warning: probe 'lab'" in out.err
    assert f"{fleet_path}:10:42: warning: probe 'ap'" in out.err
    assert "dns-eu" not in out.err
    assert "ok (collector config)" in out.out


def test_check_reports_fleet_errors_with_their_position(tmp_path, capsys):
    path = write_collector(tmp_path, FLOW.format(secret="{file: pw.txt}"), REGISTRY)
    assert check([path]) == 1
    assert f"{tmp_path / 'fleet.yaml'}:6:" in capsys.readouterr().err


def test_selector_warnings_need_a_registry_to_judge(tmp_path, capsys):
    path = write_collector(tmp_path, FLEET, "")
    assert check([path]) == 0
    assert "warning" not in capsys.readouterr().err
    fleet = parse_fleet(FLEET, "fleet.yaml")
    assert [i.message for i in selector_warnings(fleet, FLEET, [("fra-1", "eu", {"lab": "yes"})])
            ] == []
