"""Pushed probe sets (agent/remote.py): parsing, version, merge, HA choice, persistence."""

from __future__ import annotations

import json
import logging

import pytest

from probenet.agent.config import parse_config
from probenet.agent.main import choose_state_dir
from probenet.agent.remote import (
    CLASH_REASON,
    RemoteSet,
    RemoteSetError,
    choose,
    content_version,
    load_set,
    merge,
    parse_set,
    remote_set_path,
    save_set,
)


def remote_set(document: dict | str, *, issued_at_ms: int = 1000, collector_id: str = "c1",
               source: str = "fleet.yaml", version: str | None = None) -> RemoteSet:
    text = document if isinstance(document, str) else json.dumps(document)
    return RemoteSet(version=content_version(text) if version is None else version,
                     document=text, issued_at_ms=issued_at_ms, source=source,
                     collector_id=collector_id)


def can_ping(family: str) -> str | None:
    del family
    return None


def cannot_ping(family: str) -> str | None:
    return f"no {family} icmp socket: operation not permitted"


LOCAL = parse_config("""
agent: {id: a1, region: eu}
collectors: [{address: "127.0.0.1:7070"}]
remote_config: true
probes:
  - {name: local-web, kind: tcp, target: "127.0.0.1:80"}
""")


def test_remote_config_is_off_by_default_and_probes_may_be_absent():
    config = parse_config("""
agent: {id: a1, region: eu}
collectors: [{address: "127.0.0.1:7070"}]
""")
    assert config.remote_config is False
    assert LOCAL.remote_config is True
    on = parse_config("""
agent: {id: a1, region: eu}
collectors: [{address: "127.0.0.1:7070"}]
remote_config: true
""")
    assert on.probes == []


def test_remote_config_must_be_a_boolean_with_its_position():
    with pytest.raises(Exception, match=r"agent\.yaml:4:16: remote_config: Input should be a "
                                        r"valid boolean"):
        parse_config("""
agent: {id: a1, region: eu}
collectors: [{address: "127.0.0.1:7070"}]
remote_config: sometimes
""", "agent.yaml")


def test_a_set_is_parsed_with_its_defaults_resolved(tmp_path):
    parsed = parse_set(remote_set({
        "defaults": {"interval": "10s", "timeout": "2s"},
        "probes": [{"name": "web", "kind": "http", "target": "https://example.com/"},
                   {"name": "dns", "kind": "dns", "target": "example.com", "interval": "1m",
                    "dns": {"record": "aaaa"}}]}), base_dir=tmp_path)
    web, dns = parsed.probes
    assert (web.interval, web.timeout, web.confirm_delay) == (10.0, 2.0, 1.0)
    assert (dns.interval, dns.timeout) == (60.0, 2.0)
    assert dns.options.record == "AAAA"
    assert parsed.refused == ()


def test_relative_paths_resolve_against_the_agent_config_folder(tmp_path):
    parsed = parse_set(remote_set({"probes": [{
        "name": "api", "kind": "http", "target": "https://example.com/",
        "http": {"tls": {"ca_file": "ca.pem"}}}]}), base_dir=tmp_path)
    assert parsed.probes[0].options.tls.ca_file == str(tmp_path / "ca.pem")


def test_a_version_that_is_not_the_documents_hash_refuses_the_set(tmp_path):
    with pytest.raises(RemoteSetError, match=r"fleet\.yaml: version 'deadbeef' is not the "
                                             r"SHA-256 of the document"):
        parse_set(remote_set({"probes": []}, version="deadbeef"), base_dir=tmp_path)


@pytest.mark.parametrize(("document", "message"), [
    ("{not json", r"fleets/eu\.yaml: the document is not JSON"),
    ("[1, 2]", r"fleets/eu\.yaml: the document must be a JSON object"),
    ('{"probes": [], "colectors": []}', r"unknown key 'colectors'"),
    ('{"defaults": {"interval": 30}}', r"defaults: interval: a duration is written with a unit"),
    ('{"probes": {"name": "x"}}', r"probes must be a list"),
    ("[" * 100_000, r"the document is not JSON"),
])
def test_a_document_that_cannot_be_read_refuses_the_set(tmp_path, document, message):
    with pytest.raises(RemoteSetError, match=message):
        parse_set(remote_set(document, source="fleets/eu.yaml"), base_dir=tmp_path)


def test_an_invalid_probe_is_refused_alone_naming_the_file_and_the_probe(tmp_path):
    parsed = parse_set(remote_set({"probes": [
        {"name": "good", "kind": "tcp", "target": "127.0.0.1:22"},
        {"name": "bad-port", "kind": "tcp", "target": "127.0.0.1:99999"},
        {"name": "typo", "kind": "tcp", "target": "127.0.0.1:22", "intervall": "5s"},
        {"name": "slow", "kind": "tcp", "target": "127.0.0.1:22", "timeout": "1m"},
        {"name": "good", "kind": "tcp", "target": "127.0.0.1:23"},
        "not a probe",
    ]}, source="fleet.yaml"), base_dir=tmp_path)
    assert [p.name for p in parsed.probes] == ["good"]
    reasons = {r.probe: r.reason for r in parsed.refused}
    assert set(reasons) == {"bad-port", "typo", "slow", "good", "probes[5]"}
    assert reasons["bad-port"].startswith("fleet.yaml: probes[1] ('bad-port'): target:")
    assert reasons["typo"] == "fleet.yaml: probes[2] ('typo'): unknown key 'intervall'"
    assert "timeout (1m) must be shorter than the interval (30s)" in reasons["slow"]
    assert "duplicate probe name 'good' in the pushed set" in reasons["good"]
    assert "a probe must be a JSON object" in reasons["probes[5]"]


