"""agent.yaml: parsing into typed objects, defaults, and every error at its file:line:col."""

from __future__ import annotations

import subprocess
import sys

import pytest

from probenet.agent.config import (
    AgentConfig,
    ConfigError,
    DnsOptions,
    HttpOptions,
    TcpOptions,
    load_config,
    parse_config,
)
from probenet.cli import check
from support.system import ROOT

DATA = ROOT / "tests" / "data" / "agent"

BROKEN = [
    ("bad_yaml.yaml", "2:11: YAML syntax: expected ',' or '}', but got ':'"),
    ("unknown_key.yaml", "8:5: unknown key 'intervall' (did you mean 'interval'?)"),
    ("wrong_type.yaml", ("9:25: probes[0].http.follow_redirects: Input should be a valid "
                        "boolean, unable to interpret input")),
    ("bad_duration.yaml", ("5:13: defaults.interval: a duration is written with a unit, like "
                          "500ms, 30s or 5m (got 30)")),
    ("duplicate_probe.yaml", "11:11: duplicate probe name 'web' (first at probes[0])"),
    ("missing_target.yaml", "5:5: missing required key 'target'"),
    ("bad_url.yaml", ("7:13: probes[0].target: invalid URL 'ftp://files.example.com/': the "
                     "scheme must be http or https")),
    ("bad_host_port.yaml", ("7:13: probes[0].target: invalid port '99999' in "
                           "'127.0.0.1:99999': expected 1-65535")),
    ("unknown_kind.yaml", ("6:11: probes[0].kind: Input should be 'http', 'tcp', 'dns', 'icmp', "
                          "'tls', 'grpc' or 'flow'")),
    ("options_for_wrong_kind.yaml", ("8:11: probes[0].http: http options do not apply to a tcp "
                                    "probe (its options go under 'tcp:')")),
    ("timeout_not_below_interval.yaml", ("9:15: probe 'web': timeout (2s) must be shorter than "
                                        "the interval (1s)")),
    ("bad_source_address.yaml", ("4:19: agent.source_address: '127.0.0.300' is not an IP "
                                "address")),
    ("no_collectors.yaml", "2:13: collectors: list at least one collector to send results to"),
    ("all_addresses_on_dns.yaml", ("8:20: probes[0].all_addresses: all_addresses applies to "
                                  "http and tcp probes, not dns")),
    # The collector refuses longer label values; a valid agent config never produces one.
    ("interval_over_a_week.yaml", ("7:15: probes[0].interval: must be at most 7 days (got "
                                  "192h); the collector refuses longer intervals")),
    ("service_too_long.yaml", "5:14: probes[0].service: String should have at most 128 characters"),
]


@pytest.mark.parametrize(("name", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_reports_exact_position_and_message(name, expected):
    path = DATA / name
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(i) for i in caught.value.issues] == [f"{path}:{expected}"]


def test_every_issue_is_reported_not_just_the_first():
    path = DATA / "bad_status_and_regex.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(i) for i in caught.value.issues] == [
        (f"{path}:9:30: probes[0].http.expect_status[1]: invalid status '600': write a class "
        'like "2xx" or a code like "301"'),
        (f"{path}:10:19: probes[0].http.body_regex: invalid regular expression '([a-z]': "
        "missing ), unterminated subpattern at position 0"),
    ]
    path = DATA / "bad_dns_record.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [(i.line, i.col) for i in caught.value.issues] == [(8, 19), (8, 40)]


def run_check(*paths):
    return subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check", *map(str, paths)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def test_probenet_check_cli_prints_positions_and_exits_1():
    paths = [DATA / "unknown_key.yaml", DATA / "duplicate_probe.yaml", DATA / "bad_yaml.yaml"]
    done = run_check(*paths)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{paths[0]}:8:5: unknown key 'intervall' (did you mean 'interval'?)",
        f"{paths[1]}:11:11: duplicate probe name 'web' (first at probes[0])",
        f"{paths[2]}:2:11: YAML syntax: expected ',' or '}}', but got ':'",
    ]


def test_probenet_check_accepts_every_example_config():
    examples = sorted((ROOT / "deploy" / "examples").glob("agent-*.yaml"))
    assert len(examples) >= 4
    done = run_check(*examples)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ok (agent config)") == len(examples)


FULL = """
agent:
  id: fra-1
  region: eu-central
  labels: {network: as24940}
  source_address: 127.0.2.1
collectors:
  - address: collector.example.net:7070
    tls: {ca_file: ca.pem, cert_file: agent.pem, key_file: agent-key.pem}
    token_file: /etc/probenet/token
  - address: "[2001:db8::7]:7070"
defaults: {interval: 30s, timeout: 5s}
probes:
  - name: facebook-web
    service: meta
    kind: http
    target: https://www.facebook.com/
    http: {expect_status: ["2xx", "3xx"], body_regex: "..."}
  - name: meta-edge
    kind: tcp
    target: 157.240.1.35:443
    interval: 10s
  - name: meta-dns
    kind: dns
    target: facebook.com
    timeout: 2s
    confirm_delay: 3s
"""


