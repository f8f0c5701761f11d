"""Every per-kind option rejects bad values with the `file:line:col` of the value."""

from __future__ import annotations

import pytest

from probenet.agent.config import parse_config
from probenet.configfile import ConfigError

HEAD = """\
agent: {id: fra-1, region: eu-central}
collectors: [{address: "127.0.0.1:7070"}]
probes:
"""

# (probe line written at line 4, expected "line:col: message" fragment)
CASES = [
    ('  - {name: p, kind: http, target: "http://x/", http: {method: "GE T"}}',
     "4:63: probes[0].http.method"),
    ('  - {name: p, kind: http, target: "http://x/", http: {ip_family: ip5}}',
     "4:66: probes[0].http.ip_family"),
    ('  - {name: p, kind: http, target: "http://x/", http: {max_redirects: -1}}',
     "4:70: probes[0].http.max_redirects"),
    ('  - {name: p, kind: http, target: "http://x/", http: {body_regex: "(unclosed"}}',
     "4:67: probes[0].http.body_regex"),
    ('  - {name: p, kind: http, target: "http://x/", http: {expect_status: ["6xx"]}}',
     "4:71: probes[0].http.expect_status[0]"),
    ('  - {name: p, kind: http, target: "https://x/", http: {tls: {ca_fle: a.pem}}}',
     "4:62: unknown key 'ca_fle' (did you mean 'ca_file'?)"),
    ('  - {name: p, kind: tcp, target: "x:1", tcp: {expect: "[bad"}}',
     "4:55: probes[0].tcp.expect"),
    ("  - {name: p, kind: dns, target: example.com, dns: {record: ZZZ}}",
     "4:61: probes[0].dns.record"),
    ("  - {name: p, kind: dns, target: example.com, dns: {transport: quic}}",
     "4:64: probes[0].dns.transport"),
    ("  - {name: p, kind: dns, target: example.com, dns: {expect_rcode: MAYBE}}",
     "4:67: probes[0].dns.expect_rcode"),
    ('  - {name: p, kind: dns, target: example.com, dns: {server: "1.2.3.4:99999"}}',
     "4:61: probes[0].dns.server"),
    ("  - {name: p, kind: icmp, target: 127.0.0.1, icmp: {count: 0}}",
     "4:60: probes[0].icmp.count"),
    ("  - {name: p, kind: icmp, target: 127.0.0.1, icmp: {max_loss: 1.5}}",
     "4:63: probes[0].icmp.max_loss"),
    ("  - {name: p, kind: icmp, target: 127.0.0.1, icmp: {spacing: soon}}",
     "4:62: probes[0].icmp.spacing"),
    ("  - {name: p, kind: icmp, target: 127.0.0.1, timeout: 1s, icmp: {count: 5, spacing: 500ms}}",
     "4:85: probe 'p': 5 echo requests 500ms apart do not fit in the timeout (1s)"),
    ('  - {name: p, kind: tls, target: "x:443", tls: {min_days_valid: -1}}',
     "4:65: probes[0].tls.min_days_valid"),
    ('  - {name: p, kind: tls, target: "x:443", tls: {sni: x}}',
     "4:49: unknown key 'sni'"),
    ('  - {name: p, kind: grpc, target: "x:1", grpc: {tls: {insecure_skip_verify: true}}}',
     "4:77: gRPC always verifies the server certificate"),
    ('  - {name: p, kind: grpc, target: "x:1", grpc: {service: [a]}}',
     "4:58: probes[0].grpc.service"),
    ('  - {name: p, kind: grpc, target: "x:1", tcp: {send: hi}}',
     "4:47: probes[0].tcp: tcp options do not apply to a grpc probe"),
]


@pytest.mark.parametrize(("probe", "expected"), CASES)
def test_bad_option_is_reported_at_its_position(probe, expected):
    with pytest.raises(ConfigError) as raised:
        parse_config(HEAD + probe + "\n", "agent.yaml")
    rendered = [str(issue) for issue in raised.value.issues]
    assert any(line.startswith(f"agent.yaml:{expected}") for line in rendered), rendered