def test_merge_refuses_a_name_clash_with_a_local_probe_and_keeps_the_rest(tmp_path):
    parsed = parse_set(remote_set({"probes": [
        {"name": "local-web", "kind": "tcp", "target": "127.0.0.1:81"},
        {"name": "fleet-web", "kind": "tcp", "target": "127.0.0.1:82"}]}), base_dir=tmp_path)
    merged = merge(LOCAL.probes, parsed, icmp_problem=can_ping)
    assert [p.name for p in merged.probes] == ["local-web", "fleet-web"]
    assert merged.probes[0].target == "127.0.0.1:80"  # the local one runs
    assert [p.name for p in merged.remote] == ["fleet-web"]
    assert [(r.probe, r.reason) for r in merged.refused] == [("local-web", CLASH_REASON)]


def test_merge_refuses_what_this_agent_cannot_run(tmp_path):
    parsed = parse_set(remote_set({"probes": [
        {"name": "ping", "kind": "icmp", "target": "127.0.0.1"},
        {"name": "ping6", "kind": "icmp", "target": "::1", "icmp": {"ip_family": "ip6"}},
        {"name": "login", "kind": "flow", "target": "https://example.com/", "flow": {
            "secrets": {"password": {"file": "missing-secret"}},
            "steps": [{"name": "home", "request": {"url": "/"}}]}},
        {"name": "web", "kind": "tcp", "target": "127.0.0.1:80"}]}), base_dir=tmp_path)
    merged = merge([], parsed, icmp_problem=cannot_ping)
    assert [p.name for p in merged.remote] == ["web"]
    reasons = {r.probe: r.reason for r in merged.refused}
    assert reasons["ping"] == ("icmp probes cannot run on this agent: no ip4 icmp socket: "
                               "operation not permitted")
    assert "no ip6 icmp socket" in reasons["ping6"]
    assert reasons["login"].startswith("flow secret 'password': cannot read ")
    assert str(tmp_path / "missing-secret") in reasons["login"]
    allowed = merge([], parsed, icmp_problem=can_ping)
    assert {p.name for p in allowed.remote} == {"ping", "ping6", "web"}


def test_merge_without_a_set_is_the_local_probes():
    merged = merge(LOCAL.probes, None, icmp_problem=can_ping)
    assert merged.probes == tuple(LOCAL.probes)
    assert merged.remote == merged.refused == ()


def test_the_ha_rule_runs_the_latest_issued_then_the_larger_version():
    older = remote_set({"probes": [], "n": 1}, issued_at_ms=1000, collector_id="a")
    newer = remote_set({"probes": [], "n": 2}, issued_at_ms=2000, collector_id="b")
    assert choose([older, newer]) is newer
    assert choose([newer, older]) is newer
    same_time = [remote_set({"probes": [], "n": n}, issued_at_ms=5, collector_id=str(n))
                 for n in range(4)]
    largest = max(same_time, key=lambda s: s.version)
    assert choose(same_time) is largest
    assert choose(reversed(same_time)) is largest
    assert choose([]) is None


def test_the_kept_set_round_trips(tmp_path):
    path = remote_set_path(tmp_path, "fra-1")
    assert path == tmp_path / "fra-1.remote-probes.json"
    assert load_set(path) is None
    kept = remote_set({"probes": [{"name": "w", "kind": "tcp", "target": "127.0.0.1:1"}]},
                      issued_at_ms=1_765_000_000_123, collector_id="col-a", source="f.yaml")
    save_set(path, kept)
    assert load_set(path) == kept
    data = json.loads(path.read_text())
    assert data["format"] == 1
    assert data["version"] == kept.version
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    replaced = remote_set({"probes": []}, issued_at_ms=2, collector_id="col-b")
    save_set(path, replaced)
    assert load_set(path) == replaced


@pytest.mark.parametrize("text", [
    "",
    "{not json",
    "[]",
    '{"format": 2}',
    '{"format": 1, "version": "x"}',
    ('{"format": 1, "version": "x", "document": "{}", "source": "", "collector_id": "",'
    ' "issued_at_ms": 1}'),
    ('{"format": 1, "version": 1, "document": "{}", "source": "", "collector_id": "",'
    ' "issued_at_ms": 1}'),
    ('{"format": 1, "version": "x", "document": "{}", "source": "", "collector_id": "",'
    ' "issued_at_ms": "soon"}'),
    "[" * 100_000,
])
def test_a_damaged_kept_file_is_logged_and_ignored(tmp_path, caplog, text):
    path = tmp_path / "a.remote-probes.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="probenet.agent.remote"):
        assert load_set(path) is None
    assert any("remote probe set not restored" in r.getMessage() and str(path) in
               r.getMessage() for r in caplog.records)


def test_a_kept_file_that_is_not_text_is_ignored(tmp_path, caplog):
    path = tmp_path / "a.remote-probes.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING, logger="probenet.agent.remote"):
        assert load_set(path) is None
    assert "cannot read" in caplog.text


def test_remote_config_gets_a_state_folder_even_without_the_disk_buffer(tmp_path):
    text = """
agent: {id: a1, region: eu}
collectors: [{address: "127.0.0.1:7070"}]
buffer: {disk: false}
"""
    path = tmp_path / "agent.yaml"
    assert choose_state_dir(path, parse_config(text)) is None
    remote = parse_config(text + "remote_config: true\n")
    assert choose_state_dir(path, remote) == tmp_path / "agent.state"
