"""Collector config files: valid ones load into typed models, broken ones name file:line:col."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from probenet.collector.config import (
    CollectorConfig,
    load_config,
    parse_config,
)
from probenet.collector.model import ClassificationParams
from probenet.configfile import ConfigError
from support.system import ROOT

DATA = Path("tests/data/collector")  # relative: messages name files as the user wrote them

BROKEN = {
    "bad_yaml.yaml": ["3:8: YAML syntax: expected ',' or '}', but got ':'"],
    "unknown_key.yaml": ["3:3: unknown key 'htp' (did you mean 'http'?)"],
    "wrong_type.yaml": [("2:16: classification.min_regions: Input should be a valid integer, "
                         "unable to parse string as an integer")],
    "bad_duration.yaml": [("1:7: tick: invalid duration '5 seconds': write it like 500ms, "
                           "30s, 5m or 1m30s")],
    "duplicate_agent.yaml": ["4:10: duplicate agent id 'fra-1' (also agents[0])"],
    "missing_region.yaml": ["2:5: missing required key 'region'"],
    "missing_token_file.yaml": [("3:46: agents[1].token_file: no such file: "
                                 "tests/data/collector/tokens/iad-1")],
    "public_without_tls.yaml": [(
        "2:9: listen.grpc 0.0.0.0:7070 is not a loopback address and there is no tls section "
        "(agent tokens would travel in clear text): configure tls, or set `insecure: true` "
        "to accept plaintext")],
    "bad_ratio.yaml": [
        "2:17: classification.global_ratio: Input should be less than or equal to 1",
        "3:19: classification.impaired_ratio: Input should be greater than 0"],
    "bad_host_port.yaml": [
        "2:9: listen.grpc: invalid address 'localhost': expected host:port",
        "3:9: listen.http: invalid port '99999' in '127.0.0.1:99999': expected 0-65535"],
    "bad_mqtt.yaml": [
        ("2:8: mqtt.url: 'http://127.0.0.1:1883' is not an MQTT URL like "
         "mqtt://127.0.0.1:1883 or mqtts://broker:8883"),
        "3:8: mqtt.qos: Input should be 0, 1 or 2"],
}
THROUGH_CLI = ("bad_yaml.yaml", "duplicate_agent.yaml", "missing_token_file.yaml",
               "public_without_tls.yaml", "bad_ratio.yaml")


def probenet_check(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check", *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("name", THROUGH_CLI)
def test_probenet_check_prints_every_error_with_its_position(name):
    done = probenet_check(str(DATA / name))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"{DATA / name}:{line}" for line in BROKEN[name]]


@pytest.mark.parametrize("name", sorted(set(BROKEN) - set(THROUGH_CLI)))
def test_load_config_names_the_position_of_each_problem(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as raised:
        load_config(DATA / name)
    assert [str(issue) for issue in raised.value.issues] == [
        f"{DATA / name}:{line}" for line in BROKEN[name]]


def test_the_example_config_passes_probenet_check():
    done = probenet_check("deploy/examples/collector.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deploy/examples/collector.yaml: ok (collector config)"


def test_several_files_are_all_checked():
    done = probenet_check(str(DATA / "bad_ratio.yaml"), "deploy/examples/collector.yaml",
                          str(DATA / "unknown_key.yaml"))
    assert done.returncode == 1
    assert "deploy/examples/collector.yaml: ok" in done.stdout
    assert len(done.stderr.splitlines()) == 3


def test_defaults_follow_design_md(tmp_path):
    config = parse_config("{}", str(tmp_path / "collector.yaml"))
    assert config.listen.grpc == "127.0.0.1:7070"
    assert config.listen.http == "127.0.0.1:9464"
    assert config.agents is None
    assert config.classification.params() == ClassificationParams()
    assert config.limits.max_message_bytes == 4 * 1024 * 1024
    assert config.limits.max_batch_results == 5000
    assert config.journal.path == str(tmp_path / "probenet.db")
    assert config.mqtt is None
    assert config.tick == 1.0
    assert config.collector_id


def test_a_full_config_loads_into_typed_values(tmp_path):
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "fra-1").write_text("t0ken\n")
    (tmp_path / "mqtt-password").write_text("pw\n")
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("pem\n")
    path = tmp_path / "collector.yaml"
    path.write_text("""
listen: {grpc: "0.0.0.0:7070", http: "[::1]:9464"}
tls: {cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem}
agents:
  - {id: fra-1, region: eu-central, token_file: tokens/fra-1, labels: {network: as24940}}
  - {id: iad-1, region: us-east}