def test_design_sketch_parses_with_defaults_resolved(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(FULL)
    config = load_config(path)
    assert isinstance(config, AgentConfig)
    assert config.agent.source_address == "127.0.2.1"
    assert config.collectors[0].tls is not None
    assert config.collectors[0].tls.ca_file == str(tmp_path / "ca.pem")
    assert config.collectors[0].token_file == "/etc/probenet/token"
    web, edge, dns = config.probes
    assert (web.interval, web.timeout, web.confirm_delay) == (30.0, 5.0, 1.0)
    assert (edge.interval, edge.timeout, edge.confirm_delay) == (10.0, 5.0, 1.0)
    assert (dns.interval, dns.timeout, dns.confirm_delay) == (30.0, 2.0, 3.0)
    assert web.service == "meta"
    assert config.shortest_interval() == 10.0


def test_own_options_filled_other_kinds_none():
    config = parse_config(FULL)
    web, edge, dns = config.probes
    assert isinstance(web.http, HttpOptions)
    assert web.http.expect_status == ["2xx", "3xx"]
    assert isinstance(edge.tcp, TcpOptions)
    assert isinstance(dns.dns, DnsOptions)
    assert dns.dns.record == "A"
    assert dns.dns.server is None
    assert (web.tcp, web.dns, edge.http, dns.http, dns.icmp, dns.tls, dns.grpc) == (
        None, None, None, None, None, None, None)
    assert edge.options is edge.tcp


def test_confirm_delay_defaults_to_a_tenth_of_short_intervals():
    config = parse_config("""
agent: {id: a, region: r}
collectors: [{address: "127.0.0.1:1"}]
defaults: {interval: 2s, timeout: 500ms}
probes: [{name: p, kind: tcp, target: "127.0.0.1:80"}]
""")
    assert config.probes[0].confirm_delay == pytest.approx(0.2)


def test_models_are_frozen():
    config = parse_config(FULL)
    with pytest.raises(ValueError):
        config.probes[0].interval = 1.0  # type: ignore[misc]


def test_status_matching():
    options = HttpOptions(expect_status=["2xx", "301"])
    assert [options.status_matches(s) for s in (200, 299, 301, 302, 404)] == [
        True, True, True, False, False]


def test_same_probe_ignores_nothing_but_identity():
    first = parse_config(FULL).probes[1]
    again = parse_config(FULL).probes[1]
    changed = parse_config(FULL.replace("interval: 10s", "interval: 20s")).probes[1]
    assert first.same_probe(again)
    assert not first.same_probe(changed)


def test_a_missing_probe_module_is_a_config_error_naming_the_probe(monkeypatch, tmp_path,
                                                                    capsys):
    from probenet.agent import probes  # noqa: PLC0415
    from probenet.agent.main import run  # noqa: PLC0415

    path = tmp_path / "agent.yaml"
    path.write_text("""\
agent: {id: a, region: r}
collectors: [{address: "127.0.0.1:1"}]
probes:
  - {name: health, kind: grpc, target: "127.0.0.1:50051"}
""")
    expected = (f"{path}:4:26: probe kind 'grpc' is not available in this build "
                "(probenet.agent.probes.not_installed is missing)")
    assert check([path]) == 0  # every module is there
    capsys.readouterr()
    monkeypatch.setitem(probes.PROBE_MODULES, "grpc", "probenet.agent.probes.not_installed")
    # The check is the probe registry's (the config module does not import the probes);
    # `probenet check` and the agent's start both run it, and report the probe's position.
    assert check([path]) == 1
    assert capsys.readouterr().err.splitlines() == [expected]
    assert run(path) == 1
    assert capsys.readouterr().err.splitlines() == [expected]
    with pytest.raises(ConfigError) as caught:
        load_config(path, checks=(probes.unavailable_kinds,))
    assert [str(i) for i in caught.value.issues] == [expected]


def test_loading_a_config_does_not_import_the_probes():
    code = ("import sys; from probenet.agent.config import parse_config; "
            "parse_config('agent: {id: a, region: r}\\ncollectors: [{address: \"x:1\"}]\\n"
            "probes: [{name: p, kind: grpc, target: \"x:1\"}]'); "
            "print(sorted(m for m in sys.modules if m.startswith('probenet.agent.probes')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_every_kind_builds_through_the_registry():
    from probenet.agent.probes import build_probe  # noqa: PLC0415

    config = parse_config("""
agent: {id: a, region: r}
collectors: [{address: "127.0.0.1:1"}]
probes:
  - {name: h, kind: http, target: "http://127.0.0.1:8080/"}
  - {name: t, kind: tcp, target: "127.0.0.1:22"}
  - {name: d, kind: dns, target: example.com, dns: {server: "127.0.0.1:53"}}
  - {name: i, kind: icmp, target: 127.0.0.1}
  - {name: s, kind: tls, target: "127.0.0.1:443"}
  - {name: g, kind: grpc, target: "127.0.0.1:50051"}
""")
    for spec in config.probes:
        probe = build_probe(spec, source_address=None)
        assert callable(probe.run)


def test_unusable_probe_files_fail_the_build_naming_the_probe(tmp_path):
    from probenet.agent.errors import ProbeBuildError  # noqa: PLC0415
    from probenet.agent.probes import build_probe  # noqa: PLC0415

    config = parse_config(f"""
agent: {{id: a, region: r}}
collectors: [{{address: "127.0.0.1:1"}}]
probes:
  - {{name: api, kind: http, target: "https://127.0.0.1:8443/",
     http: {{auth: {{bearer_token_file: "{tmp_path / 'nope'}"}}}}}}
""")
    with pytest.raises(ProbeBuildError) as caught:
        build_probe(config.probes[0], source_address=None)
    assert caught.value.probe == "api"
    assert str(caught.value) == (f"probe 'api': cannot read bearer_token_file "
                                 f"{tmp_path / 'nope'}: No such file or directory")


def test_collector_tls_cannot_skip_verification():
    with pytest.raises(ConfigError) as caught:
        parse_config("""
agent: {id: a, region: r}
collectors: [{address: "127.0.0.1:1", tls: {insecure_skip_verify: true}}]
""")
    assert str(caught.value.issues[0]).startswith(
        "<string>:3:67: collectors[0].tls.insecure_skip_verify: gRPC always verifies")
