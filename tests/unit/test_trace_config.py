"""The `trace:` option of a probe: defaults, bounds, and kinds without a host refused."""

from __future__ import annotations

import pytest

from probenet.agent.config import parse_config
from probenet.configfile import ConfigError

HEAD = """\
agent: {id: fra-1, region: eu-central}
collectors: [{address: "127.0.0.1:7070"}]
probes:
"""


def test_trace_defaults_when_only_on_failure_is_set():
    config = parse_config(HEAD + '  - {name: p, kind: tcp, target: "x:1", '
                          "trace: {on_failure: true}}")
    trace = config.probes[0].trace
    assert trace is not None
    assert (trace.on_failure, trace.every, trace.max_hops, trace.probes_per_hop,
            trace.hop_timeout, trace.method, trace.min_gap) == (
        True, None, 30, 3, 1.0, "udp", 60.0)


def test_probe_without_trace_has_none():
    config = parse_config(HEAD + '  - {name: p, kind: tcp, target: "x:1"}')
    assert config.probes[0].trace is None


@pytest.mark.parametrize("kind_line", [
    'kind: http, target: "http://x/"',
    'kind: tcp, target: "x:1"',
    'kind: tls, target: "x:443"',
    'kind: grpc, target: "x:1"',
    "kind: icmp, target: 127.0.0.1",
    "kind: dns, target: example.com",
])
def test_trace_is_allowed_on_kinds_with_a_host(kind_line):
    config = parse_config(HEAD + f"  - {{name: p, {kind_line}, "
                          "trace: {every: 10m, max_hops: 64, method: icmp, min_gap: 5m}}")
    trace = config.probes[0].trace
    assert trace is not None
    assert (trace.every, trace.max_hops, trace.method, trace.min_gap) == (600.0, 64, "icmp",
                                                                          300.0)


CASES = [
    (('  - {name: p, kind: flow, target: "http://x/", flow: {steps: [{request: {url: '
      '"http://x/"}}]}, trace: {on_failure: true}}'),
     "4:103: probes[0].trace: trace applies to probes with a host target"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {max_hops: 0}}',
     "4:59: probes[0].trace.max_hops"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {max_hops: 65}}',
     "4:59: probes[0].trace.max_hops"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {probes_per_hop: 11}}',
     "4:65: probes[0].trace.probes_per_hop"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {method: tcp}}',
     "4:57: probes[0].trace.method"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {every: 1s}}',
     "4:56: probes[0].trace.every: every: at least 10s"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {hop_timeout: 30s}}',
     "4:62: probes[0].trace.hop_timeout: hop_timeout: at most 10s"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {min_gap: 0s}}',
     "4:58: probes[0].trace.min_gap"),
    ('  - {name: p, kind: tcp, target: "x:1", trace: {on_failur: true}}',
     "4:49: unknown key 'on_failur' (did you mean 'on_failure'?)"),
]


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_bad_trace_options_name_their_place(line, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + line, "agent.yaml")
    assert f"agent.yaml:{expected}" in str(caught.value)