classification:
  global_ratio: 0.75
  min_regions: 3
  recover_after: 3
  stale_after_intervals: 4
  impaired_ratio: 0.6
  impaired_min_probes: 5
  flap_max_changes: 6
  flap_window: 1h
  service_min_probes: 3
  degraded_ratio: 0.4
journal: {path: state/journal.db}
mqtt:
  url: mqtts://broker.example:8883
  topic_prefix: probenet/prod/
  qos: 2
  username: collector
  password_file: mqtt-password
  tls: {ca_file: ca.pem}
  queue_size: 500
  keepalive: 30s
limits: {max_message_bytes: 1048576, max_batch_results: 1000, hello_timeout: 5s}
collector_id: collector-a
tick: 500ms
""")
    config = load_config(path)
    assert isinstance(config, CollectorConfig)
    assert config.grpc_on_loopback is False
    assert config.tls is not None
    assert config.tls.client_ca_file == str(tmp_path / "ca.pem")
    entry = config.agent("fra-1")
    assert entry is not None
    assert entry.token_file == str(tmp_path / "tokens" / "fra-1")
    assert entry.labels == {"network": "as24940"}
    assert config.agent("nobody") is None
    params = config.classification.params()
    assert (params.global_ratio, params.min_regions, params.recover_after) == (0.75, 3, 3)
    assert (params.flap_window_s, params.degraded_ratio) == (3600.0, 0.4)
    assert config.journal.path == str(tmp_path / "state" / "journal.db")
    assert config.mqtt is not None
    assert (config.mqtt.qos, config.mqtt.topic_prefix, config.mqtt.keepalive) == (
        2, "probenet/prod", 30.0)
    assert config.mqtt.password_file == str(tmp_path / "mqtt-password")
    assert config.tick == 0.5
    assert config.limits.hello_timeout == 5.0


def test_insecure_allows_plaintext_on_a_public_address():
    config = parse_config("listen: {grpc: '0.0.0.0:7070'}\ninsecure: true\n")
    assert config.insecure is True


def test_a_public_address_with_tls_still_needs_a_registry(tmp_path):
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem\n")
    path = tmp_path / "c.yaml"
    path.write_text("listen:\n  grpc: 10.1.2.3:7070\ntls: {cert_file: cert.pem, "
                    "key_file: key.pem}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [issue] = raised.value.issues
    assert (issue.line, issue.col) == (2, 9)
    assert "no agents registry" in issue.message


@pytest.mark.parametrize(("grpc", "loopback"), [
    ("127.0.0.1:0", True), ("[::1]:7070", True), ("localhost:7070", True),
    ("0.0.0.0:7070", False), ("[::]:7070", False), ("collector.example:7070", False),
])
def test_grpc_on_loopback(grpc, loopback):
    config = parse_config(f'listen: {{grpc: "{grpc}"}}\ninsecure: true\n')
    assert config.grpc_on_loopback is loopback


@pytest.mark.parametrize(("text", "message"), [
    ("listen: {grpc: '[::1]7070'}",
     "1:16: listen.grpc: invalid address '[::1]7070': expected [host]:port"),
    ("listen: {http: '::1:9464'}",
     ("1:16: listen.http: invalid address '::1:9464': write an IPv6 address as "
      "[addr]:port")),
    ("agents: [{id: fra-1, region: eu central}]",
     ("1:30: agents[0].region: invalid name 'eu central': use letters, digits and _ . : @ - "
      "(starting with a letter or digit, at most 128 characters)")),
    ("agents: [{id: a, region: r, labels: {net-work: x}}]",
     ("1:37: agents[0].labels: invalid label name 'net-work': use letters, digits and _ "
      "(not starting with a digit, at most 128 characters)")),
])
def test_addresses_names_and_labels_follow_the_shared_rules(text, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert [str(i) for i in raised.value.issues] == [f"<string>:{message}"]


def test_the_journal_commit_interval_defaults_to_20ms_and_is_bounded():
    assert parse_config("{}").journal.commit_interval == 0.02
    assert parse_config("journal: {commit_interval: 0s}").journal.commit_interval == 0.0
    assert parse_config("journal: {commit_interval: 100ms}").journal.commit_interval == 0.1
    for bad, col in (("6s", 28), ("-1ms", 28)):
        with pytest.raises(ConfigError) as raised:
            parse_config(f"journal: {{commit_interval: {bad}}}")
        [issue] = raised.value.issues
        assert (issue.line, issue.col) == (1, col)
        assert issue.message.startswith("journal.commit_interval: ")
